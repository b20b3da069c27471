"""The capture suite's deterministic workload (runs as its own process in the guest).

Every syscall is made with libc's raw syscall() and the architecture's own number from the
generated table, so exactly that syscall happens (glibc would turn open() into openat(), nanosleep()
into clock_nanosleep(), ...). Each call is recorded with the raw arguments, the decoded values the
drivers must report, and the return value the kernel gave; the verifier compares events to that.

Protocol on stdio: prints {"pid", "tid"}, waits for one line on stdin ("go"), runs, prints the record.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import struct
import sys
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


MASK = (1 << 64) - 1
AT_FDCWD = -100
AT_REMOVEDIR = 0x200
AF_INET = 2
SOCK_STREAM = 1
SIGKILL = 9
# Begin and end markers: close() of these fds fails with EBADF and is unmistakable in any trace.
MARK_BEGIN = 0x4B4D5842
MARK_END = 0x4B4D5845


def syscall_table(machine: str) -> dict[str, int]:
    for root in (Path(__file__).resolve().parent.parent.parent, Path("/opt/kmatrix")):
        path = root / "drivers" / "common" / "syscalls" / f"{machine}.json"
        if path.exists():
            table: dict[str, int] = json.loads(path.read_text())["syscalls"]
            return table
    raise FileNotFoundError(f"no syscall table for {machine}")


def encode(value: Any) -> Any:
    """JSON form of an expected decoded value: bytes become {"hex": ...}."""
    if isinstance(value, bytes | bytearray):
        return {"hex": bytes(value).hex()}
    if isinstance(value, tuple):
        return list(value)
    return value


class Workload:
    def __init__(self, token: str) -> None:
        self.machine = os.uname().machine
        self.nr = syscall_table(self.machine)
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.syscall.restype = ctypes.c_long
        self.token = token
        self.tid = int(self.libc.gettid()) if hasattr(self.libc, "gettid") else os.getpid()
        self.calls: list[dict[str, Any]] = []
        self.skipped: list[str] = []
        self._keep: list[Any] = []  # buffers must outlive the calls that point at them

    def has(self, name: str) -> bool:
        return name in self.nr

    def sys(
        self,
        name: str,
        *args: int,
        enter: dict[str, Any] | None = None,
        exit: dict[str, Any] | None = None,
        check_args: tuple[int, ...] | None = None,
        tid: int | None = None,
    ) -> int:
        """Make the syscall, record what the drivers must report, return the kernel's return value."""
        ctypes.set_errno(0)
        raw = self.libc.syscall(ctypes.c_long(self.nr[name]), *(ctypes.c_long(a) for a in args))
        ret = -ctypes.get_errno() if raw == -1 and ctypes.get_errno() else int(raw)
        indexes = range(len(args)) if check_args is None else check_args
        self.calls.append(
            {
                "name": name,
                "nr": self.nr[name],
                "tid": tid or self.tid,
                "ret": ret,
                "args": {str(i): args[i] & MASK for i in indexes},
                "enter": {k: encode(v) for k, v in (enter or {}).items()},
                "exit": {k: encode(v) for k, v in (exit or {}).items()},
            }
        )
        return ret

    def buf(self, data: bytes | int) -> ctypes.Array[ctypes.c_char]:
        buffer = ctypes.create_string_buffer(data)
        self._keep.append(buffer)
        return buffer

    def ptr(self, buffer: Any) -> int:
        return ctypes.addressof(buffer)

    def cstr(self, text: str) -> int:
        return self.ptr(self.buf(text.encode() + b"\0"))

    # -- the workload ----------------------------------------------------------------------
    def run(self, workdir: str) -> None:
        t = self.token
        self.sys("close", MARK_BEGIN)
        os.makedirs(workdir, exist_ok=True)
        path = f"{workdir}/file-{t}"
        p_path = self.cstr(path)
        fd = self.sys("openat", AT_FDCWD, p_path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o640, enter={"path": path})
        missing = f"{workdir}/missing-{t}"
        self.sys("openat", AT_FDCWD, self.cstr(missing), os.O_RDONLY, 0, enter={"path": missing})

        data = f"kmatrix write sentinel {t}\n".encode()
        self.sys("write", fd, self.ptr(self.buf(data)), len(data), enter={"data": data})
        # A bad user pointer: the driver must report an empty param flagged as a fault, not crash.
        self.sys("write", fd, 0x10, 5, enter={"data": {"fault": True}})
        data2 = f"pwrite sentinel {t}".encode()
        self.sys("pwrite64", fd, self.ptr(self.buf(data2)), len(data2), 100, enter={"data": data2})
        self.sys("lseek", fd, 0, os.SEEK_SET)
        rbuf = self.buf(64)
        self.sys("read", fd, self.ptr(rbuf), len(data), exit={"data": data})
        pbuf = self.buf(64)
        self.sys("pread64", fd, self.ptr(pbuf), len(data2), 100, exit={"data": data2})
        statbuf = self.buf(256)
        if self.has("fstat"):
            self.sys("fstat", fd, self.ptr(statbuf))
        if self.has("newfstatat"):
            self.sys("newfstatat", AT_FDCWD, p_path, self.ptr(statbuf), 0, enter={"path": path})
        fd2 = self.sys("dup", fd)
        self.sys("dup3", fd, 40, os.O_CLOEXEC)
        self.sys("close", fd2)
        self.sys("close", 40)
        self.sys("close", fd)

        fds = (ctypes.c_int * 2)()
        self._keep.append(fds)
        self.sys("pipe2", ctypes.addressof(fds), os.O_CLOEXEC)
        self.calls[-1]["exit"] = {"fds": [fds[0], fds[1]]}
        self.sys("close", fds[0])
        self.sys("close", fds[1])

        directory = f"{workdir}/dir-{t}"
        self.sys("mkdirat", AT_FDCWD, self.cstr(directory), 0o750, enter={"path": directory})
        new = f"{directory}/renamed-{t}"
        rename = "renameat2" if self.has("renameat2") else "renameat"
        extra = (0,) if rename == "renameat2" else ()
        self.sys(rename, AT_FDCWD, p_path, AT_FDCWD, self.cstr(new), *extra, enter={"oldpath": path, "newpath": new})
        self.sys("unlinkat", AT_FDCWD, self.cstr(new), 0, enter={"path": new})
        self.sys("unlinkat", AT_FDCWD, self.cstr(directory), AT_REMOVEDIR, enter={"path": directory})

        self.sys("getpid")
        self.sys("getppid")
        self.sys("gettid")

        self.network(t)
        self.memory()
        timespec = struct.pack("=qq", 0, 2_000_000)
        self.sys("nanosleep", self.ptr(self.buf(timespec)), 0, enter={"req": timespec})
        self.processes(t)
        self.sys("close", MARK_END)

    def network(self, t: str) -> None:
        port = 20000 + os.getpid() % 20000
        addr = struct.pack("=H", AF_INET) + struct.pack(">H", port) + bytes([127, 0, 0, 1]) + bytes(8)
        p_addr = self.ptr(self.buf(addr))
        server = self.sys("socket", AF_INET, SOCK_STREAM | os.O_CLOEXEC, 0)
        self.sys("bind", server, p_addr, len(addr), enter={"addr": addr})
        self.sys("listen", server, 4)
        client = self.sys("socket", AF_INET, SOCK_STREAM | os.O_CLOEXEC, 0)
        self.sys("connect", client, p_addr, len(addr), enter={"addr": addr})
        peer = self.buf(16)
        peer_len = ctypes.c_int(16)
        self._keep.append(peer_len)
        conn = self.sys("accept4", server, self.ptr(peer), ctypes.addressof(peer_len), os.O_CLOEXEC)
        self.calls[-1]["exit"] = {"addr": encode(peer.raw[: peer_len.value])}
        message = f"sendto sentinel {t}".encode()
        self.sys("sendto", client, self.ptr(self.buf(message)), len(message), 0, 0, 0, enter={"data": message})
        inbox = self.buf(64)
        self.sys("recvfrom", conn, self.ptr(inbox), len(message), 0, 0, 0, exit={"data": message})
        for sock in (conn, client, server):
            self.sys("close", sock)

    def memory(self) -> None:
        length = 2 * mmap.PAGESIZE
        prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        if self.machine == "s390x":
            # s390x's mmap is old_mmap: one pointer to the six arguments.
            block = (ctypes.c_ulong * 6)(0, length, prot, flags, MASK, 0)
            self._keep.append(block)
            addr = self.sys("mmap", ctypes.addressof(block))
        else:
            addr = self.sys("mmap", 0, length, prot, flags, -1, 0)
        self.sys("munmap", addr, length)

    def processes(self, t: str) -> None:
        before = len(self.calls)
        child = os.fork()  # glibc's fork is the clone syscall
        if child == 0:
            os.execv("/bin/busybox", ["busybox", "true", f"exec-sentinel-{t}"])
        self.calls.insert(
            before,
            {
                "name": "clone",
                "alt": ["clone3", "fork"],
                "tid": self.tid,
                "ret": child,
                "args": {},
                "enter": {},
                "exit": {},
            },
        )
        self.calls.append(
            {
                "name": "execve",
                "tid": child,
                "ret": 0,
                "args": {},
                "enter": {"filename": "/bin/busybox", "argv": ["busybox", "true", f"exec-sentinel-{t}"]},
                "exit": {},
            }
        )
        status = ctypes.c_int(0)
        self._keep.append(status)
        self.sys("wait4", child, ctypes.addressof(status), 0, 0, check_args=(0, 1, 2))

        sleeper = os.fork()
        if sleeper == 0:
            os.execv("/bin/busybox", ["busybox", "sleep", "30"])
        self.calls.insert(
            len(self.calls),
            {
                "name": "clone",
                "alt": ["clone3", "fork"],
                "tid": self.tid,
                "ret": sleeper,
                "args": {},
                "enter": {},
                "exit": {},
            },
        )
        self.sys("kill", sleeper, SIGKILL)
        self.sys("wait4", sleeper, ctypes.addressof(status), 0, 0, check_args=(0, 1, 2))


def main() -> int:
    token = sys.argv[1] if len(sys.argv) > 1 else str(os.getpid())
    workdir = sys.argv[2] if len(sys.argv) > 2 else "/tmp/kmx-work"
    workload = Workload(token)
    print(json.dumps({"pid": os.getpid(), "tid": workload.tid}), flush=True)
    sys.stdin.readline()
    workload.run(workdir)
    print(json.dumps({"calls": workload.calls, "skipped": workload.skipped, "tid": workload.tid}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
