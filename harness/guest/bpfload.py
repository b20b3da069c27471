"""libbpf through ctypes: open, configure, load and attach a BPF object; ring and perf buffers; stats.

Runs in the guest with Debian's libbpf.so.1 (1.5 in trixie, 1.7 in sid) and the standard library
only; both BPF probes (legacy and modern) are loaded with it. libbpf's own log (the verifier's
messages included) goes to the `log` callable given to BpfObject, line by line, prefixed with the
level ("warn: ", "info: ", "debug: ").

    obj = BpfObject("/opt/kmatrix/drivers/kmx_modern.bpf.o", print)
    obj.set_rodata(config)          # before load
    obj.load()                      # BpfError with the verifier's last lines on failure
    obj.attach_all()
    rb = obj.ring_buffer("events", on_event)
    while ...: rb.poll(100)
    rb.free(); obj.close()

After load(), `obj.load_info` holds per program what the verifier reported (processed insns,
verification time) and the wall time of the whole load.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import re
import struct
import time

TYPE_CHECKING = False  # typing stays out of the guest image; mypy reads the branch below
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

LIBBPF_NAMES = ("libbpf.so.1", "libbpf.so")

# enum libbpf_print_level
_LEVELS = {0: "warn", 1: "info", 2: "debug"}
# BPF_LOG_STATS: the verifier appends only its statistics (processed insns, time) to the log.
_BPF_LOG_STATS = 4
_STATS_LOG_SIZE = 1 << 16
# After a failed load, the object is loaded again with the verifier's full log (level 1) in
# buffers of this size per program, read directly (libbpf's own printing cuts long messages).
_FULL_LOG_SIZE = 16 << 20
_PRINT_BUF_SIZE = 1 << 16
_PROCESSED = re.compile(r"processed (\d+) insns")
_VERIFY_TIME = re.compile(r"verification time (\d+) usec")

# struct bpf_prog_info (include/uapi/linux/bpf.h): the offsets of the fields read here. The kernel
# fills at most what it knows and zeroes the rest (verified_insns exists from 5.16).
PROG_INFO_SIZE = 232
PROG_INFO_OFFSETS = {
    "type": (0, "I"),
    "id": (4, "I"),
    "jited_prog_len": (16, "I"),
    "xlated_prog_len": (20, "I"),
    "load_time": (40, "Q"),
    "name": (64, "16s"),
    "run_time_ns": (192, "Q"),
    "run_cnt": (200, "Q"),
    "recursion_misses": (208, "Q"),
    "verified_insns": (216, "I"),
}

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_RING_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_PERF_SAMPLE_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
_PERF_LOST_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64)


class BpfError(Exception):
    """A libbpf call failed; the message carries libbpf's last log lines (the verifier's included)."""


# -- the library -----------------------------------------------------------------------------------

_lib: ctypes.CDLL | None = None
_libc: ctypes.CDLL | None = None


def _declare(lib: ctypes.CDLL) -> None:
    vp, cp, i, u32, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_size_t
    table: dict[str, tuple[Any, list[Any]]] = {
        "libbpf_set_print": (vp, [_PRINT_FN]),
        "libbpf_major_version": (u32, []),
        "libbpf_minor_version": (u32, []),
        "bpf_object__open_file": (vp, [cp, vp]),
        "bpf_object__load": (i, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__next_program": (vp, [vp, vp]),
        "bpf_object__next_map": (vp, [vp, vp]),
        "bpf_program__name": (cp, [vp]),
        "bpf_program__section_name": (cp, [vp]),
        "bpf_program__fd": (i, [vp]),
        "bpf_program__attach": (vp, [vp]),
        "bpf_program__set_log_level": (i, [vp, u32]),
        "bpf_program__set_log_buf": (i, [vp, vp, sz]),
        "bpf_program__set_autoload": (i, [vp, ctypes.c_bool]),
        "bpf_link__destroy": (i, [vp]),
        "bpf_map__name": (cp, [vp]),
        "bpf_map__fd": (i, [vp]),
        "bpf_map__initial_value": (vp, [vp, ctypes.POINTER(sz)]),
        "bpf_map__set_initial_value": (i, [vp, vp, sz]),
        "bpf_map__set_max_entries": (i, [vp, u32]),
        "bpf_map__value_size": (u32, [vp]),
        "bpf_map__max_entries": (u32, [vp]),
        "bpf_map_update_elem": (i, [i, vp, vp, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (i, [i, vp, vp]),
        "bpf_obj_get_info_by_fd": (i, [i, vp, ctypes.POINTER(u32)]),
        "ring_buffer__new": (vp, [i, _RING_SAMPLE_FN, vp, vp]),
        "ring_buffer__poll": (i, [vp, i]),
        "ring_buffer__consume": (i, [vp]),
        "ring_buffer__free": (None, [vp]),
        "perf_buffer__new": (vp, [i, sz, _PERF_SAMPLE_FN, _PERF_LOST_FN, vp, vp]),
        "perf_buffer__poll": (i, [vp, i]),
        "perf_buffer__consume": (i, [vp]),
        "perf_buffer__free": (None, [vp]),
        "libbpf_num_possible_cpus": (i, []),
    }
    for name, (restype, argtypes) in table.items():
        func = getattr(lib, name, None)
        if func is None:
            continue  # older libbpf: the callers that need it say so
        func.restype = restype
        func.argtypes = argtypes


def libbpf() -> ctypes.CDLL:
    """Debian's libbpf.so.1, loaded once."""
    global _lib, _libc
    if _lib is None:
        last: OSError | None = None
        for name in LIBBPF_NAMES:
            try:
                lib = ctypes.CDLL(name, use_errno=True)
                break
            except OSError as error:
                last = error
        else:
            raise BpfError(f"cannot load libbpf ({', '.join(LIBBPF_NAMES)}): {last}")
        _declare(lib)
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.vsnprintf.restype = ctypes.c_int
        _libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
        _lib = lib
        _lib.libbpf_set_print(_PRINTER)
    return _lib


