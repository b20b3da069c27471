"""The ia32 suite's 32-bit programs: their build, a run on this host, and the parser of their log."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import select
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.build import tools as tools_module
from harness.build.tools import Ia32Tools, build_ia32_tools
from harness.errors import BuildError
from harness.guest.ia32_log import MARK_BEGIN, MARK_END, NR_UNMAPPED, parse_log
from harness.paths import project_root

ROOT = project_root()
NR64: dict[str, int] = json.loads((ROOT / "drivers" / "common" / "syscalls" / "x86_64.json").read_text())["syscalls"]
EXEC64 = shutil.which("true") or "/bin/true"
TOKEN = "T3st"


def _gcc_m32_problem(tmp: Path) -> str | None:
    """Why the host gcc cannot link a freestanding 32-bit program here, or None."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return "no gcc on this host"
    source = tmp / "probe.c"
    source.write_text("void _start(void) { for (;;) ; }\n")
    done = subprocess.run(
        [gcc, "-m32", "-nostdlib", "-static", "-ffreestanding", "-o", str(tmp / "probe"), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if done.returncode == 0 else f"gcc -m32 cannot link here: {done.stderr.strip()[-300:]}"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ia32Tools, Path]:
    if importlib.util.find_spec("ziglang") is None:
        pytest.skip("ziglang is not installed (the musl build needs zig's clang)")
    if platform.machine() == "x86_64":
        problem = _gcc_m32_problem(tmp_path_factory.mktemp("probe"))
        if problem:
            pytest.skip(problem)
    cache = tmp_path_factory.mktemp("cache")
    return build_ia32_tools(ROOT, cache), cache


@pytest.fixture(scope="module")
def runnable(built: tuple[Ia32Tools, Path]) -> Ia32Tools:
    tools = built[0]
    if platform.machine() != "x86_64":
        pytest.skip(f"32-bit x86 programs do not run on a {platform.machine()} host")
    try:
        done = subprocess.run([str(tools.int80)], capture_output=True, timeout=30, check=False)
    except OSError as error:
        pytest.skip(f"this kernel does not run 32-bit programs (IA32 emulation off?): {error}")
    if done.returncode != 2 or b"usage" not in done.stderr:
        pytest.skip(f"this kernel does not run 32-bit programs: exit {done.returncode}, {done.stderr[-200:]!r}")
    return tools


def run_chain(tools: Ia32Tools, work: Path, token: str = TOKEN) -> tuple[str, int, str]:
    """int80 -> musl -> a 64-bit program, with the log on fd 3: (log, pid, stderr)."""
    work.mkdir(parents=True, exist_ok=True)
    argv = [str(tools.int80), str(work), token, str(tools.musl), "ia32_musl", str(work), token, EXEC64, "true",
            f"ia32-exec-{token}"]  # fmt: skip
    read_end, write_end = os.pipe()

    def log_on_fd3() -> None:
        if write_end == 3:
            os.set_inheritable(3, True)
        else:
            os.dup2(write_end, 3)

    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=False,
        preexec_fn=log_on_fd3,
    )  # fmt: skip
    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "the ia32 programs did not close the log within 60 s"
            ready, _, _ = select.select([read_end], [], [], left)
            if ready:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_end)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    return b"".join(chunks).decode("ascii"), proc.pid, stderr.decode(errors="replace")


# -- the build --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_both_programs_are_static_32_bit_x86(built: tuple[Ia32Tools, Path]) -> None:
    tools, cache = built
    for program in (tools.int80, tools.musl):
        head = program.read_bytes()[:20]
        assert head[:5] == b"\x7fELF\x01" and struct.unpack_from("<H", head, 18)[0] == 3  # ELFCLASS32, EM_386
        assert os.access(program, os.X_OK)
        assert program.parent.parent == cache / "build" / "tools"
    assert not tools.cached
    assert set(tools.compilers) == {"int80", "musl"}
    assert tools.compilers["musl"].startswith("zig ")
    if platform.machine() == "x86_64":
        assert tools.compilers["int80"].startswith("gcc")
        assert "-m32" in tools.commands["int80"] and "-DKMX_INT80" in tools.commands["int80"]
    assert "x86-linux-musl" in tools.commands["musl"] and "-DKMX_INT80" not in tools.commands["musl"]


