"""User side of the modern BPF probe (drivers/modern_bpf): the same methods as kmxdev.KmxDevice.

The probe's configuration (snapshot length, target tgid, sampling) is `const volatile` data in
the object's .rodata, fixed when the object is loaded. So the object is loaded at start() with
the configuration set so far; set_snaplen / set_filter_tgid between captures take effect at the
next start() (the object is loaded again when they changed), and raise while capturing. The
constructor takes them and loads at once (load=False defers loading to start()).

Capturing is attaching the two programs (start) and detaching them (stop); events arrive in one
BPF ring buffer (not per CPU, so Event.cpu is -1) and drain() returns them ordered by timestamp.
Drops and counts are per CPU, from the probe's `counters` per-CPU array.
"""

from __future__ import annotations

import os
import struct

from harness.guest.bpfload import BpfError, BpfObject, libbpf, set_bpf_stats
from harness.guest.kmxdev import CpuStats, DeviceInfo
from harness.guest.schema import Decoder

TYPE_CHECKING = False  # typing stays out of the guest image; mypy reads the branch below
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from harness.guest.schema import Event, Schema

DEFAULT_OBJECT = "/opt/kmatrix/drivers/kmx_modern.bpf.o"
RING_MAP = "events"
COUNTERS_MAP = "counters"
# struct kmx_modern_config and struct kmx_modern_counters (drivers/modern_bpf/kmx_modern.h)
CONFIG = struct.Struct("=III4I64s")  # struct kmx_modern_config
FILTER_MAP = "filter"  # one __u64: the target tgid, written at any time
COUNTERS = struct.Struct("=QQQQQ")
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def ring_size(requested: int) -> int:
    """A BPF ring buffer's size: a power of two, at least one page."""
    size = max(PAGE, int(requested))
    return 1 << (size - 1).bit_length()


def online_cpus(text: str | None = None) -> set[int]:
    """CPUs listed in /sys/devices/system/cpu/online ("0-3,5")."""
    if text is None:
        try:
            with open("/sys/devices/system/cpu/online") as handle:
                text = handle.read()
        except OSError:
            return set(range(os.cpu_count() or 1))
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


