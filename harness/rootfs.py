"""Guest image: a gzip'd initramfs per architecture, built in Python from Debian packages.

No root and no cpio binary: packages are unpacked by the repository client, files picked by the
recipe in images/guest.yaml, the Python stdlib cut to what the agent imports and precompiled to
sourceless .pyc, and everything written as newc cpio. Images are cached by a hash of all inputs.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml
from filelock import FileLock
from pydantic import BaseModel, ConfigDict, ValidationError

from harness import cpio
from harness.archs import ArchProfile
from harness.debian import DebianRepo, Package
from harness.errors import BuildError, ConfigError
from harness.paths import cache_write_error, cache_writes, project_root
from harness.pyruntime import PythonRuntime, host_debian_arch, python_runtime, suite_python_version

log = logging.getLogger("kmatrix.rootfs")

# Bump when the layout produced here changes, so cached images are rebuilt.
BUILDER_VERSION = 3
# Files of the harness copied into the guest: the agent and the protocol it shares with the host.
AGENT_FILES = (
    "harness/__init__.py",
    "harness/protocol.py",
    "harness/guest/*.py",
    "drivers/common/kmx_events.h",  # the event schema, parsed by harness/guest/schema.py
    "drivers/common/syscalls/*.json",  # per-arch syscall tables for the workload
)
_MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    packages: list[str]
    keep: list[str]
    drop: list[str] = []
    python_extra_modules: list[str] = []
    fallback_suites: list[str] = []
    directories: list[str] = []


def load_recipe(path: Path | None = None) -> Recipe:
    path = path or project_root() / "images" / "guest.yaml"
    try:
        return Recipe.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read the guest image recipe: {error}") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None


@dataclass(frozen=True)
class GuestImage:
    path: Path
    arch: str
    suite: str
    python: str
    packages: dict[str, str]  # name -> version
    size: int
    built: bool  # False when taken from the cache

    def describe(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "arch": self.arch,
            "suite": self.suite,
            "python": self.python,
            "packages": self.packages,
            "size_bytes": self.size,
            "built": self.built,
        }


def _canonical(relpath: str) -> str:
    """Map a package path onto a merged-/usr layout (trixie's libc6 ships only under /usr)."""
    head, _, rest = relpath.partition("/")
    return f"usr/{head}/{rest}".rstrip("/") if head in _MERGED_USR else relpath


def _matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def _agent_sources() -> list[Path]:
    root = project_root()
    files: list[Path] = []
    for pattern in AGENT_FILES:
        files += sorted(root.glob(pattern))
    return files


def _input_hash(recipe: Recipe, packages: list[Package], init: Path, extra: dict[str, str]) -> str:
    digest = hashlib.sha256()
    digest.update(f"builder={BUILDER_VERSION}\n{recipe.model_dump_json()}\n".encode())
    for pkg in packages:
        digest.update(f"{pkg.name} {pkg.version} {pkg.sha256}\n".encode())
    for path in [init, *_agent_sources()]:
        digest.update(path.name.encode() + hashlib.sha256(path.read_bytes()).digest())
    digest.update(json.dumps(extra, sort_keys=True).encode())
    return digest.hexdigest()[:20]


_CLOSURE_SCRIPT = """
import importlib, json, sys
import runpy, importlib.util  # the guest starts the agent with -m
for name in sys.argv[1:]:
    importlib.import_module(name)
import harness.guest, os
# Every guest module, not only what the agent imports at start: some are imported lazily per driver.
for file in sorted(os.listdir(os.path.dirname(harness.guest.__file__))):
    if file.endswith(".py") and file != "__init__.py":
        importlib.import_module("harness.guest." + file[:-3])
print(json.dumps(sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)})))
"""


def stdlib_closure(runtime: PythonRuntime, agent_root: Path, extra: list[str]) -> list[str]:
    """Stdlib files (relative to the stdlib dir) the agent imports, found by importing it."""
    out = runtime.run(["-c", _CLOSURE_SCRIPT, *extra], pythonpath=[agent_root])
    stdlib_dirs = [str(path) for path in runtime.stdlib_dirs]
    relative = set()
    for file in json.loads(out):
        for base in stdlib_dirs:
            if file.startswith(base + "/"):
                relative.add(file[len(base) + 1 :])
    if not any(name.startswith("os.py") for name in relative):
        relative.add("os.py")  # getpath's landmark: without it Python cannot find its prefix
    return sorted(relative)


class ImageBuilder:
    def __init__(self, repo: DebianRepo, cache: Path, *, log: Callable[[str], None] = lambda _m: None) -> None:
        self.repo = repo
        self.cache = cache / "images"
        with cache_writes(self.cache):
            self.cache.mkdir(parents=True, exist_ok=True)
        self.log = log

    def build(self, arch: ArchProfile, suite: str, recipe: Recipe | None = None) -> GuestImage:
        recipe = recipe or load_recipe()
        init = project_root() / "images" / "init"
        py = suite_python_version(self.repo, suite, arch.debian_arch)
        names = [name.format(py=py) for name in recipe.packages]
        suites = [suite, *[s for s in recipe.fallback_suites if s != suite]]
        packages: list[Package] = []
        substitutions: list[str] = []
        for name in names:
            pkg, notes = self.repo.find_fetchable(suites, arch.debian_arch, name)
            substitutions += notes
            packages.append(pkg)
        key = _input_hash(recipe, packages, init, {"arch": arch.name, "suite": suite})
        target = self.cache / f"{arch.name}-{suite}-{key}.cpio.gz"
        meta = {pkg.name: pkg.version + ("" if pkg.suite == suite else f" ({pkg.suite})") for pkg in packages}
        with cache_writes(target), FileLock(str(target) + ".lock"):
            if _image_intact(target):
                return GuestImage(target, arch.name, suite, py, meta, target.stat().st_size, False)
            self.log(f"building guest image for {arch.name} ({suite}, Python {py})")
            for note in substitutions:
                self.log(f"{arch.name}: {note.splitlines()[0]}")
            runtime = python_runtime(self.repo, suites, host_debian_arch(), py)
            with tempfile.TemporaryDirectory(prefix="kmatrix-rootfs-") as tmp:
                staging = Path(tmp) / "root"
                with cache_writes(staging):  # the staging tree is outside the cache: name it if its disk fills
                    self._stage_packages(staging, packages, recipe)
                    self._stage_python(staging, packages, runtime, recipe, py, arch)
                    self._stage_agent(staging, runtime)
                    self._finish_layout(staging, recipe, init, py)
                partial = target.with_suffix(target.suffix + ".tmp")  # where write_gzip_cpio writes first
                try:
                    cpio.write_gzip_cpio(list(_entries(staging)), target)
                except OSError as error:
                    # No half-written image may stay behind: it would only eat the space a retry needs.
                    partial.unlink(missing_ok=True)
                    mapped = cache_write_error(target, error)
                    if mapped is not None:
                        raise mapped from None
                    raise BuildError(f"cannot write guest image {target}: {error.strerror}") from None
                _write_checksum(target)
        return GuestImage(target, arch.name, suite, py, meta, target.stat().st_size, True)

    def _stage_packages(self, staging: Path, packages: list[Package], recipe: Recipe) -> None:
        keep = [pattern.format(py="*") for pattern in recipe.keep]
        for pkg in packages:
            if pkg.name.startswith(("libpython", "python")) and "minimal" not in pkg.name:
                continue  # the stdlib is staged module by module
            root = self.repo.unpack(pkg)
            for dirpath, _dirs, files in os.walk(root):
                for name in files:
                    source = Path(dirpath) / name
                    rel = _canonical(source.relative_to(root).as_posix())
                    if _matches(rel, keep) and not _matches(rel, recipe.drop):
                        _copy(source, staging / rel)

    def _stage_python(
        self, staging: Path, packages: list[Package], runtime: PythonRuntime, recipe: Recipe, py: str, arch: ArchProfile
    ) -> None:
        agent_root = Path(__file__).resolve().parent.parent
        closure = stdlib_closure(runtime, agent_root, recipe.python_extra_modules)
        host_triplet = _triplet_of(runtime.stdlib_dirs)
        target_roots = [self.repo.unpack(p) for p in packages if p.name.startswith("libpython")]
        dest = staging / "usr/lib" / f"python{py}"
        for rel in closure:
            rel_target = rel.replace(host_triplet, arch_triplet(arch)) if host_triplet else rel
            if _matches(f"usr/lib/python{py}/{rel_target}", recipe.drop):
                continue
            for root in target_roots:
                source = root / "usr/lib" / f"python{py}" / rel_target
                if source.exists():
                    _copy(source, dest / rel_target)
                    break
            else:
                if not rel.endswith(".py"):
                    continue  # an extension the target builds into the interpreter
                raise BuildError(f"stdlib file {rel_target} is missing from {arch.name}'s Python {py} packages")
        _compile_sourceless(runtime, dest, f"/usr/lib/python{py}")

    def _stage_agent(self, staging: Path, runtime: PythonRuntime) -> None:
        root = project_root()
        dest = staging / "opt/kmatrix"
        for source in _agent_sources():
            _copy(source, dest / source.relative_to(root))
        _compile_sourceless(runtime, dest, "/opt/kmatrix")

    def _finish_layout(self, staging: Path, recipe: Recipe, init: Path, py: str) -> None:
        for directory in recipe.directories:
            (staging / directory).mkdir(parents=True, exist_ok=True)
        for name in _MERGED_USR:
            if (staging / "usr" / name).exists():
                (staging / name).symlink_to(f"usr/{name}")
        (staging / "usr/bin/python3").symlink_to(f"python{py}")
        shutil.copyfile(init, staging / "init")
        (staging / "init").chmod(0o755)


def _checksum_path(image: Path) -> Path:
    return image.with_name(image.name + ".sha256")


def _sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _write_checksum(image: Path) -> None:
    sidecar = _checksum_path(image)
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    try:
        tmp.write_text(_sha256_of(image) + "\n")
        tmp.replace(sidecar)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _image_intact(image: Path) -> bool:
    """True iff the cached image is the one that was built: its sha256 matches the one recorded then.

    A cached image that changed on disk (a flipped bit, a truncation) is removed and built again,
    never booted. An image from before checksums were recorded is kept only if its whole gzip stream
    decodes (gzip's CRC catches a flipped bit), and its checksum is recorded from then on.
    """
    if not image.is_file():
        return False
    try:
        recorded: str | None = _checksum_path(image).read_text().strip()
    except FileNotFoundError:
        recorded = None
    if recorded is not None and _sha256_of(image) == recorded:
        return True
    if recorded is None and _gzip_whole(image):
        _write_checksum(image)
        return True
    why = "does not match its recorded sha256" if recorded is not None else "does not decompress"
    log.warning("cached guest image %s %s; building it again", image, why)
    image.unlink()
    _checksum_path(image).unlink(missing_ok=True)
    return False


def _gzip_whole(path: Path) -> bool:
    try:
        with gzip.open(path, "rb") as handle:
            while handle.read(1 << 20):
                pass
    except (OSError, EOFError, zlib.error):
        return False
    return True


def arch_triplet(arch: ArchProfile) -> str:
    return {"ppc64le": "powerpc64le-linux-gnu", "loongarch64": "loongarch64-linux-gnu"}.get(
        arch.name, arch.cross_triple
    )


def _triplet_of(stdlib_dirs: list[Path]) -> str | None:
    for stdlib in stdlib_dirs:
        for so in (stdlib / "lib-dynload").glob("*.so"):
            parts = so.name.split("-", 2)  # _ctypes.cpython-313-x86_64-linux-gnu.so
            if len(parts) == 3:
                return parts[2].removesuffix(".so")
    return None


def _copy(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        return
    if source.is_symlink():
        dest.symlink_to(os.readlink(source))
    else:
        shutil.copy2(source, dest)


def _compile_sourceless(runtime: PythonRuntime, tree: Path, shown_as: str) -> None:
    """Compile every .py in tree to a .pyc beside it (legacy layout), then drop the sources."""
    runtime.run(["-m", "compileall", "-q", "-b", "-f", "-s", str(tree), "-p", shown_as, str(tree)])
    for source in tree.rglob("*.py"):
        if source.with_suffix(".pyc").exists():
            source.unlink()
    for cache in list(tree.rglob("__pycache__")):
        shutil.rmtree(cache)


def _entries(staging: Path) -> Iterable[cpio.Entry]:
    for dirpath, dirs, files in os.walk(staging):
        dirs.sort()
        base = Path(dirpath)
        rel_dir = base.relative_to(staging).as_posix()
        if rel_dir != ".":
            yield cpio.Entry(rel_dir, stat.S_IFDIR | 0o755)
        for name in sorted(dirs + files):
            path = base / name
            rel = path.relative_to(staging).as_posix()
            if path.is_symlink():
                yield cpio.Entry(rel, stat.S_IFLNK | 0o777, os.readlink(path).encode())
            elif path.is_file():
                mode = 0o755 if os.access(path, os.X_OK) else 0o644
                yield cpio.Entry(rel, stat.S_IFREG | mode, path.read_bytes())
    # The kernel opens /dev/console for init before anything mounts devtmpfs.
    yield cpio.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    yield cpio.Entry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3))
