"""Container attribution: an event's cgroup id and pid namespace -> in_container, runtime, container ID, pod UID.

Every event header carries the task's cgroup v2 id and the inode number of its pid namespace
(drivers/common/kmx_events.h). On 64-bit kernels a cgroup's id is the inode number of its
directory under a cgroup2 mount, so CgroupPaths walks the mount once (and again on a miss) to
turn ids into paths; `parse_cgroup_path` then recognizes the layouts container runtimes create:

    Docker (cgroupfs driver)        /docker/<64 hex>
    Docker (systemd driver)         .../docker-<64 hex>.scope
    Kubernetes (cgroupfs driver)    /kubepods[/<qos>]/pod<uid>/<id>
    Kubernetes (systemd driver)     .../kubepods[-<qos>]-pod<uid with _>.slice/cri-containerd-<id>.scope
                                    (containerd), .../crio-<id>.scope (CRI-O), .../docker-<id>.scope
    containerd (no Kubernetes)      .../cri-containerd-<id>.scope
    CRI-O                           .../crio-<id>.scope
    Podman                          .../libpod-<id>.scope

A task is in a container when its cgroup is a container's or its pid namespace is not the host's.
Runs in the guest (standard library only) and on the host.
"""

from __future__ import annotations

import os
import re

from harness.guest.record import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CGROUP2_ROOT = "/sys/fs/cgroup"
_ID = r"([0-9a-f]{64})"
_UID = r"([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
# The leaf component of a container's cgroup, by runtime (systemd scope units, then plain dirs).
_SCOPES = (
    ("containerd", re.compile(rf"cri-containerd-{_ID}\.scope")),
    ("crio", re.compile(rf"crio-{_ID}\.scope")),
    ("podman", re.compile(rf"libpod-{_ID}\.scope")),
    ("docker", re.compile(rf"docker-{_ID}\.scope")),
)
_POD_SLICE = re.compile(rf"kubepods(?:-[a-z]+)?-pod{_UID}\.slice")
_POD_DIR = re.compile(rf"pod{_UID}")


@record
class Container:
    runtime: str  # docker, containerd, crio, podman, kubernetes (a cgroupfs-driver pod: runtime unknown)
    id: str
    pod_uid: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "id": self.id, "pod_uid": self.pod_uid}


def parse_cgroup_path(path: str) -> Container | None:
    """The container a cgroup path belongs to, or None (a host cgroup)."""
    parts = [part for part in path.split("/") if part]
    if not parts:
        return None
    leaf = parts[-1]
    pod_uid = _pod_uid(parts[:-1])
    for runtime, pattern in _SCOPES:
        match = pattern.fullmatch(leaf)
        if match:
            return Container(runtime, match[1], pod_uid)
    if re.fullmatch(_ID, leaf):
        if len(parts) >= 2 and parts[-2] == "docker":
            return Container("docker", leaf, None)
        if parts[0] == "kubepods" and pod_uid is not None:
            return Container("kubernetes", leaf, pod_uid)
    return None


def _pod_uid(parents: list[str]) -> str | None:
    for part in reversed(parents):
        match = _POD_SLICE.fullmatch(part) or _POD_DIR.fullmatch(part)
        if match:
            return match[1].replace("_", "-")
    return None


class CgroupPaths:
    """cgroup v2 id -> path relative to the cgroup2 mount ("/" for the root)."""

    def __init__(self, root: str = CGROUP2_ROOT) -> None:
        self.root = root
        self.paths: dict[int, str] = {}

    def refresh(self) -> None:
        paths = {}
        for directory, _dirs, _files in os.walk(self.root):
            try:
                inode = os.stat(directory).st_ino
            except OSError:
                continue  # removed meanwhile
            relative = os.path.relpath(directory, self.root)
            paths[inode] = "/" if relative == "." else "/" + relative
        self.paths = paths

    def path(self, cgroup_id: int) -> str | None:
        if cgroup_id not in self.paths:
            self.refresh()
        return self.paths.get(cgroup_id)


def host_pidns() -> int:
    """The pid namespace of the guest's init (the host's, seen from inside the guest)."""
    return os.stat("/proc/1/ns/pid").st_ino


def attribute(cgroup_id: int, pidns: int, paths: CgroupPaths, host_ns: int) -> dict[str, Any]:
    """What the agent reports for an event's task."""
    path = paths.path(cgroup_id) if cgroup_id else None
    container = parse_cgroup_path(path) if path else None
    return {
        "cgroup": path,
        "container": container.to_json() if container else None,
        "in_container": container is not None or (pidns != 0 and pidns != host_ns),
    }
