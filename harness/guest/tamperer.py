"""Another process tampering with the agent's driver, for the tamper suite (runs as its own process).

argv: ACTION [ARG]. Actions: rmmod NAME, rmmod-force NAME, rm-device PATH, stop-capture PATH (open
/dev/kmx and ioctl STOP), detach-links PREFIX and replace-programs PREFIX (every BPF link whose
program's name starts with PREFIX: BPF_LINK_DETACH, or BPF_LINK_UPDATE to the same program),
retarget PREFIX (the maps of those programs that hold the target process, `filter` of the modern
probe and `kmx_config` of the legacy one, rewritten to follow a pid that cannot exist).
Prints one JSON line: {"done": bool, "detail": what happened, "errno": E or null}.
"""

from __future__ import annotations

import ctypes
import errno as errno_names
import fcntl
import json
import os
import subprocess
import sys

LINK_INFO = 64  # bytes of struct bpf_link_info read: type, id, prog_id, ...
PROG_INFO = 256  # struct bpf_prog_info: name[16] at offset 64
PROG_NAME_OFFSET = 64


def _result(done: bool, detail: str, code: int | None = None) -> int:
    print(json.dumps({"done": done, "detail": detail, "errno": code}))
    return 0


def _run(argv: list[str]) -> int:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    text = (done.stdout + done.stderr).strip()
    return _result(done.returncode == 0, f"{' '.join(argv)}: exit {done.returncode} {text}".strip())


def _stop_capture(path: str) -> int:
    from harness.guest.kmxdev import ioctl_number
    from harness.guest.schema import load_schema

    schema = load_schema()
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, ioctl_number(os.uname().machine, "", schema.const("KMX_IOCTL_MAGIC"),
                                     schema.const("KMX_IOCTL_STOP"), 0))
    finally:
        os.close(fd)
    return _result(True, f"ioctl STOP on {path}")


def _kmx_links(lib: ctypes.CDLL, prefix: str) -> list[tuple[int, int, int]]:
    """(link id, link fd, prog id) of every link whose program is named PREFIX..."""
    found = []
    link_id = ctypes.c_uint32(0)
    while lib.bpf_link_get_next_id(link_id, ctypes.byref(link_id)) == 0:
        fd = lib.bpf_link_get_fd_by_id(link_id)
        if fd < 0:
            continue
        info = (ctypes.c_uint8 * LINK_INFO)()
        size = ctypes.c_uint32(LINK_INFO)
        if lib.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)) != 0:
            os.close(fd)
            continue
        prog_id = int.from_bytes(bytes(info[8:12]), sys.byteorder)
        prog_fd = lib.bpf_prog_get_fd_by_id(prog_id)
        name = b""
        if prog_fd >= 0:
            pinfo = (ctypes.c_uint8 * PROG_INFO)()
            psize = ctypes.c_uint32(PROG_INFO)
            if lib.bpf_obj_get_info_by_fd(prog_fd, pinfo, ctypes.byref(psize)) == 0:
                name = bytes(pinfo[PROG_NAME_OFFSET:PROG_NAME_OFFSET + 16]).split(b"\0", 1)[0]
            os.close(prog_fd)
        if name.decode(errors="replace").startswith(prefix):
            found.append((link_id.value, fd, prog_id))
        else:
            os.close(fd)
    return found


MAP_IDS_MAX = 16
NO_PID = (1 << 22) + 1  # above PID_MAX_LIMIT: a process (and parent) that cannot exist
MAP_NAME_OFFSET = 24  # struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags, name[16]