def libbpf_version() -> str:
    lib = libbpf()
    if not hasattr(lib, "libbpf_major_version"):
        return "unknown"
    return f"{lib.libbpf_major_version()}.{lib.libbpf_minor_version()}"


# libbpf has one global print callback; it forwards to whichever BpfObject is being worked on.
_sinks: list[Callable[[str], None]] = []
_recent: list[str] = []
_RECENT_MAX = 400


def _print(level: int, fmt: bytes | None, args: int | None) -> int:
    # va_list is an array (x86_64, s390x), a pointer (ppc64, riscv, loongarch) or a struct passed by
    # reference (arm64): in every case a pointer-sized value that vsnprintf takes as it came.
    try:
        assert _libc is not None
        buf = _print_buf
        needed = _libc.vsnprintf(buf, len(buf), fmt, args)
        text = buf.value.decode(errors="replace")
        if needed >= len(buf):
            text += f"... [{needed - len(buf) + 1} more bytes]"
        prefix = _LEVELS.get(level, str(level))
        for line in text.rstrip("\n").split("\n"):
            _recent.append(line)
            if _sinks:
                _sinks[-1](f"{prefix}: {line}")
        del _recent[:-_RECENT_MAX]
    except Exception:  # never raise into C
        pass
    return 0


_PRINTER = _PRINT_FN(_print)
_print_buf = ctypes.create_string_buffer(_PRINT_BUF_SIZE)


def _errno_text(code: int) -> str:
    code = abs(code)
    return f"{_errno.errorcode.get(code, code)} ({os.strerror(code)})"


# -- buffers ---------------------------------------------------------------------------------------


