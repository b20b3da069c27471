"""The throughput benchmark's syscall storm (drivers/tools/storm.c): its build and a run on this host."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import select
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.archs import ARCH_NAMES
from harness.build import tools as tools_module
from harness.build.tools import StormBuild, build_storm
from harness.errors import BuildError, ConfigError
from harness.paths import cache_dir

# e_machine and byte order (ELFDATA2LSB 1, ELFDATA2MSB 2) of each architecture's static binary
MACHINES = {
    "x86_64": (62, 1),
    "aarch64": (183, 1),
    "s390x": (22, 2),
    "ppc64le": (21, 1),
    "riscv64": (243, 1),
    "loongarch64": (258, 1),
}
PT_INTERP = 3
KEYS = {"mix", "threads", "duration_s", "syscalls", "syscalls_per_s", "per_thread", "pid"}


def _shared_zig_cache(cache: Path) -> None:
    """Point cache/build/zig at the user cache's: zig compiles musl once per target (a minute each), not
    once per test run. zig's cache is content-addressed and locked; the storm build directories stay in
    the temporary cache, so the cached/uncached checks below still start from nothing."""
    try:
        shared = cache_dir() / "build" / "zig"
        shared.mkdir(parents=True, exist_ok=True)
    except (ConfigError, OSError):
        return
    (cache / "build").mkdir(parents=True, exist_ok=True)
    (cache / "build" / "zig").symlink_to(shared, target_is_directory=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("ziglang") is None:
        pytest.skip("ziglang is not installed (the storm helper is built with zig's clang)")
    path = tmp_path_factory.mktemp("cache")
    _shared_zig_cache(path)
    return path


@pytest.fixture(scope="module")
def built(cache: Path) -> tuple[StormBuild, float]:
    started = time.monotonic()
    build = build_storm(cache, "x86_64")
    return build, time.monotonic() - started


@pytest.fixture(scope="module")
def storm(built: tuple[StormBuild, float]) -> Path:
    if platform.machine() != "x86_64":
        pytest.skip(f"an x86_64 program does not run on a {platform.machine()} host")
    return built[0].path


def elf(path: Path) -> tuple[int, int, int, int, list[int]]:
    """(EI_CLASS, EI_DATA, e_type, e_machine, [p_type of each program header]) of an ELF file."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF", f"{path} is not an ELF"
    klass, order = data[4], data[5]
    assert klass == 2, f"{path} is not a 64-bit ELF"
    end = "<" if order == 1 else ">"
    e_type, e_machine = struct.unpack_from(end + "HH", data, 16)
    (phoff,) = struct.unpack_from(end + "Q", data, 32)
    phentsize, phnum = struct.unpack_from(end + "HH", data, 54)
    types = [struct.unpack_from(end + "I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return klass, order, e_type, e_machine, types


def run_storm(storm: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(storm), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
    )


def check_result(result: dict[str, Any], mix: str, threads: int, duration_ms: int, pid: int) -> None:
    assert set(result) == KEYS
    assert result["mix"] == mix and result["threads"] == threads and result["pid"] == pid
    per_thread = result["per_thread"]
    assert len(per_thread) == threads and all(isinstance(n, int) and n > 0 for n in per_thread)
    assert result["syscalls"] == sum(per_thread) > 0
    if mix == "rw":  # a write and a read an iteration
        assert all(n % 2 == 0 for n in per_thread)
    duration = result["duration_s"]
    assert duration_ms / 1000 <= duration < duration_ms / 1000 + 10
    assert result["syscalls_per_s"] == pytest.approx(result["syscalls"] / duration, rel=1e-6)


# -- the build --------------------------------------------------------------------------------------


def test_the_build_is_a_static_x86_64_binary_in_its_keyed_directory(
    built: tuple[StormBuild, float], cache: Path
) -> None:
    build, _seconds = built
    assert not build.cached
    assert build.path.name == "storm" and os.access(build.path, os.X_OK)
    assert build.path.parent.parent == cache / "build" / "storm"
    assert build.path.parent.name.startswith("x86_64-")
    assert build.compiler.startswith("zig ") and "clang" in build.compiler
    command = build.command
    assert command[command.index("-target") + 1] == "x86_64-linux-musl"
    assert {"-static", "-O2", "-Wall", "-Werror"} <= set(command)
    assert command[command.index("-o") + 1] == str(build.path)
    assert command[-1] == str(build.path.parent / "src" / "storm.c")
    assert (build.path.parent / "src" / "storm.c").is_file()
    klass, order, _e_type, machine, types = elf(build.path)
    assert (klass, order, machine) == (2, 1, 62) and PT_INTERP not in types


def test_a_second_build_reuses_the_cached_directory(built: tuple[StormBuild, float], cache: Path) -> None:
    first, _seconds = built
    stamp = first.path.stat().st_mtime_ns
    started = time.monotonic()
    again = build_storm(cache, "x86_64")
    assert time.monotonic() - started < 30  # no compiler run (only `zig version` for the key)
    assert again.cached
    assert (again.path, again.compiler, again.command) == (first.path, first.compiler, first.command)
    assert again.path.stat().st_mtime_ns == stamp


def test_an_unknown_architecture_is_a_build_error_listing_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(BuildError) as caught:
        build_storm(tmp_path, "i686")
    message = str(caught.value)
    assert "'i686'" in message
    for name in MACHINES:
        assert name in message
    assert caught.value.hint and "x86_64" in caught.value.hint
    assert not (tmp_path / "build").exists()


def test_a_failing_build_is_a_build_error_naming_the_command_and_its_output(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "checkout"
    (root / "drivers" / "tools").mkdir(parents=True)
    (root / "drivers" / "tools" / "storm.c").write_text("int main(void) { return missing_symbol; }\n")
    monkeypatch.setattr(tools_module, "project_root", lambda: root)
    storm_dirs = cache / "build" / "storm"
    before = set(storm_dirs.iterdir()) if storm_dirs.exists() else set()
    with pytest.raises(BuildError) as caught:
        build_storm(cache, "x86_64")
    message = str(caught.value)
    assert "missing_symbol" in message and "x86_64-linux-musl" in message and "-Werror" in message
    assert "ziglang" in message and "failed (exit" in message
    assert caught.value.hint and "to reproduce" in caught.value.hint
    # nothing half-built is left behind (only the lock file of the new key's directory)
    assert {path.suffix for path in set(storm_dirs.iterdir()) - before} <= {".lock"}


def test_a_missing_zig_is_a_build_error_with_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ziglang", None)  # import raises ImportError
    with pytest.raises(BuildError) as caught:
        build_storm(tmp_path, "x86_64")
    assert "storm" in str(caught.value) and "ziglang" in str(caught.value)
    assert caught.value.hint and "pip install ziglang" in caught.value.hint


@pytest.mark.slow
def test_every_architecture_builds_a_static_elf_of_its_machine(cache: Path) -> None:
    assert set(ARCH_NAMES) == set(MACHINES)
    for arch, (machine, order) in MACHINES.items():
        build = build_storm(cache, arch)
        klass, got_order, e_type, got_machine, types = elf(build.path)
        assert (klass, got_order, got_machine) == (2, order, machine), arch
        assert PT_INTERP not in types, f"{arch}: the binary asks for a dynamic loader"
        assert e_type in (2, 3), arch  # ET_EXEC (or a static PIE)
        assert build.path.parent.name.startswith(f"{arch}-")
        assert build.command[build.command.index("-target") + 1].startswith(
            {"ppc64le": "powerpc64le"}.get(arch, arch) + "-linux-musl"
        )


# -- a run on this host -----------------------------------------------------------------------------


@pytest.mark.parametrize("mix", ["getppid", "rw"])
def test_a_run_prints_one_json_line_of_consistent_counts(storm: Path, mix: str) -> None:
    done = run_storm(storm, mix, "2", "200")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout.endswith("\n") and done.stdout.count("\n") == 1
    result = json.loads(done.stdout)
    check_result(result, mix, 2, 200, result["pid"])


def test_zero_threads_means_one_per_cpu(storm: Path) -> None:
    done = run_storm(storm, "getppid", "0", "50")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # musl's sysconf(_SC_NPROCESSORS_ONLN) counts the CPUs this process may run on
    check_result(result, "getppid", len(os.sched_getaffinity(0)), 50, result["pid"])


def _read_until_eof(fd: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "storm did not write and close its --ready-fd within 60 s"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def test_the_ready_fd_handshake_waits_for_a_byte_on_stdin(storm: Path) -> None:
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [str(storm), "rw", "2", "100", "--ready-fd", str(write_end)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(write_end,),
    )
    os.close(write_end)
    try:
        # "ready\n", then the fd is closed (this end sees EOF): the workers exist and wait
        assert _read_until_eof(read_end, time.monotonic() + 60) == b"ready\n"
        tasks = os.listdir(f"/proc/{proc.pid}/task")
        assert len(tasks) == 3  # the main thread and two workers
        time.sleep(0.2)
        assert proc.poll() is None  # blocked on stdin
        assert proc.stdin is not None
        proc.stdin.write(b"g")
        proc.stdin.flush()
        stdout, stderr = proc.communicate(timeout=60)  # closes stdin
    finally:
        os.close(read_end)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    check_result(json.loads(stdout), "rw", 2, 100, proc.pid)


def test_a_closed_stdin_during_the_handshake_is_an_error(storm: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        done = subprocess.run(
            [str(storm), "getppid", "1", "100", "--ready-fd", str(write_end)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            pass_fds=(write_end,),
            timeout=60,
            check=False,
        )
        os.close(write_end)
        assert os.read(read_end, 100) == b"ready\n"
    finally:
        os.close(read_end)
    assert done.returncode == 1 and "stdin closed" in done.stderr and done.stdout == ""


@pytest.mark.parametrize(
    ("args", "what"),
    [
        ((), "missing arguments"),
        (("getppid", "2"), "missing arguments"),
        (("open", "2", "200"), "MIX"),
        (("getppid", "two", "200"), "THREADS"),
        (("getppid", "-1", "200"), "THREADS"),
        (("getppid", "4097", "200"), "THREADS"),
        (("getppid", "2", "0"), "DURATION_MS"),
        (("getppid", "2", "2.5"), "DURATION_MS"),
        (("getppid", "2", "200", "--ready-fd"), "wrong number"),
        (("getppid", "2", "200", "--ready", "3"), "unknown option"),
        (("getppid", "2", "200", "--ready-fd", "x"), "--ready-fd"),
        (("getppid", "2", "200", "--ready-fd", "3", "4"), "wrong number"),
    ],
)
def test_bad_usage_exits_2_with_one_line_on_stderr(storm: Path, args: tuple[str, ...], what: str) -> None:
    done = run_storm(storm, *args)
    assert done.returncode == 2
    assert done.stdout == "" and done.stderr.count("\n") == 1
    assert done.stderr.startswith("storm: ") and what in done.stderr and "usage: storm" in done.stderr