@pytest.mark.slow
def test_a_second_build_reuses_the_cached_directory(built: tuple[Ia32Tools, Path]) -> None:
    first, cache = built
    stamp = first.musl.stat().st_mtime_ns
    again = build_ia32_tools(ROOT, cache)
    assert again.cached
    assert (again.int80, again.musl, again.compilers) == (first.int80, first.musl, first.compilers)
    assert again.commands == first.commands
    assert again.musl.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_the_zig_int80_build_for_non_x86_hosts(built: tuple[Ia32Tools, Path], tmp_path: Path) -> None:
    _tools, cache = built  # its zig cache already holds musl
    zig = build_ia32_tools(ROOT, cache, int80_kind="zig")
    assert not zig.cached and zig.compilers["int80"].startswith("zig ")
    assert zig.int80.parent != built[0].int80.parent
    if platform.machine() == "x86_64":
        text, pid, _ = run_chain(zig, tmp_path / "w")
        calls = parse_log(text, pid, NR64)
        assert {c["source"] for c in calls} == {"int80", "musl"}


def test_a_failing_compiler_is_a_build_error_naming_the_command_and_its_output(tmp_path: Path) -> None:
    source = tmp_path / "broken.c"
    source.write_text("int main(void) { return missing_symbol; }\n")
    command = [sys.executable, "-c", "import sys; sys.stderr.write('broken.c:1: error: no such thing'); sys.exit(1)"]
    with pytest.raises(BuildError) as caught:
        tools_module._compile("gcc", command, tmp_path, tmp_path / "ia32_int80", None)
    assert "error: no such thing" in str(caught.value) and "exit 1" in str(caught.value)
    assert sys.executable in str(caught.value)
    assert caught.value.hint and "gcc-multilib" in caught.value.hint


def test_zig_missing_is_a_build_error_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ziglang", None)  # import raises ImportError
    with pytest.raises(BuildError) as caught:
        tools_module.int80_compiler("zig")
    assert "ziglang" in str(caught.value) and caught.value.hint and "pip install ziglang" in caught.value.hint


# -- a run on this host -----------------------------------------------------------------------------


