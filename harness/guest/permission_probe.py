"""One unprivileged consumer for the permission suite (runs as its own process, as the user it is given).

argv: DRIVER ARTIFACT. Opens the driver the way the agent does (harness.guest.capture.open_consumer),
captures this process's own getppid calls and prints one JSON line: {"ok": true, "events": N,
"uid", "gid", "groups", "cap_eff", "read_only"} or {"ok": false, "errno": E, "error": "..."}; it
never raises, so the suite judges what happened rather than a traceback.
"""

from __future__ import annotations

import json
import os
import sys

CALLS = 50


def capabilities() -> str:
    with open("/proc/self/status", encoding="ascii") as status:
        return next((line.split()[1] for line in status if line.startswith("CapEff:")), "?")


def main() -> int:
    driver, artifact = sys.argv[1], sys.argv[2]
    who = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "cap_eff": capabilities()}
    try:
        from harness.guest.capture import open_consumer
        from harness.guest.schema import load_schema

        schema = load_schema()
        device = open_consumer(schema, driver, artifact, tgid=os.getpid(), snaplen=64, buffer_bytes=1 << 20)
        try:
            device.start()
            for _ in range(CALLS):
                os.getppid()
            device.stop()
            events = [e for e in device.drain() if e.tid == os.getpid()]
        finally:
            device.close()
    except OSError as error:
        print(json.dumps({"ok": False, "errno": error.errno, "error": f"{type(error).__name__}: {error}", **who}))
        return 0
    except Exception as error:  # the BPF loader raises its own errors carrying libbpf's errno text
        errno = getattr(error, "errno", None)
        print(json.dumps({"ok": False, "errno": errno, "error": f"{type(error).__name__}: {error}"[:600], **who}))
        return 0
    print(json.dumps({"ok": True, "events": len(events), "read_only": getattr(device, "read_only", None), **who}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
