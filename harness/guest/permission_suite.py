"""The permission suite, guest side: who may read a driver besides root.

kmod: the module is loaded with device_gid=KMX_GROUP (device_mode stays its default, 0640);
/dev/kmx must be root:KMX_GROUP 0640, an unprivileged user outside the group must get EACCES
opening it, and one in the group must capture its own syscalls (read-only mapping, tail given back
with SET_TAIL).
BPF probes: an unprivileged user must get EPERM loading either probe; the modern probe must load
and capture for an unprivileged user holding exactly CAP_BPF and CAP_PERFMON as ambient
capabilities (set here, before exec, as an agent dropping root would), on kernels >= 5.8.
Each attempt is a separate process (harness.guest.permission_probe) started as that user.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import stat
import subprocess
import sys

from harness.guest.capture import load_module, module_name, refuse_outside_guest, unload_module

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

USER = 4201  # an unprivileged uid and gid no file in the guest belongs to
KMX_GROUP = 4242
CAP_PERFMON, CAP_BPF = 38, 39
PR_SET_KEEPCAPS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 8, 47, 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _capset(caps: list[int]) -> None:
    """Effective, permitted and inheritable = caps (the calling thread)."""
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    for cap in caps:
        word, bit = divmod(cap, 32)
        for field in range(3):  # effective, permitted, inheritable of that word
            data[word * 3 + field] |= 1 << bit
    if _libc().capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def drop_to(user: int, groups: list[int], caps: list[int]) -> Callable[[], None]:
    """A preexec_fn: become `user` with `groups`, keeping exactly `caps` across exec as ambient ones."""
    def drop() -> None:
        libc = _libc()
        # BPF maps and programs count against RLIMIT_MEMLOCK before 5.11; only root may raise it.
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        if caps and libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_KEEPCAPS)")
        os.setgroups(groups)
        os.setgid(user)
        os.setuid(user)
        if caps:
            _capset(caps)
            for cap in caps:
                if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), f"prctl(PR_CAP_AMBIENT_RAISE, {cap})")
    return drop


def attempt(driver: str, artifact: str, groups: list[int], caps: list[int]) -> dict[str, Any]:
    """Run the probe as USER with groups and caps; its JSON line."""
    done = subprocess.run([sys.executable, "-S", "-m", "harness.guest.permission_probe", driver, artifact],
                          capture_output=True, text=True, timeout=120, check=False,
                          preexec_fn=drop_to(USER, groups, caps), env={**os.environ, "HOME": "/tmp"})
    line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    try:
        reply: dict[str, Any] = json.loads(line)
    except ValueError:
        return {"ok": False, "errno": None, "error": f"probe exited {done.returncode}: {done.stderr.strip()[-400:]}"}
    return reply


def _expect_refused(name: str, got: dict[str, Any], errnos: tuple[int, ...], mismatches: list[dict[str, Any]]) -> None:
    names = {1: "EPERM", 13: "EACCES"}
    refused = not got.get("ok") and (got.get("errno") in errnos
                                     or any(names[e] in str(got.get("error")) for e in errnos))
    if not refused:
        mismatches.append({"call": name, "tid": 0, "what": "refused",
                           "expected": " or ".join(names[e] for e in errnos), "got": got})


def _expect_captured(name: str, got: dict[str, Any], mismatches: list[dict[str, Any]]) -> None:
    from harness.guest.permission_probe import CALLS

    if not got.get("ok") or got.get("events", 0) < 2 * CALLS:
        mismatches.append({"call": name, "tid": 0, "what": "captured as an unprivileged user",
                           "expected": f">= {2 * CALLS} events of its own", "got": got})


def op_permissions(request: dict[str, Any]) -> dict[str, Any]:
    """Request: driver, artifact. Result: each attempt (who, what happened) and the verdict."""
    refuse_outside_guest()
    driver, artifact = str(request.get("driver", "kmod")), str(request["artifact"])
    attempts: dict[str, Any] = {}
    mismatches: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    if driver == "kmod":
        load_module(artifact, {"device_gid": KMX_GROUP})
        try:
            node = os.stat("/dev/kmx")
            extra["device"] = {"uid": node.st_uid, "gid": node.st_gid, "mode": oct(stat.S_IMODE(node.st_mode))}
            if (node.st_uid, node.st_gid, stat.S_IMODE(node.st_mode)) != (0, KMX_GROUP, 0o640):
                mismatches.append({"call": "/dev/kmx", "tid": 0, "what": "owner, group and mode",
                                   "expected": f"0:{KMX_GROUP} 0o640", "got": extra["device"]})
            attempts["user"] = attempt(driver, "/dev/kmx", [], [])
            _expect_refused("user", attempts["user"], (13,), mismatches)
            attempts["user in group"] = attempt(driver, "/dev/kmx", [KMX_GROUP], [])
            _expect_captured("user in group", attempts["user in group"], mismatches)
            if attempts["user in group"].get("ok") and not attempts["user in group"].get("read_only"):
                mismatches.append({"call": "user in group", "tid": 0, "what": "read-only open",
                                   "expected": True, "got": attempts["user in group"].get("read_only")})
        finally:
            problem = unload_module(module_name(artifact))
            if problem:
                print(f"rmmod: {problem}", file=sys.stderr)
    else:
        attempts["user"] = attempt(driver, artifact, [], [])
        _expect_refused("user", attempts["user"], (1, 13), mismatches)
        attempts["user with CAP_BPF, CAP_PERFMON"] = attempt(driver, artifact, [], [CAP_BPF, CAP_PERFMON])
        if driver == "modern_bpf":
            _expect_captured("user with CAP_BPF, CAP_PERFMON", attempts["user with CAP_BPF, CAP_PERFMON"], mismatches)
            caps = attempts["user with CAP_BPF, CAP_PERFMON"].get("cap_eff", "")
            wanted = f"{(1 << CAP_BPF) | (1 << CAP_PERFMON):016x}"
            if caps and caps != wanted:
                mismatches.append({"call": "user with CAP_BPF, CAP_PERFMON", "tid": 0, "what": "effective capabilities",
                                   "expected": wanted, "got": caps})
    return {
        "passed": not mismatches,
        "attempts": attempts,
        **extra,
        "expected_calls": len(attempts) + (1 if driver == "kmod" else 0),
        "verified_calls": len(attempts) + (1 if driver == "kmod" else 0) - len({m["call"] for m in mismatches}),
        "mismatches": mismatches,
        "first_mismatch": mismatches[0] if mismatches else None,
    }