@pytest.mark.slow
def test_the_chain_logs_every_call_of_both_entry_paths(runnable: Ia32Tools, tmp_path: Path) -> None:
    work = tmp_path / "w"
    text, pid, _stderr = run_chain(runnable, work)
    calls = parse_log(text, pid, NR64)
    assert {c["source"] for c in calls} == {"int80", "musl"}
    assert not list(work.iterdir())  # every file and directory made was removed again

    for source in ("int80", "musl"):
        mine = [c for c in calls if c["source"] == source]
        names = {c["name"] for c in mine}
        assert len(names - {"unmapped"}) >= 20, sorted(names)
        assert {"fcntl", "getuid", "socket", "connect", "semop", "stat", "unmapped", "execve"} <= names
        assert all(c["tid"] == pid for c in mine)

        # the markers, then the execve last
        assert (mine[0]["name"], mine[0]["args"], mine[0]["ret"]) == ("close", {"0": MARK_BEGIN}, -9)
        assert (mine[-2]["name"], mine[-2]["args"], mine[-2]["ret"]) == ("close", {"0": MARK_END}, -9)
        execve = mine[-1]
        assert (execve["name"], execve["ret"], execve["ia32_enter"]) == ("execve", 0, 11)

        by_nr32: dict[int, list[dict[str, Any]]] = {}
        for call in mine:
            by_nr32.setdefault(call["ia32_enter"], []).append(call)
            assert call["nr64"] == (NR_UNMAPPED if call["name"] == "unmapped" else NR64[call["name"]])
        # mmap both ways: mmap2 (offset in pages) and old mmap (six u32 in memory)
        mmap2 = by_nr32[192][0]
        assert mmap2["name"] == "mmap" and mmap2["args"]["5"] == 4096 and mmap2["ret"] > 0
        old = by_nr32[90][0]
        assert old["name"] == "mmap" and old["args"] == {
            "0": 0, "1": 4096, "2": 3, "3": 0x22, "4": 0xFFFFFFFF, "5": 0,
        }  # fmt: skip
        # _llseek: the two halves joined, the stored offset as the return value
        far, back = by_nr32[140]
        assert far["name"] == "lseek" and far["args"]["1"] == 0x10000000A and far["ret"] == 0x10000000A
        assert back["args"]["1"] == 0 and back["ret"] == 0
        ftruncate = by_nr32[194][0]
        assert ftruncate["name"] == "ftruncate" and ftruncate["args"]["1"] == 12288 and ftruncate["ret"] == 0
        # the values the kernel gave agree with what this side knows
        assert by_nr32[20][0]["ret"] == pid and by_nr32[224][0]["ret"] == pid  # getpid, gettid
        assert by_nr32[37][0]["args"] == {"0": pid, "1": 0} and by_nr32[37][0]["ret"] == 0  # kill
        assert by_nr32[199][0]["ret"] == os.getuid() and by_nr32[200][0]["ret"] == os.getgid()
        openat = [c for c in mine if c["name"] == "openat"]
        assert openat[0]["args"]["0"] == 0xFFFFFF9C and openat[0]["ret"] == -2  # ENOENT
        writes = [c for c in mine if c["name"] == "write"]
        data = writes[0]["enter"]["data"]
        assert TOKEN in bytes.fromhex(data["hex"]).decode() and writes[0]["ret"] == len(bytes.fromhex(data["hex"]))
        assert writes[1]["enter"] == {"data": {"fault": True}} and writes[1]["ret"] == -14  # EFAULT
        read = next(c for c in mine if c["name"] == "read")
        assert read["exit"]["data"] == data
        pwrite = next(c for c in mine if c["name"] == "pwrite64")
        pread = next(c for c in mine if c["name"] == "pread64")
        assert pwrite["args"]["3"] == pread["args"]["3"] == 4096 and pread["exit"]["data"] == pwrite["enter"]["data"]
        pipe = next(c for c in mine if c["name"] == "pipe")
        assert pipe["ret"] == 0 and len(pipe["exit"]["fds"]) == 2 and min(pipe["exit"]["fds"]) >= 3
        bind = next(c for c in mine if c["name"] == "bind")
        addr = bytes.fromhex(bind["enter"]["addr"]["hex"])
        assert len(addr) == 16 and addr[4:8] == bytes([127, 0, 0, 1])
        assert 20000 <= struct.unpack(">H", addr[2:4])[0] <= 39999 and bind["ret"] == 0
        connect = next(c for c in mine if c["name"] == "connect")
        assert connect["enter"]["addr"] == bind["enter"]["addr"] and connect["ret"] == 0
        sendto = next(c for c in mine if c["name"] == "sendto")
        assert sendto["args"]["4"] == sendto["args"]["5"] == 0 and sendto["enter"]["addr"] == {"hex": ""}
        assert sendto["ret"] == len(bytes.fromhex(sendto["enter"]["data"]["hex"]))
        semget, semop, semctl = (next(c for c in mine if c["name"] == n) for n in ("semget", "semop", "semctl"))
        assert semget["ret"] >= 0 and semop["args"]["0"] == semctl["args"]["0"] == semget["ret"]
        assert semop["ret"] == 0 and semctl["ret"] == 0 and semctl["args"]["3"] == 0
        sleep = next(c for c in mine if c["name"] == "clock_nanosleep")
        assert sleep["enter"]["req"] == {"hex": struct.pack("<qq", 0, 1_000_000).hex()} and sleep["ret"] == 0
        unmapped = {c["ia32_enter"]: c for c in mine if c["name"] == "unmapped"}
        assert set(unmapped) == {17, 34} and unmapped[17]["ret"] == -38  # break: ENOSYS
        assert unmapped[17]["args"]["0"] == 0xFFFFFFF1 and len(unmapped[17]["args"]) == 6
        opened = {c["ret"] for c in mine if c["name"] in ("open", "openat", "dup", "dup2", "socket") and c["ret"] >= 0}
        opened |= set(pipe["exit"]["fds"])
        closed = {c["args"]["0"] for c in mine if c["name"] == "close" and c["ret"] == 0}
        assert opened == closed

    int80_exec = next(c for c in calls if c["source"] == "int80" and c["name"] == "execve")
    assert int80_exec["ia32_exit"] == 11  # 32 -> 32: the exit is an IA32 event
    assert int80_exec["enter"] == {
        "filename": str(runnable.musl),
        "argv": ["ia32_musl", str(work), TOKEN, EXEC64, "true", f"ia32-exec-{TOKEN}"],
    }
    musl_exec = next(c for c in calls if c["source"] == "musl" and c["name"] == "execve")
    assert musl_exec["ia32_exit"] is None  # 32 -> 64: flag exit64, a native exit
    assert musl_exec["enter"] == {"filename": EXEC64, "argv": ["true", f"ia32-exec-{TOKEN}"]}


# -- the parser -------------------------------------------------------------------------------------

