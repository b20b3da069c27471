"""Run a Debian suite's Python on the host, whatever the host's own Python and glibc are.

The guest's Python (trixie's 3.13, sid's 3.14) is usually not the host's. To know which stdlib
modules the agent imports and to precompile them for the guest's exact bytecode version, the
harness runs the same Python version from the same suite, built for the host's architecture,
through that suite's own dynamic loader (`ld.so --library-path`), so a Debian 12 host (glibc 2.36)
runs trixie's or sid's binaries without installing anything.
"""

from __future__ import annotations

import glob
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.debian import DebianRepo
from harness.errors import BuildError, FetchError

# Enough of a userland to run python3.X -S with ctypes: its own libc, loader and libffi.
RUNTIME_PACKAGES = (
    "libc6",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "python{py}-minimal",
    "libpython{py}-minimal",
    "libpython{py}-stdlib",
)


def host_debian_arch() -> str:
    try:
        return subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        machine = os.uname().machine
        return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def suite_python_version(repo: DebianRepo, suite: str, arch: str) -> str:
    """The suite's default Python ("3.13"), read from python3-minimal's dependencies."""
    meta = repo.find(suite, arch, "python3-minimal")
    for group in meta.depends_names():
        for name in group:
            if name.startswith("python3.") and name.endswith("-minimal"):
                return name[len("python") : -len("-minimal")]
    raise FetchError(
        f"cannot tell the default Python of {suite}/{arch}: python3-minimal {meta.version} "
        "depends on no python3.X-minimal"
    )


@dataclass(frozen=True)
class PythonRuntime:
    """A Python unpacked from Debian packages into separate cached roots."""

    version: str  # "3.13"
    roots: tuple[Path, ...]
    arch: str

    def _find(self, pattern: str) -> Path:
        for root in self.roots:
            found = sorted(glob.glob(str(root / pattern)))
            if found:
                return Path(found[0])
        raise BuildError(f"Python {self.version} runtime for {self.arch}: no {pattern} in its packages")

    @property
    def stdlib_dirs(self) -> list[Path]:
        return [
            root / "usr/lib" / f"python{self.version}"
            for root in self.roots
            if (root / "usr/lib" / f"python{self.version}").is_dir()
        ]

    def command(self) -> list[str]:
        """argv prefix that runs this Python on the host through its own loader."""
        loader = self._find("usr/lib/*-linux-gnu*/ld-linux*.so*")
        libdirs = sorted(
            {str(path.parent) for root in self.roots for path in root.glob("usr/lib/*-linux-gnu*/lib*.so*")}
        )
        return [
            str(loader),
            "--library-path",
            ":".join(libdirs),
            str(self._find(f"usr/bin/python{self.version}")),
            "-S",
            "-B",
        ]

    def run(self, args: Sequence[str], *, pythonpath: Sequence[Path] = (), timeout: float = 300) -> str:
        """Run with an stdlib search path spread over the unpacked package roots."""
        paths = [str(p) for p in pythonpath]
        for stdlib in self.stdlib_dirs:
            paths += [str(stdlib), str(stdlib / "lib-dynload")]
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(paths), "PYTHONNOUSERSITE": "1", "LC_ALL": "C.UTF-8"}
        try:
            done = subprocess.run(
                [*self.command(), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise BuildError(f"host Python {self.version} did not run: {error}") from None
        if done.returncode != 0:
            raise BuildError(
                f"host Python {self.version} failed (exit {done.returncode}): "
                f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}",
                hint="run with --debug to see the full output",
            )
        return done.stdout


def python_runtime(repo: DebianRepo, suites: Sequence[str], arch: str, version: str) -> PythonRuntime:
    """Unpack the runtime's packages, each from the first of `suites` whose pool holds it."""
    roots = []
    for template in RUNTIME_PACKAGES:
        pkg, _notes = repo.find_fetchable(suites, arch, template.format(py=version))
        roots.append(repo.unpack(pkg))
    return PythonRuntime(version, tuple(roots), arch)