def _map_ids(lib: ctypes.CDLL, prog_fd: int) -> list[int]:
    """The ids of the maps a program uses (struct bpf_prog_info nr_map_ids at 52, map_ids at 56)."""
    ids = (ctypes.c_uint32 * MAP_IDS_MAX)()
    info = (ctypes.c_uint8 * PROG_INFO)()
    ctypes.memmove(ctypes.addressof(info) + 52, ctypes.byref(ctypes.c_uint32(MAP_IDS_MAX)), 4)
    ctypes.memmove(ctypes.addressof(info) + 56, ctypes.byref(ctypes.c_uint64(ctypes.addressof(ids))), 8)
    size = ctypes.c_uint32(PROG_INFO)
    if lib.bpf_obj_get_info_by_fd(prog_fd, info, ctypes.byref(size)) != 0:
        return []
    count = min(int.from_bytes(bytes(info[52:56]), sys.byteorder), MAP_IDS_MAX)
    return [ids[i] for i in range(count)]


def _retarget(prefix: str) -> int:
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    done: list[str] = []
    for _link_id, fd, prog_id in _kmx_links(lib, prefix):
        os.close(fd)
        prog_fd = lib.bpf_prog_get_fd_by_id(prog_id)
        for map_id in _map_ids(lib, prog_fd):
            map_fd = lib.bpf_map_get_fd_by_id(map_id)
            info = (ctypes.c_uint8 * 80)()
            size = ctypes.c_uint32(80)
            lib.bpf_obj_get_info_by_fd(map_fd, info, ctypes.byref(size))
            name = bytes(info[MAP_NAME_OFFSET:MAP_NAME_OFFSET + 16]).split(b"\0", 1)[0].decode(errors="replace")
            value_size = int.from_bytes(bytes(info[12:16]), sys.byteorder)
            if name in ("filter", "kmx_config") and f"map {map_id}" not in " ".join(done):
                key = ctypes.c_uint32(0)
                value = (ctypes.c_uint8 * value_size)()
                lib.bpf_map_lookup_elem(map_fd, ctypes.byref(key), value)
                ctypes.memmove(value, ctypes.byref(ctypes.c_uint64(NO_PID)), 8)  # the first field: the target tgid
                ret = lib.bpf_map_update_elem(map_fd, ctypes.byref(key), value, ctypes.c_uint64(0))
                done.append(f"map {map_id} {name}: {'ok' if ret == 0 else errno_names.errorcode.get(-ret, ret)}")
            os.close(map_fd)
        os.close(prog_fd)
    ok = bool(done) and all(item.endswith("ok") for item in done)
    return _result(ok, f"retarget: {', '.join(done) or 'no filter map found'}")


def _links(action: str, prefix: str) -> int:
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    links = _kmx_links(lib, prefix)
    if not links:
        return _result(False, f"no BPF link whose program starts with {prefix!r}")
    outcomes, codes = [], []
    for link_id, fd, prog_id in links:
        if action == "detach-links":
            ret = lib.bpf_link_detach(fd)
        else:
            prog_fd = lib.bpf_prog_get_fd_by_id(prog_id)
            ret = lib.bpf_link_update(fd, prog_fd, None)
            os.close(prog_fd)
        code = -ret if ret < 0 else 0
        codes.append(code)
        outcomes.append(f"link {link_id}: {'ok' if code == 0 else errno_names.errorcode.get(code, code)}")
        os.close(fd)
    refused = next((c for c in codes if c), None)
    return _result(refused is None, f"{action}: {', '.join(outcomes)}", refused)


def main() -> int:
    action, arg = sys.argv[1], sys.argv[2]
    try:
        if action == "rmmod":
            return _run(["rmmod", arg])
        if action == "rmmod-force":
            return _run(["rmmod", "-f", arg])
        if action == "rm-device":
            os.unlink(arg)
            return _result(True, f"removed {arg}")
        if action == "stop-capture":
            return _stop_capture(arg)
        if action in ("detach-links", "replace-programs"):
            return _links(action, arg)
        if action == "retarget":
            return _retarget(arg)
    except OSError as error:
        return _result(False, f"{action} {arg}: {error}", error.errno)
    return _result(False, f"unknown action {action}")


if __name__ == "__main__":
    sys.exit(main())
