"""nox sessions for kmatrix. Thin on purpose: the work lives in `harness/`.

nox -s tests                      unit tests + boot tests on the `ci` profile (what CI runs)
nox -t ci                         the same, by tag
nox -s lint                       ruff + mypy --strict
nox -s "boot(arch='riscv64')"     boot every kernel of one architecture (one session per arch)
nox -s "matrix(arch='ppc64le')"   `kmatrix run` on every cell of one architecture (runs/nox-matrix-ppc64le)
nox -t arch_s390x                 both sessions of one architecture
nox -s qualify                    release qualification: the full matrix and its report (runs/qualify)
nox -s bench -- --kmatrix-arch x86_64   throughput benchmarks (pytest-benchmark; JSON + report in runs/)
"""

from __future__ import annotations

from pathlib import Path

import nox
import yaml

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
ARCHS: list[str] = list(yaml.safe_load((ROOT / "matrix.yaml").read_text())["architectures"])


def _install(session: nox.Session) -> None:
    session.install("-e", ".[dev]")


@nox.session(tags=["ci"])
def tests(session: nox.Session) -> None:
    """Unit tests and the `ci` profile's guest boots (posargs go to pytest)."""
    _install(session)
    session.run("pytest", *(session.posargs or ["tests"]))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy --strict on harness/."""
    _install(session)
    session.run("ruff", "check", "harness", "tests", "benchmarks", "noxfile.py")
    session.run("mypy")


@nox.session(default=False)
@nox.parametrize("arch", [nox.param(arch, id=arch, tags=[f"arch_{arch}"]) for arch in ARCHS])
def boot(session: nox.Session, arch: str) -> None:
    """Boot every kernel of one architecture in the matrix and check the agent answers."""
    _install(session)
    session.run(
        "pytest",
        "-m",
        "vm",
        "tests/integration/test_boot.py",
        "--kmatrix-profile",
        "full",
        "--kmatrix-arch",
        arch,
        "--kmatrix-kernels",
        "all",
        *session.posargs,
    )


@nox.session(default=False)
@nox.parametrize("arch", [nox.param(arch, id=arch, tags=[f"arch_{arch}", "matrix"]) for arch in ARCHS])
def matrix(session: nox.Session, arch: str) -> None:
    """Every cell of one architecture (all kernels, drivers, suites) with `kmatrix run` (posargs to it)."""
    _install(session)
    out = ROOT / "runs" / f"nox-matrix-{arch}"
    session.run("kmatrix", "run", "--profile", "full", "--arch", arch, "-o", str(out), *session.posargs)


@nox.session(default=False, tags=["release"])
def qualify(session: nox.Session) -> None:
    """Release qualification: the full matrix and its report in runs/qualify (posargs to kmatrix qualify)."""
    _install(session)
    session.run("kmatrix", "qualify", "--profile", "full", "-o", str(ROOT / "runs" / "qualify"), *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Throughput benchmarks: pytest-benchmark over (arch, subject) at each newest kernel (posargs to pytest)."""
    _install(session)
    out = ROOT / "runs" / "bench-pytest"
    out.mkdir(parents=True, exist_ok=True)
    session.run("pytest", "benchmarks", f"--benchmark-json={out / 'benchmark.json'}", *session.posargs)
