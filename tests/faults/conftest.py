"""Shared pieces of the fault drills: a signed test mirror with a kernel, served over HTTP, and mounts.

The drills inject faults for real: the HTTP server is really stopped, files in the cache are really
truncated or flipped, and the cache really sits on a read-only or full file system (mounts need
root; a drill that needs one skips with the reason when it cannot mount).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))  # the test repository builder

from debrepo_fixture import DEFAULT_DEBS, SUITE, DebSpec, Gpg, build_repo, throwaway_gpg

from harness.archs import ArchProfile, get_arch
from harness.debian import DebianRepo, MissingFromPool, Package, _index_entry, host_mirror
from harness.errors import FetchError, KmatrixError
from harness.matrix import load_matrix
from harness.paths import cache_dir, default_matrix_path, project_root
from harness.pyruntime import RUNTIME_PACKAGES, host_debian_arch, suite_python_version
from harness.rootfs import load_recipe

REQUIRED_TOOLS = ("gpg", "gpg-agent", "gpgv", "dpkg-deb", "gpgconf")
MISSING_TOOLS = [tool for tool in REQUIRED_TOOLS if not shutil.which(tool)]
needs_repo_tools = pytest.mark.skipif(
    bool(MISSING_TOOLS), reason=f"needs {', '.join(MISSING_TOOLS)} to build the test repository (./bootstrap)"
)

KERNEL_RELEASE = "6.1.0-99-amd64"
KERNEL_PACKAGE = f"linux-image-{KERNEL_RELEASE}"
KERNEL_FILE = f"boot/vmlinuz-{KERNEL_RELEASE}"
# A stand-in kernel of ~1.5 MB: big enough that a flipped byte hides in the middle of it.
FAKE_KERNEL = random.Random(7).randbytes(3 << 18).hex()
BIG_FILE_CHARS = 6 << 20  # the "big" package unpacks to 6 MiB (its .deb is about half that)
BIG_TEXT = random.Random(8).randbytes(BIG_FILE_CHARS // 2).hex()

KERNEL_DEBS = (
    DebSpec("linux-image-amd64", "6.1.99-1", control={"Depends": KERNEL_PACKAGE}),
    DebSpec(
        KERNEL_PACKAGE,
        "6.1.99-1",
        files={
            KERNEL_FILE: FAKE_KERNEL,
            f"boot/config-{KERNEL_RELEASE}": "CONFIG_BPF=y\nCONFIG_BPF_SYSCALL=y\nCONFIG_KPROBES=y\n",
            f"usr/lib/modules/{KERNEL_RELEASE}/kernel/drivers/unused.ko": "not extracted\n",
        },
    ),
    DebSpec("bigpkg", "1.0-1", files={"usr/share/big/blob": BIG_TEXT}),
)

UNREACHABLE_MIRROR = "http://127.0.0.1:9/debian"  # the discard port: connection refused, at once


@dataclasses.dataclass(frozen=True)
class Repo:
    root: Path  # .../debian: the mirror's tree
    keyring: Path
    other_keyring: Path  # a key that signed nothing
    gpg: Gpg
    other_gpg: Gpg

    @property
    def url(self) -> str:
        return self.root.as_uri()


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gpg, Gpg, Path, Path]]:
    if MISSING_TOOLS:
        pytest.skip(f"needs {', '.join(MISSING_TOOLS)} to build the test repository (./bootstrap)")
    keys = tmp_path_factory.mktemp("keys")
    with throwaway_gpg() as gpg, throwaway_gpg() as other:
        yield gpg, other, gpg.export(keys / "test.gpg"), other.export(keys / "other.gpg")


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory, signing_keys: tuple[Gpg, Gpg, Path, Path]) -> Repo:
    gpg, other, keyring, other_keyring = signing_keys
    root = tmp_path_factory.mktemp("repo") / "debian"
    build_repo(root, gpg, (*DEFAULT_DEBS, *KERNEL_DEBS))
    return Repo(root, keyring, other_keyring, gpg, other)


@pytest.fixture
def repo(pristine: Repo, tmp_path: Path) -> Repo:
    """A private copy of the mirror, which a drill may damage."""
    root = tmp_path / "mirror" / "debian"
    shutil.copytree(pristine.root, root, symlinks=True)
    return dataclasses.replace(pristine, root=root)


def client(url: str, cache: Path, keyring: Path, **kwargs: object) -> DebianRepo:
    kwargs.setdefault("retry_delay_s", 0)
    kwargs.setdefault("timeout_s", 10)
    return DebianRepo(url, cache, [keyring], **kwargs)  # type: ignore[arg-type]


def x86_64() -> ArchProfile:
    return get_arch("x86_64")


# -- a mirror over HTTP that a drill can take down ----------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class HttpMirror:
    """The test repository served over HTTP on 127.0.0.1; `stop()` really closes the socket."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root.parent))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/debian"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self.running = False