class ModernBpfDevice:
    """The modern probe loaded through libbpf, consumed like /dev/kmx."""

    def __init__(self, schema: Schema, path: str = DEFAULT_OBJECT, *, snaplen: int | None = None,
                 filter_tgid: int = 0, sample_every: int = 1, buffer_bytes: int = 8 << 20,
                 log: Callable[[str], None] | None = None, load: bool = True, bpf_stats: bool = True,
                 redact_keys: tuple[bytes, ...] = ()) -> None:
        self.schema = schema
        self.path = path
        self.decoder = Decoder(schema)
        self.lines: list[str] = []
        self.log = log or self.lines.append
        self.snaplen = self._clamp(schema.const("KMX_SNAPLEN_DEFAULT") if snaplen is None else snaplen)
        self.filter_tgid = int(filter_tgid)
        self.sample_every = max(1, int(sample_every))
        self.redact_keys = tuple(redact_keys)  # () : redaction off (harness.guest.redaction.parse_keys)
        self.buffer_bytes = ring_size(buffer_bytes)
        self.bpf_stats = set_bpf_stats(True) if bpf_stats else False
        self.ncpus = int(libbpf().libbpf_num_possible_cpus())
        self.obj: BpfObject | None = None
        self._loaded_config: tuple[Any, ...] | None = None
        self._ring: Any = None
        self._pending: list[bytes] = []
        self.capturing = False
        self.loads: list[dict[str, Any]] = []  # load_info of every load (verifier stats, seconds)
        if load:
            self.load()

    # -- configuration ---------------------------------------------------------------------
    def _clamp(self, value: int) -> int:
        return max(1, min(int(value), self.schema.const("KMX_SNAPLEN_MAX")))

    @property
    def config(self) -> tuple[Any, ...]:
        """What is read-only data of a loaded object (a change reloads it at the next start)."""
        keys = self.redact_keys
        lengths = [len(key) for key in keys] + [0] * (4 - len(keys))
        table = b"".join(key.ljust(16, b"\0") for key in keys).ljust(64, b"\0")
        return (self.snaplen, self.sample_every, len(keys), *lengths, table)

    def _set(self, name: str, value: int) -> None:
        if self.capturing and getattr(self, name) != value:
            raise BpfError(f"{name} is read-only data of the loaded probe: stop() first; "
                           "it applies at the next start()")
        setattr(self, name, value)

    def set_snaplen(self, snaplen: int) -> None:
        self._set("snaplen", self._clamp(snaplen))

    def set_filter_tgid(self, tgid: int) -> None:
        """Applies at once, even while capturing (the `filter` map, not read-only data)."""
        self.filter_tgid = int(tgid)
        if self.obj is not None:
            self.obj.update_array(FILTER_MAP, 0, struct.pack("=Q", self.filter_tgid))

    def set_sample_every(self, every: int) -> None:
        self._set("sample_every", max(1, int(every)))

    def set_sampling(self, every: int) -> None:
        """Keep 1 in `every` syscalls (the consumers' common name; applied at the next load)."""
        self.set_sample_every(every)

    @property
    def info(self) -> DeviceInfo:
        return DeviceInfo(self.schema.const("KMX_SCHEMA_VERSION"), self.ncpus, self.buffer_bytes, 0,
                             self.snaplen, self.capturing)

    def get_info(self) -> DeviceInfo:
        return self.info

    # -- load ------------------------------------------------------------------------------
    def load(self) -> dict[str, Any]:
        """(Re)load the object with the current configuration: its load_info."""
        self._unload()
        obj = BpfObject(self.path, self.log)
        try:
            obj.set_rodata(CONFIG.pack(*self.config))
            obj.set_max_entries(RING_MAP, self.buffer_bytes)
            obj.load()
            obj.update_array(FILTER_MAP, 0, struct.pack("=Q", self.filter_tgid))
            self._ring = obj.ring_buffer(RING_MAP, self._pending.append)
        except BaseException:
            obj.close()
            raise
        self.obj = obj
        self._loaded_config = self.config
        self.loads.append(obj.load_info)
        return obj.load_info

    def _unload(self) -> None:
        if self.obj is not None:
            self.obj.close()  # frees the ring consumer and detaches too
        self.obj, self._ring, self._loaded_config = None, None, None
        self.capturing = False

    @property
    def load_info(self) -> dict[str, Any]:
        return self.obj.load_info if self.obj is not None else {}

    # -- capture ---------------------------------------------------------------------------
    def start(self) -> None:
        """Empty the ring, zero the counters, attach (loading again first if the configuration changed)."""
        if self.capturing:
            return
        if self.obj is None or self._loaded_config != self.config:
            self.load()
        assert self.obj is not None and self._ring is not None
        self._ring.consume()
        self._pending.clear()
        zero = COUNTERS.pack(0, 0, 0, 0, 0) * self.ncpus
        self.obj.update_array(COUNTERS_MAP, 0, zero)
        self.obj.attach_all()
        self.capturing = True

    def stop(self) -> None:
        """Detach both programs: no new events after this returns (one in flight still lands in the ring)."""
        if self.obj is not None and self.capturing:
            self.obj.detach_all()
        self.capturing = False

    def consume_counts(self, limit: int | None = None) -> tuple[int, int, float | None]:
        """Throughput: consume records without copying them; events, bytes, and the ring's fill before."""
        ring = self._ring
        if ring is None:
            return 0, 0, None
        ring.counting = True
        fill = ring.fill()
        events, nbytes = ring.count, ring.count_bytes
        if limit:
            ring.consume_n(limit)
        else:
            ring.consume()
        return ring.count - events, ring.count_bytes - nbytes, fill

    def drain_raw(self) -> list[bytes]:
        """Every record in the ring now, as bytes, in ring order."""
        if self._ring is not None:
            self._ring.consume()
        records, self._pending[:] = list(self._pending), []
        return records

    def drain(self) -> list[Event]:
        """Every event in the ring, decoded, ordered by timestamp (ring order among equals)."""
        events = [self.decoder.decode(record, 0)[0] for record in self.drain_raw()]
        events.sort(key=lambda e: e.ts_ns)
        return events

    def stats(self) -> list[CpuStats]:
        if self.obj is None:
            return [CpuStats(cpu, cpu in online_cpus(), 0, 0, 0) for cpu in range(self.ncpus)]
        raw = self.obj.lookup_array(COUNTERS_MAP, 0, COUNTERS.size * self.ncpus)
        online = online_cpus()
        result = []
        for cpu in range(self.ncpus):
            events, drops, nbytes, _seen, _sampled_out = COUNTERS.unpack_from(raw, cpu * COUNTERS.size)
            result.append(CpuStats(cpu, cpu in online, events, drops, nbytes))
        return result

    def sampled_out(self) -> int:
        if self.obj is None:
            return 0
        raw = self.obj.lookup_array(COUNTERS_MAP, 0, COUNTERS.size * self.ncpus)
        return sum(COUNTERS.unpack_from(raw, cpu * COUNTERS.size)[4] for cpu in range(self.ncpus))

    def prog_stats(self) -> list[dict[str, Any]]:
        """Per program: run count and time (kernel.bpf_stats_enabled), verifier-reported size."""
        return self.obj.prog_stats() if self.obj is not None else []

    def details(self) -> dict[str, Any]:
        """For the cell's results: loads (verifier-reported insns, seconds), per-program run stats, ring."""
        return {
            "libbpf": self.loads[-1].get("libbpf") if self.loads else None,
            "loads": self.loads,
            "prog_stats": self.prog_stats(),
            "bpf_stats_enabled": self.bpf_stats,
            "ring_bytes": self.buffer_bytes,
            "config": {"snaplen": self.snaplen, "sample_every": self.sample_every, "filter_tgid": self.filter_tgid},
            "sampled_out": self.sampled_out(),
            "log_warnings": [line for line in self.lines if line.startswith("warn")][-20:],
        }

    def close(self) -> None:
        self.stop()
        self._unload()
        if self.bpf_stats:
            set_bpf_stats(False)