class RingBuffer:
    """A BPF ring buffer map's consumer; on_event(bytes) is called for each record during poll/consume."""

    def __init__(self, map_fd: int, on_event: Callable[[bytes], None]) -> None:
        self._on_event = on_event
        self.error: BaseException | None = None
        # Counting mode (throughput): records are counted, not copied or handed over.
        self.counting = False
        self.count = 0
        self.count_bytes = 0

        def sample(_ctx: int | None, data: int | None, size: int) -> int:
            if self.counting:
                self.count += 1
                self.count_bytes += size
                return 0
            try:
                self._on_event(ctypes.string_at(data or 0, size))
            except BaseException as error:  # stop consuming; re-raised by poll/consume
                self.error = error
                return -1
            return 0

        self._cb = _RING_SAMPLE_FN(sample)
        self._ptr = libbpf().ring_buffer__new(map_fd, self._cb, None, None)
        if not self._ptr:
            raise BpfError(f"ring_buffer__new(fd {map_fd}): {_errno_text(ctypes.get_errno())}")

    def _check(self, ret: int, what: str) -> int:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if ret < 0 and ret != -_errno.EINTR:
            raise BpfError(f"ring_buffer__{what}: {_errno_text(ret)}")
        return max(ret, 0)

    def poll(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms for records and consume them: how many were consumed."""
        return self._check(libbpf().ring_buffer__poll(self._ptr, timeout_ms), "poll")

    def consume(self) -> int:
        """Consume every available record without waiting: how many."""
        return self._check(libbpf().ring_buffer__consume(self._ptr), "consume")

    def consume_n(self, n: int) -> int:
        """Consume at most n records (libbpf >= 1.3's ring_buffer__consume_n; else all available)."""
        lib = libbpf()
        func = getattr(lib, "ring_buffer__consume_n", None)
        if func is None:
            return self.consume()
        func.restype, func.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t]
        return self._check(func(self._ptr, n), "consume_n")

    def fill(self) -> float | None:
        """Unconsumed bytes over the ring's size (libbpf >= 1.3's ring__ API; None without it)."""
        lib = libbpf()
        get_ring = getattr(lib, "ring_buffer__ring", None)
        avail = getattr(lib, "ring__avail_data_size", None)
        size = getattr(lib, "ring__size", None)
        if get_ring is None or avail is None or size is None:
            return None
        get_ring.restype, get_ring.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_uint]
        avail.restype, avail.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
        size.restype, size.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
        ring = get_ring(self._ptr, 0)
        total = size(ring) if ring else 0
        return avail(ring) / total if total else None

    def free(self) -> None:
        if self._ptr:
            libbpf().ring_buffer__free(self._ptr)
            self._ptr = None


class PerfBuffer:
    """A BPF_MAP_TYPE_PERF_EVENT_ARRAY consumer: on_event(cpu, bytes), on_lost(cpu, count)."""

    def __init__(self, map_fd: int, page_cnt: int, on_event: Callable[[int, bytes], None],
                 on_lost: Callable[[int, int], None]) -> None:
        self.error: BaseException | None = None
        self.counting = False  # as RingBuffer's
        self.count = 0
        self.count_bytes = 0

        def sample(_ctx: int | None, cpu: int, data: int | None, size: int) -> None:
            if self.counting:
                self.count += 1
                self.count_bytes += size
                return
            if self.error is not None:
                return
            try:
                on_event(cpu, ctypes.string_at(data or 0, size))
            except BaseException as error:
                self.error = error

        def lost(_ctx: int | None, cpu: int, count: int) -> None:
            try:
                on_lost(cpu, count)
            except BaseException as error:
                self.error = error

        self._sample, self._lost = _PERF_SAMPLE_FN(sample), _PERF_LOST_FN(lost)
        self._ptr = libbpf().perf_buffer__new(map_fd, page_cnt, self._sample, self._lost, None, None)
        if not self._ptr:
            raise BpfError(f"perf_buffer__new(fd {map_fd}, {page_cnt} pages): {_errno_text(ctypes.get_errno())}")

    def _check(self, ret: int, what: str) -> int:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if ret < 0 and ret != -_errno.EINTR:
            raise BpfError(f"perf_buffer__{what}: {_errno_text(ret)}")
        return max(ret, 0)

    def poll(self, timeout_ms: int) -> int:
        return self._check(libbpf().perf_buffer__poll(self._ptr, timeout_ms), "poll")

    def consume(self) -> int:
        return self._check(libbpf().perf_buffer__consume(self._ptr), "consume")

    def free(self) -> None:
        if self._ptr:
            libbpf().perf_buffer__free(self._ptr)
            self._ptr = None


