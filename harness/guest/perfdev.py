"""User side of the legacy BPF probe (drivers/bpf): the same methods as kmxdev.KmxDevice.

The object (built for the running kernel by harness/build/bpf_legacy.py) is loaded when the
device is opened; start() attaches its two programs and sets `capturing` in the probe's config
map, stop() clears it and detaches them, as the module registers its tracepoint probes only while
capturing (an attached probe costs every syscall of the system, even one it filters out).
Snapshot length and target tgid are in the config map and change at any time, as the module's
ioctls do.

Events arrive in one perf ring per CPU (BPF_MAP_TYPE_PERF_EVENT_ARRAY), each record one event,
byte for byte what the module writes; drain() decodes them with schema.Decoder, sets Event.cpu,
and merges the CPUs' streams by timestamp. Per-CPU counts (events, drops, bytes) are the probe's
own, from its kmx_stats per-CPU array: a drop is an event bpf_perf_event_output could not write.

The layouts below mirror drivers/bpf/kmx_bpf.h (tests/unit/test_bpf_legacy.py compares them).
"""

from __future__ import annotations

import ctypes
import heapq
import os
import struct
import time

from harness.guest.bpfload import BpfObject, set_bpf_stats
from harness.guest.kmxdev import CpuStats, DeviceInfo
from harness.guest.schema import Decoder, Event, Schema

TYPE_CHECKING = False  # guest code: typing is imported for the type checker only
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

DEFAULT_OBJECT = "/opt/kmatrix/drivers/kmx_legacy.bpf.o"  # where harness/cells.py puts it
# drivers/bpf/kmx_bpf.h
MAP_CONFIG = "kmx_config"
MAP_STATS = "kmx_stats"
MAP_EVENTS = "kmx_events"
# filter_tgid, snaplen, capturing, sample_every, pad, redact_n, redact_len[4], redact_key[4][16], pad2
CONFIG = struct.Struct("=QIIIII4I64sI")
STATS = struct.Struct("=QQQQ")  # events, drops, bytes, seen
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MEMBARRIER_CMD_GLOBAL = 1  # synchronize_rcu(): every probe that saw capturing=1 has finished


