"""User side of the kernel module: /dev/kmx ioctls and the per-CPU mmap'd ring buffers."""

from __future__ import annotations

import fcntl
import heapq
import mmap
import os
import struct

from harness.guest.record import record
from harness.guest.schema import Decoder, Event, Schema

_INFO = struct.Struct("=IIQQII")
_STATS = struct.Struct("=IIQQQ")
_U64 = struct.Struct("=Q")
_LEN_TYPE = struct.Struct("=IH")  # kmx_event_hdr.len and .type, at offset 24
_TAIL = struct.Struct("=IIQ")  # struct kmx_tail


def ioctl_number(machine: str, direction: str, magic: int, nr: int, size: int) -> int:
    """_IOC() as the target's kernel computes it (powerpc uses other direction bits and a 13-bit size)."""
    if machine.startswith(("ppc", "powerpc")):
        none, write, read, size_bits = 1, 4, 2, 13
    else:
        none, write, read, size_bits = 0, 1, 2, 14
    bits = {"": none, "w": write, "r": read, "rw": read | write}[direction]
    return (bits << (16 + size_bits)) | (size << 16) | (magic << 8) | nr


@record
class DeviceInfo:
    schema_version: int
    ncpus: int
    buffer_bytes: int
    map_stride: int
    snaplen: int
    capturing: bool


@record
class CpuStats:
    cpu: int
    online: bool
    events: int
    drops: int
    bytes: int


class KmxDevice:
    def __init__(self, schema: Schema, path: str = "/dev/kmx") -> None:
        self.schema = schema
        self.machine = os.uname().machine
        try:
            self.fd = os.open(path, os.O_RDWR)
            self.read_only = False
        except PermissionError:
            # A member of the device's group (device_gid): read-only, the tail goes back by ioctl.
            self.fd = os.open(path, os.O_RDONLY)
            self.read_only = True
        self.decoder = Decoder(schema)
        self.ctrl = schema.const("KMX_CTRL_SIZE")
        self.info = self.get_info()
        self.maps: dict[int, mmap.mmap] = {}
        for cpu in range(self.info.ncpus):
            try:
                self.maps[cpu] = mmap.mmap(
                    self.fd, self.ctrl + self.info.buffer_bytes, offset=cpu * self.info.map_stride,
                    prot=mmap.PROT_READ if self.read_only else mmap.PROT_READ | mmap.PROT_WRITE,
                )
            except OSError:
                continue  # a possible but absent CPU has no buffer
        self.pad_type = schema.const("KMX_EVT_PAD")
        self.header_size = schema.const("KMX_HDR_SIZE")

    def _nr(self, name: str, direction: str, size: int) -> int:
        return ioctl_number(
            self.machine, direction, self.schema.const("KMX_IOCTL_MAGIC"), self.schema.const(f"KMX_IOCTL_{name}"), size
        )

    def get_info(self) -> DeviceInfo:
        buf = bytearray(_INFO.size)
        fcntl.ioctl(self.fd, self._nr("GET_INFO", "r", _INFO.size), buf, True)
        version, ncpus, size, stride, snaplen, capturing = _INFO.unpack(buf)
        return DeviceInfo(version, ncpus, size, stride, snaplen, bool(capturing))

    def start(self) -> None:
        fcntl.ioctl(self.fd, self._nr("START", "", 0))

    def stop(self) -> None:
        fcntl.ioctl(self.fd, self._nr("STOP", "", 0))

    def set_snaplen(self, snaplen: int) -> None:
        fcntl.ioctl(self.fd, self._nr("SET_SNAPLEN", "w", 4), struct.pack("=I", snaplen))

    def set_filter_tgid(self, tgid: int) -> None:
        fcntl.ioctl(self.fd, self._nr("SET_FILTER_TGID", "w", 8), _U64.pack(tgid))

    def set_sampling(self, every: int) -> None:
        """Keep 1 in `every` syscalls (enter and exit together); 0 or 1 keeps all."""
        fcntl.ioctl(self.fd, self._nr("SET_SAMPLING", "w", 4), struct.pack("=I", every))

    def stats(self) -> list[CpuStats]:
        result = []
        for cpu in range(self.info.ncpus):
            buf = bytearray(_STATS.pack(cpu, 0, 0, 0, 0))
            fcntl.ioctl(self.fd, self._nr("GET_STATS", "rw", _STATS.size), buf, True)
            values = _STATS.unpack(buf)
            result.append(CpuStats(values[0], bool(values[1]), values[2], values[3], values[4]))
        return result

    def _give_back(self, cpu: int, area: mmap.mmap, tail: int) -> None:
        """Publish the consumer's tail: a store into the control page, or SET_TAIL when mapped read-only."""
        if self.read_only:
            fcntl.ioctl(self.fd, self._nr("SET_TAIL", "w", _TAIL.size), _TAIL.pack(cpu, 0, tail))
        else:
            _U64.pack_into(area, 8, tail)

    def drain_cpu(self, cpu: int, limit: int | None = None) -> list[Event]:
        """Read what the producer has published on one CPU and give the space back."""
        area = self.maps[cpu]
        size = self.info.buffer_bytes
        head = _U64.unpack_from(area, 0)[0]
        tail = _U64.unpack_from(area, 8)[0]
        events: list[Event] = []
        while tail != head and (limit is None or len(events) < limit):
            if size - tail < self.header_size:
                tail = 0
                continue
            kind = struct.unpack_from("=H", area, self.ctrl + tail + 28)[0]
            if kind == self.pad_type:
                tail = 0
                continue
            event, length = self.decoder.decode(area, self.ctrl + tail, cpu)
            events.append(event)
            tail = (tail + length) % size
        self._give_back(cpu, area, tail)
        return events

    def consume_counts(self, limit: int | None = None) -> tuple[int, int, float]:
        """Give back what the producers published without decoding it (throughput): events and bytes
        consumed (at most `limit` events per CPU), and the fullest ring's fill (0..1) before."""
        size = self.info.buffer_bytes
        events = nbytes = 0
        fill = 0.0
        for cpu, area in self.maps.items():
            head = _U64.unpack_from(area, 0)[0]
            tail = _U64.unpack_from(area, 8)[0]
            fill = max(fill, ((head - tail) % size) / size)
            taken = 0
            while tail != head and (limit is None or taken < limit):
                if size - tail < self.header_size:
                    tail = 0
                    continue
                length, kind = _LEN_TYPE.unpack_from(area, self.ctrl + tail + 24)
                if kind == self.pad_type:
                    tail = 0
                    continue
                taken += 1
                nbytes += length
                tail = (tail + length) % size
            self._give_back(cpu, area, tail)
            events += taken
        return events, nbytes, fill

    def drain(self) -> list[Event]:
        """Every CPU's events, merged by timestamp (each CPU's own stream is already in order)."""
        return list(heapq.merge(*(self.drain_cpu(cpu) for cpu in self.maps), key=lambda e: e.ts_ns))

    def close(self) -> None:
        for area in self.maps.values():
            area.close()
        self.maps.clear()
        os.close(self.fd)