@pytest.fixture
def http_mirror(repo: Repo) -> Iterator[HttpMirror]:
    mirror = HttpMirror(repo.root)
    try:
        yield mirror
    finally:
        mirror.stop()


# -- mounts ------------------------------------------------------------------------------------------


def can_mount() -> str | None:
    """None if this process may mount file systems, else why not (the drill's skip reason)."""
    if os.geteuid() != 0:
        return f"mounting a tmpfs needs root (euid {os.geteuid()})"
    if not shutil.which("mount") or not shutil.which("umount"):
        return "mount/umount not installed"
    return None


@contextmanager
def mounted(target: Path, *args: str) -> Iterator[Path]:
    """`mount <args> <target>` for the block, unmounted after; skips the drill if mounting fails."""
    reason = can_mount()
    if reason:
        pytest.skip(reason)
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount ({' '.join(['mount', *args])}): {done.stderr.strip() or done.returncode}")
    try:
        yield target
    finally:
        unmount(target)


def unmount(target: Path) -> None:
    if subprocess.run(["umount", str(target)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def tmpfs(target: Path, size: str, *, read_only: bool = False) -> AbstractContextManager[Path]:
    options = f"size={size},mode=0755" + (",ro" if read_only else "")
    return mounted(target, "-t", "tmpfs", "-o", options, "kmatrix-drill")


def remount(target: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(target)], check=True, capture_output=True)


# -- checking a cache ---------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(cache: Path) -> list[Path]:
    """Temporary or half-done files a killed or failed writer could leave behind."""
    found = []
    for path in cache.rglob("*"):
        name = path.name
        if ".tmp-" in name or name.endswith((".partial", ".tmp")):
            found.append(path)
    return found


def cached_debs(cache: Path) -> list[Path]:
    return sorted(cache.rglob("debs/*/*.deb"))


# -- a real guest image's inputs, from the host's kmatrix cache ----------------------------------------------


class _FromRealCache(DebianRepo):
    """Seeds a cache: takes .debs from the host's kmatrix cache instead of a mirror (checked all the same)."""

    def __init__(self, real_root: Path, cache: Path) -> None:
        super().__init__(UNREACHABLE_MIRROR, cache, retries=1, retry_delay_s=0, timeout_s=5)
        self.real_root = real_root

    def _download_verified(self, pkg: Package, dest: Path) -> None:
        source = self.real_root / "debs" / pkg.sha256[:16] / Path(pkg.filename).name
        if not source.is_file():
            raise MissingFromPool(f"{pkg.name} {pkg.version} is not in the host's kmatrix cache")
        shutil.copyfile(source, dest)
        if hashlib.sha256(dest.read_bytes()).hexdigest() != pkg.sha256:
            raise FetchError(f"{source} does not match its index entry")


def seed_from_host_cache(seed: Path, arch_name: str) -> str:
    """Copy what building arch's guest image reads (InReleases, parsed indexes, .debs) into seed; its suite."""
    matrix = load_matrix(default_matrix_path())
    mirror = os.environ.get("KMATRIX_MIRROR") or matrix.mirror or host_mirror()
    real_root = DebianRepo(mirror, cache_dir()).root
    seeder = _FromRealCache(real_root, seed)
    suite = matrix.userland_suite(arch_name)
    recipe = load_recipe()
    suites = [suite, *[s for s in recipe.fallback_suites if s != suite]]
    arch = get_arch(arch_name)
    for name in suites:
        source = real_root / "dists" / name / "InRelease"
        if not source.is_file():
            continue
        target = seeder.root / "dists" / name / "InRelease"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)  # a fresh mtime: the run takes it without asking the mirror
        info = seeder.release(name)
        for debian_arch in {arch.debian_arch, host_debian_arch()}:
            parsed = real_root / "indexes" / f"{_index_entry(info, name, debian_arch, 'main').sha256}.json"
            if parsed.is_file():
                (seeder.root / "indexes").mkdir(exist_ok=True)
                shutil.copyfile(parsed, seeder.root / "indexes" / parsed.name)
    py = suite_python_version(seeder, suite, arch.debian_arch)
    for template in recipe.packages:
        seeder.find_fetchable(suites, arch.debian_arch, template.format(py=py))
    for template in RUNTIME_PACKAGES:
        seeder.find_fetchable(suites, host_debian_arch(), template.format(py=py))
    return suite