SAMPLE = """\
call int80 close 6 -9 -
arg 0 4b4d5842
call musl lseek 140 4294967306 -
arg 0 4
arg 1 10000000a
arg 2 0
call musl pipe 42 0 -
arg 0 804d000
exit fds fd2 7 8
call musl write 4 -14 -
arg 0 4
enter data fault
call musl sendto 102 5 -
enter data bytes 68656c6c6f
enter addr bytes
call musl unmapped 17 -38 -
arg 5 80000006
call musl execve 11 0 exit64
enter filename str 2f62696e2f74727565
enter argv strv 747275650078
"""


def test_parse_log_gives_the_call_dicts_the_verifier_consumes() -> None:
    calls = parse_log(SAMPLE, 77, NR64)
    assert calls[0] == {
        "name": "close", "nr64": 3, "tid": 77, "ret": -9, "args": {"0": MARK_BEGIN}, "enter": {}, "exit": {},
        "ia32_enter": 6, "ia32_exit": 6, "source": "int80",
    }  # fmt: skip
    assert calls[1]["args"] == {"0": 4, "1": 0x10000000A, "2": 0} and calls[1]["ret"] == 0x10000000A
    assert calls[1]["nr64"] == NR64["lseek"] and calls[1]["source"] == "musl"
    assert calls[2]["exit"] == {"fds": [7, 8]}
    assert calls[3]["enter"] == {"data": {"fault": True}}
    assert calls[4]["enter"] == {"data": {"hex": "68656c6c6f"}, "addr": {"hex": ""}}
    assert calls[5]["name"] == "unmapped" and calls[5]["nr64"] == NR_UNMAPPED == 18446744073709551615
    assert calls[5]["args"] == {"5": 0x80000006} and calls[5]["ia32_exit"] == 17
    assert calls[6]["enter"] == {"filename": "/bin/true", "argv": ["true", "x"]} and calls[6]["ia32_exit"] is None
    assert parse_log("", 1, NR64) == [] and MARK_END == 0x4B4D5845


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("arg 0 1\n", 1, "before any call"),
        ("call int80 close 6 -9\n", 1, "expected"),
        ("call int80 close 6 -9 - extra\n", 1, "expected"),
        ("call sysenter close 6 -9 -\n", 1, "unknown source"),
        ("call int80 no_such_call 6 -9 -\n", 1, "not an x86_64 syscall"),
        ("call int80 close 6 -9 exit32\n", 1, "unknown flag"),
        ("call int80 close six -9 -\n", 1, "invalid literal"),
        ("call int80 close 6 -9 -\narg 6 1\n", 2, "not 0..5"),
        ("call int80 close 6 -9 -\narg 0 1\narg 0 2\n", 3, "twice"),
        ("call int80 close 6 -9 -\narg 0 xyz\n", 2, "invalid literal"),
        ("call int80 close 6 -9 -\narg 0 -1\n", 2, "not a u64"),
        ("call int80 close 6 -9 -\narg 0 10000000000000000\n", 2, "not a u64"),
        ("call int80 close 6 -9 -\narg 0\n", 2, "expected"),
        ("call int80 open 5 3 -\nenter path str 2f7\n", 2, "hex"),
        ("call int80 open 5 3 -\nenter path str ff\n", 2, "utf-8"),
        ("call int80 open 5 3 -\nenter path str\n", 2, "hex expected"),
        ("call int80 open 5 3 -\nenter path int 3\n", 2, "unknown value kind"),
        ("call int80 open 5 3 -\nenter path bytes 00 11\n", 2, "one hex word"),
        ("call int80 open 5 3 -\nenter path\n", 2, "expected"),
        ("call int80 pipe 42 0 -\nexit fds fd2 1\n", 2, "two ints"),
        ("call int80 pipe 42 0 -\nexit fds fd2 1 x\n", 2, "invalid literal"),
        ("call int80 pipe 42 0 -\nexit fds fault x\n", 2, "no value"),
        ("call int80 pipe 42 0 -\nexit fds bytes 00\nexit fds bytes 00\n", 3, "twice"),
        ("call int80 close 6 -9 -\nret 0\n", 2, "unknown line kind"),
        ("call int80 close 6 -9 -\noverflow: the log buffer is full\n", 2, "unknown line kind"),
    ],
)
def test_parse_log_rejects_a_malformed_line_naming_it(text: str, line: int, what: str) -> None:
    with pytest.raises(ValueError, match=f"line {line}: .*{what}") as caught:
        parse_log(text, 1, NR64)
    assert repr(text.splitlines()[line - 1]) in str(caught.value)
