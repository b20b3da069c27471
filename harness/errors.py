"""The exception hierarchy. The CLI turns each into one line plus a hint and an exit code."""

from __future__ import annotations


class KmatrixError(Exception):
    """Base of every error the harness raises on purpose."""

    exit_code = 3

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(KmatrixError):
    """Bad user input: matrix file, CLI arguments, environment overrides."""

    exit_code = 2


class FetchError(KmatrixError):
    """A package, index or signature could not be fetched or verified."""


class BuildError(KmatrixError):
    """A toolchain step (initramfs, module, BPF object, helper) failed."""


class UnsupportedTarget(BuildError):
    """The driver's source itself rules this (arch, kernel) out: a cell to skip with this reason, not an error."""


class BootError(KmatrixError):
    """QEMU did not start, or the guest did not reach the agent's ready message."""


class GuestError(KmatrixError):
    """The guest agent misbehaved: protocol error, timeout, crash."""


class HostGuardError(KmatrixError):
    """Refused: an action that must only ever happen inside a guest was asked on the host."""

    exit_code = 2


class CacheError(KmatrixError):
    """The cache cannot be written: its disk is full, or it is read-only / not writable.

    Infrastructure (exit 3): nothing the run produced half-way is left for a later run to trust.
    """