def snapshot(dest: Path) -> Path:
    """A copy of what an image build reads from the checkout, so edits made meanwhile change no input."""
    root = project_root()
    for part in ("harness", "images", "drivers/common"):
        shutil.copytree(root / part, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(root / "matrix.yaml", dest / "matrix.yaml")
    return dest


def kmatrix_image(source: Path, cache: Path, arch: str, prelude: str = "") -> subprocess.Popen[str]:
    """`kmatrix image --json` run from the snapshot (`-c` puts the working directory first on sys.path).

    `prelude` is Python run first in that process: a drill's way to switch a guard off.
    """
    env = {**os.environ, "KMATRIX_CACHE": str(cache), "KMATRIX_MIRROR": UNREACHABLE_MIRROR, "COLUMNS": "250"}
    env.pop("KMATRIX_MATRIX", None)
    cli = f"import sys\nfrom harness.cli import main\nsys.exit(main(['image', '--arch', {arch!r}, '--json']))"
    code = f"{prelude}\n{cli}"
    argv = [sys.executable, "-c", code]
    return subprocess.Popen(argv, cwd=source, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def size_of(tree: Path) -> int:
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in tree.rglob("*") if p.is_file() and not p.is_symlink())


@dataclasses.dataclass(frozen=True)
class HostSeed:
    seed: Path  # a cache holding only what building the guest image reads (no unpacked trees, no image)
    source: Path  # a snapshot of the checkout's harness/, images/, drivers/common/, matrix.yaml
    arch: str


@pytest.fixture(scope="session")
def host_seed(tmp_path_factory: pytest.TempPathFactory) -> HostSeed:
    """A riscv64 guest image's inputs taken from the host's kmatrix cache, warmed first when cold (a
    fresh CI machine: a real build through the mirror); skips only when that cannot be done."""
    arch = "riscv64"
    seed = tmp_path_factory.mktemp("seed")
    try:
        seed_from_host_cache(seed, arch)
    except KmatrixError:
        from harness.archs import get_arch
        from harness.runner import Workspace

        try:
            Workspace.open().image(get_arch(arch))
            seed_from_host_cache(seed, arch)
        except KmatrixError as error:
            pytest.skip(f"the host's kmatrix cache is cold for a {arch} guest image and warming it failed: {error}")
    return HostSeed(seed, snapshot(tmp_path_factory.mktemp("checkout")), arch)


__all__ = ["SUITE", "needs_repo_tools"]