def cpu_list(text: str) -> list[int]:
    """CPUs in the kernel's list format ("0-3,5")."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if part:
            low, _, high = part.partition("-")
            cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


def _read_cpus(name: str) -> list[int]:
    try:
        with open(f"/sys/devices/system/cpu/{name}") as handle:
            return cpu_list(handle.read())
    except OSError:
        return list(range(os.cpu_count() or 1))


def perf_pages(buffer_bytes: int, page: int = PAGE) -> int:
    """Pages per CPU for perf_buffer__new: a power of two (libbpf's rule), at most buffer_bytes."""
    pages = max(1, int(buffer_bytes) // page)
    return 1 << (pages.bit_length() - 1)


def clamp_snaplen(value: int, maximum: int) -> int:
    """As the module's SET_SNAPLEN: 1..KMX_SNAPLEN_MAX."""
    return max(1, min(int(value), maximum))


def parse_stats(raw: bytes, ncpus: int, online: set[int]) -> list[CpuStats]:
    """A per-CPU array value as the kernel returns it: one 8-byte-aligned struct per possible CPU."""
    stride = (STATS.size + 7) // 8 * 8
    result = []
    for cpu in range(ncpus):
        events, drops, nbytes, _seen = STATS.unpack_from(raw, cpu * stride)
        result.append(CpuStats(cpu, cpu in online, events, drops, nbytes))
    return result


def decode_records(decoder: Decoder, records: list[tuple[int, bytes]]) -> list[Event]:
    """Perf records (cpu, data) in arrival order -> events, CPUs merged by timestamp.

    A record's data can be longer than its event (perf pads raw samples to 8 bytes with the size
    word): the event's own hdr.len says where it ends.
    """
    per_cpu: dict[int, list[Event]] = {}
    for cpu, data in records:
        length = decoder.header.unpack_from(data)[3] if len(data) >= decoder.header.size else -1
        if not decoder.header.size <= length <= len(data):
            raise ValueError(f"perf record of {len(data)} bytes on CPU {cpu} holds no whole event (hdr.len {length})")
        event, _length = decoder.decode(data, 0, cpu)
        per_cpu.setdefault(cpu, []).append(event)
    return list(heapq.merge(*per_cpu.values(), key=lambda e: e.ts_ns))


def _membarrier_nr() -> int | None:
    try:
        from harness.guest.workload import syscall_table

        return syscall_table(os.uname().machine).get("membarrier")
    except (OSError, ValueError, KeyError):
        return None


class LegacyBpfDevice:
    """The legacy probe loaded through libbpf, consumed like /dev/kmx."""

    def __init__(
        self,
        schema: Schema,
        path: str = DEFAULT_OBJECT,
        *,
        buffer_bytes: int = 8 << 20,
        snaplen: int | None = None,
        log: Callable[[str], None] | None = None,
        bpf_stats: bool = True,
        redact_keys: tuple[bytes, ...] = (),
    ) -> None:
        self.schema = schema
        self.redact_keys = tuple(redact_keys)  # () : redaction off (harness.guest.redaction.parse_keys)
        self.path = path
        self.decoder = Decoder(schema)
        self.lines: list[str] = []
        self.log = log or self.lines.append
        self.possible = _read_cpus("possible")
        self.ncpus = max(self.possible) + 1 if self.possible else 1
        self.snaplen_max = schema.const("KMX_SNAPLEN_MAX")
        self._filter = 0
        self._sample_every = 1
        self._snaplen = clamp_snaplen(snaplen or schema.const("KMX_SNAPLEN_DEFAULT"), self.snaplen_max)
        self._capturing = False
        self._records: list[tuple[int, bytes]] = []
        self._discard = False
        self.lost: dict[int, int] = {}  # perf's own lost-record reports per CPU (for diagnosis)
        self.bpf_stats = set_bpf_stats(True) if bpf_stats else False
        started = time.monotonic()
        self.obj = BpfObject(path, self.log)
        try:
            self.obj.load()
            self.load_seconds = round(time.monotonic() - started, 6)
            self._write_config()
            self.pages = perf_pages(buffer_bytes)
            self.perf = self.obj.perf_buffer(MAP_EVENTS, self.pages, self._on_event, self._on_lost)
        except BaseException:
            self.obj.close()
            raise
        self.info = DeviceInfo(
            schema.const("KMX_SCHEMA_VERSION"), self.ncpus, self.pages * PAGE, 0, self._snaplen, False
        )

    # -- perf buffer callbacks ---------------------------------------------------------------------
    def _on_event(self, cpu: int, data: bytes) -> None:
        if not self._discard:
            self._records.append((cpu, data))

    def _on_lost(self, cpu: int, count: int) -> None:
        self.lost[cpu] = self.lost.get(cpu, 0) + count

    # -- configuration -----------------------------------------------------------------------------
    def _write_config(self) -> None:
        keys = self.redact_keys
        lengths = [len(key) for key in keys] + [0] * (4 - len(keys))
        table = b"".join(key.ljust(16, b"\0") for key in keys)
        self.obj.update_array(
            MAP_CONFIG, 0, CONFIG.pack(self._filter, self._snaplen, int(self._capturing), self._sample_every, 0,
                                       len(keys), *lengths, table, 0)
        )

    def _refresh_info(self) -> None:
        self.info = DeviceInfo(
            self.info.schema_version, self.info.ncpus, self.info.buffer_bytes, 0, self._snaplen, self._capturing
        )

    def set_snaplen(self, snaplen: int) -> None:
        self._snaplen = clamp_snaplen(snaplen, self.snaplen_max)
        self._write_config()
        self._refresh_info()

    def set_filter_tgid(self, tgid: int) -> None:
        self._filter = int(tgid)
        self._write_config()

    def set_sampling(self, every: int) -> None:
        """Keep 1 in `every` syscalls (enter and exit together); 0 or 1 keeps all."""
        self._sample_every = max(0, int(every))
        self._write_config()

    def _synchronize(self) -> None:
        """Wait until no probe that read the old config is still running (the module's STOP does too)."""
        nr = _membarrier_nr()
        if nr is not None:
            libc = ctypes.CDLL(None, use_errno=True)
            if (
                libc.syscall(ctypes.c_long(nr), ctypes.c_int(MEMBARRIER_CMD_GLOBAL), ctypes.c_uint(0), ctypes.c_int(0))
                == 0
            ):
                return
        time.sleep(0.05)

    def start(self) -> None:
        """Empty the perf rings, zero the counters, then capture (as the module's START)."""
        if self._capturing:
            return
        self._discard = True
        try:
            self.perf.consume()
        finally:
            self._discard = False
        self._records.clear()
        self.lost.clear()
        stride = (STATS.size + 7) // 8 * 8
        self.obj.update_array(MAP_STATS, 0, bytes(stride * self.ncpus))
        self._capturing = True
        self._write_config()
        self.obj.attach_all()
        self._refresh_info()

    def stop(self) -> None:
        if not self._capturing:
            return
        self._capturing = False
        self._write_config()
        self.obj.detach_all()
        self._synchronize()
        self._refresh_info()

    # -- reading -----------------------------------------------------------------------------------
    def poll(self, timeout_ms: int = 0) -> int:
        """Read what is ready now (or within timeout_ms) into the pending events; how many records."""
        before = len(self._records)
        self.perf.poll(timeout_ms)
        self.perf.consume()
        return len(self._records) - before

    def consume_counts(self, limit: int | None = None) -> tuple[int, int, float | None]:
        """Throughput: consume every CPU's records without copying them (perf buffers cannot stop
        after `limit`, and libbpf shows no fill level): events and bytes."""
        del limit
        self.perf.counting = True
        events, nbytes = self.perf.count, self.perf.count_bytes
        self.perf.consume()
        return self.perf.count - events, self.perf.count_bytes - nbytes, None

    def drain(self) -> list[Event]:
        """Every CPU's events so far, merged by timestamp (each CPU's own stream is already in order)."""
        self.perf.consume()
        records, self._records = self._records, []
        return decode_records(self.decoder, records)

    def stats(self) -> list[CpuStats]:
        stride = (STATS.size + 7) // 8 * 8
        raw = self.obj.lookup_array(MAP_STATS, 0, stride * self.ncpus)
        return parse_stats(raw, self.ncpus, set(_read_cpus("online")))

    def prog_stats(self) -> list[dict[str, Any]]:
        """Per program: run count and run time (kernel.bpf_stats_enabled), verifier-reported size."""
        return self.obj.prog_stats()

    @property
    def load_info(self) -> dict[str, Any]:
        return self.obj.load_info

    def details(self) -> dict[str, Any]:
        """For the cell's results: load time, verifier-reported sizes, run counts, perf's lost reports."""
        programs: dict[str, Any] = {}
        try:
            for entry in self.prog_stats():
                programs[entry["name"]] = {k: v for k, v in entry.items() if k != "name"}
        except Exception as error:  # BpfError, or a kernel without bpf_prog_info fields: report, never fail
            programs = {"error": f"{type(error).__name__}: {error}"}
        sections = self.load_info.get("programs", {})
        return {
            "object": self.path,
            "load_s": self.load_seconds,
            "libbpf": self.load_info.get("libbpf"),
            "attach": sorted({str(p.get("section")) for p in sections.values()}),
            "programs": programs,
            "perf_pages_per_cpu": self.pages,
            "perf_lost": dict(self.lost),
        }

    def close(self) -> None:
        if self._capturing:
            self.stop()
        self.obj.close()
        if self.bpf_stats:
            set_bpf_stats(False)
