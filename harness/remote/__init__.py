"""Remote targets: run a cell's suite on a real machine over SSH instead of in a QEMU guest."""

from harness.remote.ssh import HostKeyError, RemoteAgent, SshTarget, SshUrl, fingerprint, parse_target

__all__ = ["HostKeyError", "RemoteAgent", "SshTarget", "SshUrl", "fingerprint", "parse_target"]