# -- the object ------------------------------------------------------------------------------------


def parse_prog_info(raw: bytes) -> dict[str, Any]:
    """The fields of struct bpf_prog_info read here, from its bytes (native order)."""
    padded = raw.ljust(PROG_INFO_SIZE, b"\0")
    info: dict[str, Any] = {}
    for field, (offset, fmt) in PROG_INFO_OFFSETS.items():
        (value,) = struct.unpack_from("=" + fmt, padded, offset)
        info[field] = value.split(b"\0", 1)[0].decode(errors="replace") if isinstance(value, bytes) else value
    return info


class BpfObject:
    """One BPF ELF object: open at construction, then set_rodata, load, attach_all, buffers, close."""

    def __init__(self, path: str, log: Callable[[str], None], *, stats_log: bool = True) -> None:
        self.path = path
        self.log = log
        self.stats_log = stats_log  # ask the verifier for its statistics (processed insns) at load
        self.lib = libbpf()
        self.links: list[int] = []
        self.load_info: dict[str, Any] = {}
        self._buffers: list[RingBuffer | PerfBuffer] = []
        self._rodata: bytes | None = None
        self._log_bufs: dict[str, Any] = {}
        self._loaded = False
        self.obj: int | None = None
        self._open()

    # libbpf's messages go to this object's log while one of its calls runs
    def _call(self, func: Callable[..., Any], *args: Any) -> Any:
        _sinks.append(self.log)
        try:
            return func(*args)
        finally:
            _sinks.pop()

    def _open(self) -> None:
        del _recent[:]
        ctypes.set_errno(0)
        obj = self._call(self.lib.bpf_object__open_file, self.path.encode(), None)
        if not obj:
            raise BpfError(f"bpf_object__open_file({self.path}): {_errno_text(ctypes.get_errno() or _errno.EINVAL)}"
                           + self._tail())
        self.obj = obj

    @staticmethod
    def _tail(lines: int = 40) -> str:
        return ("\nlibbpf:\n" + "\n".join(_recent[-lines:])) if _recent else ""

    def _programs(self) -> list[int]:
        progs: list[int] = []
        prog = None
        while True:
            prog = self.lib.bpf_object__next_program(self.obj, prog)
            if not prog:
                return progs
            progs.append(prog)

    def _maps(self) -> list[int]:
        maps: list[int] = []
        m = None
        while True:
            m = self.lib.bpf_object__next_map(self.obj, m)
            if not m:
                return maps
            maps.append(m)

    def program_names(self) -> list[str]:
        return [self.lib.bpf_program__name(p).decode() for p in self._programs()]

    def map_names(self) -> list[str]:
        return [self.lib.bpf_map__name(m).decode() for m in self._maps()]

    def _map(self, name: str) -> int:
        maps = self._maps()
        for m in maps:
            if self.lib.bpf_map__name(m).decode() == name:
                return m
        # internal maps are named "<object prefix>.rodata" etc.: accept the section name too
        for m in maps:
            if name.startswith(".") and self.lib.bpf_map__name(m).decode().endswith(name):
                return m
        raise BpfError(f"{self.path} has no map {name!r} (maps: {', '.join(self.map_names())})")

    def set_rodata(self, data: bytes) -> None:
        """Before load: overwrite the start of the .rodata map's initial value (const volatile globals)."""
        if self._loaded:
            raise BpfError("set_rodata after load: .rodata is frozen once loaded")
        m = self._map(".rodata")
        size = ctypes.c_size_t(0)
        current = self.lib.bpf_map__initial_value(m, ctypes.byref(size))
        if not current:
            raise BpfError(f"{self.path}: .rodata has no initial value")
        if len(data) > size.value:
            raise BpfError(f"set_rodata: {len(data)} bytes given, .rodata holds {size.value}")
        value = data + ctypes.string_at(current, size.value)[len(data):]
        buf = ctypes.create_string_buffer(value, len(value))
        ret = self.lib.bpf_map__set_initial_value(m, buf, len(value))
        if ret < 0:
            raise BpfError(f"bpf_map__set_initial_value(.rodata): {_errno_text(ret)}")
        self._rodata = data

    def set_max_entries(self, map_name: str, entries: int) -> None:
        """Before load: resize a map (a ring buffer's byte size, a per-CPU array's entries)."""
        ret = self.lib.bpf_map__set_max_entries(self._map(map_name), entries)
        if ret < 0:
            raise BpfError(f"bpf_map__set_max_entries({map_name}, {entries}): {_errno_text(ret)}")

    def load(self) -> None:
        """Verify and load every program and create the maps; BpfError with the verifier's log on failure."""
        del _recent[:]
        if self.stats_log:
            self._want_stats()
        started = time.monotonic()
        ret = self._call(self.lib.bpf_object__load, self.obj)
        seconds = time.monotonic() - started
        if ret < 0:
            raise BpfError(f"bpf_object__load({os.path.basename(self.path)}): {_errno_text(ret)}"
                           + self._failure_log(ret))
        self._loaded = True
        programs = {}
        for prog in self._programs():
            name = self.lib.bpf_program__name(prog).decode()
            entry: dict[str, Any] = {"section": self.lib.bpf_program__section_name(prog).decode()}
            text = self._log_bufs.get(name)
            if text is not None:
                log = text.value.decode(errors="replace")
                processed, usec = _PROCESSED.search(log), _VERIFY_TIME.search(log)
                entry["processed_insns"] = int(processed.group(1)) if processed else None
                entry["verification_us"] = int(usec.group(1)) if usec else None
            programs[name] = entry
        self._log_bufs.clear()
        self.load_info = {"seconds": round(seconds, 6), "libbpf": libbpf_version(), "programs": programs}

    def _failure_log(self, ret: int, lines: int = 60) -> str:
        """Load again with the verifier's full log in our own buffers: its last lines, per failing program."""
        first = self._tail(15)
        if not hasattr(self.lib, "bpf_program__set_log_buf"):
            return first
        self.log(f"warn: load failed ({_errno_text(ret)}); loading again for the verifier's full log")
        self._reopen()
        bufs = {}
        for prog in self._programs():
            buf = ctypes.create_string_buffer(_FULL_LOG_SIZE)
            if self.lib.bpf_program__set_log_buf(prog, buf, len(buf)) == 0:
                self.lib.bpf_program__set_log_level(prog, 1)
                bufs[self.lib.bpf_program__name(prog).decode()] = buf
        self._call(self.lib.bpf_object__load, self.obj)
        parts = [first]
        for name, buf in bufs.items():
            text = buf.value.decode(errors="replace").rstrip("\n")
            if not text:
                continue
            for line in text.split("\n")[-400:]:
                self.log(f"verifier {name}: {line}")
            tail = text.split("\n")[-lines:]
            parts.append(f"\nverifier log of {name} (last {len(tail)} lines):\n" + "\n".join(tail))
        return "".join(parts)

    def _want_stats(self) -> None:
        if not hasattr(self.lib, "bpf_program__set_log_buf"):
            return
        for prog in self._programs():
            buf = ctypes.create_string_buffer(_STATS_LOG_SIZE)
            name = self.lib.bpf_program__name(prog).decode()
            if self.lib.bpf_program__set_log_buf(prog, buf, len(buf)) == 0:
                self.lib.bpf_program__set_log_level(prog, _BPF_LOG_STATS)
                self._log_bufs[name] = buf

    def _reopen(self) -> None:
        self.lib.bpf_object__close(self.obj)
        self.obj = None
        self._log_bufs.clear()
        self._open()
        if self._rodata is not None:
            self.set_rodata(self._rodata)

    def attach_all(self) -> None:
        """bpf_program__attach for every program, as its SEC() declares (raw_tp, tp_btf, tracepoint, ...)."""
        for prog in self._programs():
            name = self.lib.bpf_program__name(prog).decode()
            ctypes.set_errno(0)
            link = self._call(self.lib.bpf_program__attach, prog)
            if not link:
                raise BpfError(f"attaching {name} ({self.lib.bpf_program__section_name(prog).decode()}): "
                               f"{_errno_text(ctypes.get_errno() or _errno.EINVAL)}" + self._tail(10))
            self.links.append(link)

    def detach_all(self) -> None:
        for link in reversed(self.links):
            self.lib.bpf_link__destroy(link)
        self.links.clear()

    def map_fd(self, name: str) -> int:
        fd = int(self.lib.bpf_map__fd(self._map(name)))
        if fd < 0:
            raise BpfError(f"map {name!r} has no fd (not loaded?): {_errno_text(fd)}")
        return fd

    def update_array(self, name: str, index: int, value: bytes) -> None:
        key = ctypes.c_uint32(index)
        buf = ctypes.create_string_buffer(value, len(value))
        ret = self.lib.bpf_map_update_elem(self.map_fd(name), ctypes.byref(key), buf, 0)
        if ret < 0:
            raise BpfError(f"bpf_map_update_elem({name}[{index}]): {_errno_text(ret)}")

    def lookup_array(self, name: str, index: int, size: int) -> bytes:
        """One element of an array map (a per-CPU array gives size * possible CPUs bytes: pass that size)."""
        key = ctypes.c_uint32(index)
        buf = ctypes.create_string_buffer(size)
        ret = self.lib.bpf_map_lookup_elem(self.map_fd(name), ctypes.byref(key), buf)
        if ret < 0:
            raise BpfError(f"bpf_map_lookup_elem({name}[{index}]): {_errno_text(ret)}")
        return buf.raw

    def ring_buffer(self, map_name: str, on_event: Callable[[bytes], None]) -> RingBuffer:
        ring = RingBuffer(self.map_fd(map_name), on_event)
        self._buffers.append(ring)
        return ring

    def perf_buffer(self, map_name: str, page_cnt: int, on_event: Callable[[int, bytes], None],
                    on_lost: Callable[[int, int], None]) -> PerfBuffer:
        perf = PerfBuffer(self.map_fd(map_name), page_cnt, on_event, on_lost)
        self._buffers.append(perf)
        return perf

    def prog_stats(self) -> list[dict[str, Any]]:
        """Per program: name, run_cnt, run_time_ns (counted while kernel.bpf_stats_enabled=1), sizes."""
        stats = []
        for prog in self._programs():
            name = self.lib.bpf_program__name(prog).decode()
            fd = self.lib.bpf_program__fd(prog)
            if fd < 0:
                continue
            raw = ctypes.create_string_buffer(PROG_INFO_SIZE)
            length = ctypes.c_uint32(PROG_INFO_SIZE)
            ret = self.lib.bpf_obj_get_info_by_fd(fd, raw, ctypes.byref(length))
            if ret < 0:
                raise BpfError(f"bpf_obj_get_info_by_fd({name}): {_errno_text(ret)}")
            info = parse_prog_info(raw.raw[: length.value])
            verifier = self.load_info.get("programs", {}).get(name, {})
            stats.append({
                "name": name,
                "run_cnt": info["run_cnt"],
                "run_time_ns": info["run_time_ns"],
                "avg_ns": round(info["run_time_ns"] / info["run_cnt"], 1) if info["run_cnt"] else None,
                "xlated_insns": info["xlated_prog_len"] // 8,
                "jited_bytes": info["jited_prog_len"],
                "verified_insns": info["verified_insns"] or verifier.get("processed_insns"),
                "recursion_misses": info["recursion_misses"],
            })
        return stats

    def close(self) -> None:
        for buffer in self._buffers:
            buffer.free()
        self._buffers.clear()
        self.detach_all()
        if self.obj:
            self.lib.bpf_object__close(self.obj)
            self.obj = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def set_bpf_stats(enabled: bool) -> bool:
    """kernel.bpf_stats_enabled (per-program run_cnt / run_time_ns); False when it cannot be set."""
    try:
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as handle:
            handle.write("1\n" if enabled else "0\n")
        return True
    except OSError:
        return False
