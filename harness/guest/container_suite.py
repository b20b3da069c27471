"""The container suite, guest side: processes in cgroups laid out like each runtime's, in new pid
namespaces, must be attributed to the right container (ID, pod UID) from the driver's events alone;
a process in the root cgroup and the host's pid namespace must be reported as not in a container.

Every process opens its own marker file; the suite finds that openat's enter event (captured for
the whole system), and attributes it from the event header's cgroup id and pid namespace
(harness.guest.containers), comparing with the layout it created.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

from harness.guest.capture import module_loaded, open_consumer, refuse_outside_guest
from harness.guest.containers import CGROUP2_ROOT, CgroupPaths, attribute, host_pidns
from harness.guest.schema import load_schema

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def layouts(token: str) -> list[dict[str, Any]]:
    """(name, cgroup path, expected container) per runtime, IDs and pod UIDs derived from token."""
    def cid(name: str) -> str:
        return hashlib.sha256(f"{name}-{token}".encode()).hexdigest()

    def uid(name: str) -> str:
        h = hashlib.sha256(f"pod-{name}-{token}".encode()).hexdigest()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"

    k8s_cg, k8s_cd, k8s_crio = uid("k8s-cgroupfs"), uid("k8s-containerd"), uid("k8s-crio")
    rows = [
        ("docker-cgroupfs", f"/docker/{cid('docker-cgroupfs')}", "docker", cid("docker-cgroupfs"), None),
        ("docker-systemd", f"/system.slice/docker-{cid('docker-systemd')}.scope", "docker",
         cid("docker-systemd"), None),
        ("kubernetes-cgroupfs", f"/kubepods/besteffort/pod{k8s_cg}/{cid('k8s-cgroupfs')}", "kubernetes",
         cid("k8s-cgroupfs"), k8s_cg),
        ("kubernetes-containerd", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
         f"{k8s_cd.replace('-', '_')}.slice/cri-containerd-{cid('k8s-containerd')}.scope", "containerd",
         cid("k8s-containerd"), k8s_cd),
        ("kubernetes-crio", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
         f"{k8s_crio.replace('-', '_')}.slice/crio-{cid('k8s-crio')}.scope", "crio", cid("k8s-crio"), k8s_crio),
        ("podman", f"/machine.slice/libpod-{cid('podman')}.scope", "podman", cid("podman"), None),
    ]
    out: list[dict[str, Any]] = [
        {"name": name, "cgroup": path, "new_pidns": True,
         "expected": {"in_container": True, "container": {"runtime": runtime, "id": ident, "pod_uid": pod}}}
        for name, path, runtime, ident, pod in rows
    ]
    out.append({"name": "host", "cgroup": "/", "new_pidns": False,
                "expected": {"in_container": False, "container": None}})
    return out


def mount_cgroup2(root: str = CGROUP2_ROOT) -> str:
    """cgroup2 at root (mounted here unless it already is); what was done."""
    with open("/proc/mounts", encoding="utf-8") as mounts:
        if any(line.split()[1:3] == [root, "cgroup2"] for line in mounts):
            return "already mounted"
    os.makedirs(root, exist_ok=True)
    done = subprocess.run(["mount", "-t", "cgroup2", "none", root], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"mount -t cgroup2 {root} failed: {done.stderr.strip()}")
    return "mounted"


def _remove(root: str, path: str) -> None:
    """rmdir path and its now-empty parents up to the root."""
    parts = [p for p in path.split("/") if p]
    for depth in range(len(parts), 0, -1):
        try:
            os.rmdir(os.path.join(root, *parts[:depth]))
        except OSError:
            return


def op_containers(request: dict[str, Any]) -> dict[str, Any]:
    """Request: driver, artifact, token, buffer_bytes. Result: per layout, expected vs attributed."""
    refuse_outside_guest()
    schema = load_schema()
    driver, artifact = str(request.get("driver", "kmod")), str(request["artifact"])
    token = str(request.get("token", os.getpid()))
    buffer_bytes = int(request.get("buffer_bytes", 8 << 20))
    mounted = mount_cgroup2()
    rows = layouts(token)
    for row in rows:
        os.makedirs(CGROUP2_ROOT + row["cgroup"], exist_ok=True)
        row["marker"] = f"/tmp/kmx-container-{row['name']}-{token}"
    try:
        with module_loaded(driver, artifact, buffer_bytes):
            device = open_consumer(schema, driver, artifact, tgid=0, snaplen=256, buffer_bytes=buffer_bytes)
            try:
                device.start()
                for row in rows:
                    done = subprocess.run(
                        [sys.executable, "-S", "-m", "harness.guest.container_workload",
                         CGROUP2_ROOT + row["cgroup"], row["marker"], "1" if row["new_pidns"] else "0"],
                        capture_output=True, text=True, timeout=60, check=False)
                    if done.returncode != 0:
                        raise RuntimeError(f"{row['name']}: container workload failed: {done.stderr.strip()[-500:]}")
                    row["process"] = json.loads(done.stdout)
                time.sleep(0.2)
                device.stop()
                events = device.drain()
            finally:
                device.close()
        return _judge(schema, rows, events, mounted)
    finally:
        for row in rows:
            if row["cgroup"] != "/":
                _remove(CGROUP2_ROOT, row["cgroup"])
            if os.path.exists(row["marker"]):
                os.unlink(row["marker"])


def _judge(schema: Any, rows: list[dict[str, Any]], events: list[Any], mounted: str) -> dict[str, Any]:
    enter = schema.const("KMX_EVT_SYS_ENTER")
    openat = schema.by_name["openat"].id
    paths = CgroupPaths()
    paths.refresh()  # while the layouts' cgroups still exist
    host_ns = host_pidns()
    results, mismatches = [], []
    for row in rows:
        child = int(row["process"]["child"])
        found = next((e for e in events if e.kind == enter and e.sc_id == openat and e.tid == child
                      and len(e.params) > 8 and e.params[8].value == row["marker"]), None)
        if found is None:
            got: dict[str, Any] = {"event": None}
            mismatches.append({"call": row["name"], "tid": child, "what": "openat event of the marker",
                               "expected": row["marker"], "got": "none found"})
        else:
            got = {**attribute(found.cgroup_id, found.pidns, paths, host_ns), "cgroup_id": found.cgroup_id,
                   "pidns": found.pidns}
            for key in ("in_container", "container"):
                if got[key] != row["expected"][key]:
                    mismatches.append({"call": row["name"], "tid": child, "what": key,
                                       "expected": row["expected"][key], "got": got[key]})
            own_ns = found.pidns not in (0, host_ns)
            if own_ns != row["new_pidns"]:
                mismatches.append({"call": row["name"], "tid": child, "what": "pidns",
                                   "expected": "a new pid namespace" if row["new_pidns"] else f"the host's ({host_ns})",
                                   "got": found.pidns})
            if found.cgroup_id == 0:
                mismatches.append({"call": row["name"], "tid": child, "what": "cgroup_id",
                                   "expected": "the task's cgroup v2 id", "got": 0})
        results.append({"name": row["name"], "cgroup": row["cgroup"], "expected": row["expected"], "got": got})
    return {
        "passed": not mismatches,
        "cgroup2": mounted,
        "host_pidns": host_ns,
        "layouts": results,
        "expected_calls": len(rows),
        "verified_calls": len(rows) - len({m["call"] for m in mismatches}),
        "mismatches": mismatches[:10],
        "first_mismatch": mismatches[0] if mismatches else None,
        "events": len(events),
    }
