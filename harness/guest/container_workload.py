"""One container's process for the container suite (runs as its own process in the guest).

argv: CGROUP_DIR MARKER NEW_PIDNS(0|1). Moves itself into the cgroup (cgroup.procs), then, like a
runtime starting a container, enters a new pid namespace (unshare(CLONE_NEWPID): the next child
is that namespace's pid 1) and forks; the child opens MARKER (the event the suite looks for) and
exits. Prints {"pid": this process, "child": the child's pid as the host sees it}.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

CLONE_NEWPID = 0x20000000


def unshare_pid() -> None:
    if hasattr(os, "unshare"):
        os.unshare(CLONE_NEWPID)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWPID) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWPID)")


def main() -> int:
    cgroup_dir, marker, new_pidns = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    with open(os.path.join(cgroup_dir, "cgroup.procs"), "w", encoding="ascii") as procs:
        procs.write(str(os.getpid()))
    if new_pidns:
        unshare_pid()
    child = os.fork()
    if child == 0:
        fd = os.open(marker, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
        os._exit(0)
    _pid, status = os.waitpid(child, 0)
    print(json.dumps({"pid": os.getpid(), "child": child, "status": status}), flush=True)
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
