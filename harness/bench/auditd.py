"""Debian's auditd for the throughput benchmark's audit peer: two binaries and the libraries they need.

The guest image carries no auditd. ``auditd_files`` resolves the ``auditd`` package's dependency
closure from the userland suite's signed Packages index (Pre-Depends and Depends, the first
alternative the index can satisfy, versions ignored), stops at what the guest image already ships
(images/guest.yaml's packages, plus libc6 and libgcc-s1) and at runtime dependencies that are not
libraries (an awk, init-system-helpers, systemd's tmpfiles, ...), fetches and unpacks those packages
through DebianRepo (verified, cached), and copies ``auditd``, ``auditctl`` and exactly the shared
libraries their DT_NEEDED closure asks for. A library is placed under the name the loader looks
for (the NEEDED name, i.e. the SONAME) as a real file, never a symlink.

A library the image's own packages provide but the image does not keep (libc6's libresolv.so.2,
which Kerberos needs) is copied too, from the same libc6 the image is built from, so the guest's
loader finds every NEEDED entry under ``opt/kmatrix/peers/auditd/lib`` or in the image itself.
libgcc_s.so.1 is added the same way although nothing names it in DT_NEEDED: glibc dlopens it for
pthread_cancel, which auditd calls on SIGTERM, and aborts (losing the log's buffered tail) without it.

The result is a content-keyed directory, cache/build/auditd/<arch>-<suite>-<key> (key: the sha256
of every package used and the image recipe's file lists), filled once under a lock. The same
machinery bundles other Debian programs for a guest (``debian_bundle`` with a ``BundleSpec``: the
SSH test guest's dropbear and sftp-server).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from harness.archs import ArchProfile
from harness.build import cached_dir, content_key
from harness.debian import DebianRepo, Package
from harness.errors import BuildError, FetchError
from harness.rootfs import Recipe, load_recipe

BUNDLE_FORMAT = 2  # bump when the directory layout or the resolution rules change
ROOT_PACKAGE = "auditd"
BINARIES = ("auditd", "auditctl")
GUEST_ROOT = "opt/kmatrix/peers/auditd"
# Always in the guest, whatever images/guest.yaml lists (the image is built on the suite's glibc).
BASE_EXTRA = ("libc6", "libgcc-s1")
# Runtime dependencies of auditd that running the two binaries does not need. Anything else that is
# not a library package (see _is_library_package) is skipped as well and recorded in the manifest.
IGNORED = frozenset(
    {
        "init-system-helpers",
        "lsb-base",
        "sysvinit-utils",
        "mawk",
        "gawk",
        "original-awk",
        "busybox",
        "systemd",
        "systemd-standalone-tmpfiles",
        "systemd-tmpfiles",
        "debconf",
        "adduser",
        "libaudit-common",  # /etc/libaudit.conf only; libaudit runs with its defaults without it
    }
)
# Loaded with dlopen, so no DT_NEEDED names them: glibc's pthread_cancel (auditd's shutdown) needs
# libgcc_s for unwinding and aborts without it ("libgcc_s.so.1 must be installed for pthread_cancel").
DLOPENED = ("libgcc_s.so.1",)
_BIN_DIRS = ("sbin", "usr/sbin", "bin", "usr/bin")


@dataclass(frozen=True)
class BundleSpec:
    """Which Debian packages' programs a bundle carries; auditd's is AUDITD, the SSH guest's another.

    roots: packages whose closure is followed; binaries: file names looked up in the roots' bin/sbin
    dirs (and extra_dirs); ignored: runtime dependencies not followed; dlopened: libraries added
    although no DT_NEEDED names them.
    """

    name: str
    roots: tuple[str, ...]
    binaries: tuple[str, ...]
    guest_root: str
    ignored: frozenset[str] = frozenset()
    dlopened: tuple[str, ...] = ()
    extra_dirs: tuple[str, ...] = ()
    # True: the bundle carries its own glibc and dynamic loader (nothing is taken from the image), for
    # programs from a newer suite than the image's userland (sid's sysdig on a trixie image).
    self_contained: bool = False


_NOT_LIBRARY_SUFFIXES = ("-common", "-data", "-doc", "-bin", "-dev", "-utils", "-tools")
_LIB_DIR = re.compile(r"(?:usr/)?lib(?:32|64)?(?:/[a-z0-9_]+-linux-[a-z0-9_]+)?")
_MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64")
_MANIFEST = "manifest.json"
_LOCK_TIMEOUT_S = 1800.0

Log = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


AUDITD = BundleSpec("auditd", (ROOT_PACKAGE,), BINARIES, GUEST_ROOT, IGNORED, DLOPENED)


@dataclass(frozen=True)
class Bundle:
    """What ``debian_bundle`` built: the directory, and what went into it."""

    path: Path  # <path>/sbin/<binary>, <path>/lib/<soname>
    key: str
    suite: str
    arch: str
    packages: dict[str, str]  # closure package -> version (" (<suite>)" when taken from a fallback suite)
    skipped: dict[str, str]  # dependency not followed -> why
    libraries: dict[str, str]  # soname copied -> package it came from
    from_image: dict[str, str]  # soname the guest image already carries -> package
    substitutions: list[str] = field(default_factory=list)
    spec: BundleSpec = AUDITD
    loader: str | None = None  # lib/<loader> of a self-contained bundle: run binaries through it

    @property
    def files(self) -> list[tuple[Path, str, int]]:
        """(source, guest path, mode) for harness.cells.files_overlay."""
        root = self.spec.guest_root
        out = [(self.path / "sbin" / name, f"{root}/sbin/{name}", 0o755) for name in self.spec.binaries]
        out += [(self.path / "lib" / name, f"{root}/lib/{name}", 0o755 if name == self.loader else 0o644)
                for name in sorted(self.libraries)]
        return out

    @property
    def size(self) -> int:
        return sum(source.stat().st_size for source, _guest, _mode in self.files)

    def details(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "key": self.key,
            "suite": self.suite,
            "arch": self.arch,
            "packages": self.packages,
            "skipped": self.skipped,
            "libraries": self.libraries,
            "from_image": self.from_image,
            "substitutions": self.substitutions,
            "size_bytes": self.size,
        }


AuditdBundle = Bundle  # the name auditd's callers know


def auditd_files(repo: DebianRepo, suite: str, arch: ArchProfile, cache: Path) -> list[tuple[Path, str, int]]:
    """The files of the audit peer for files_overlay: guest paths under opt/kmatrix/peers/auditd."""
    return auditd_bundle(repo, suite, arch, cache).files


def auditd_bundle(
    repo: DebianRepo, suite: str, arch: ArchProfile, cache: Path, *, recipe: Recipe | None = None, log: Log = _quiet
) -> Bundle:
    """auditd, auditctl and their libraries for one architecture, from one suite (cached)."""
    return debian_bundle(repo, suite, arch, cache, AUDITD, recipe=recipe, log=log)


def debian_bundle(
    repo: DebianRepo,
    suite: str,
    arch: ArchProfile,
    cache: Path,
    spec: BundleSpec,
    *,
    recipe: Recipe | None = None,
    log: Log = _quiet,
) -> Bundle:
    """spec's binaries and the libraries they need beyond the guest image, for one architecture (cached)."""
    recipe = recipe or load_recipe()
    base = [] if spec.self_contained else base_packages(recipe)
    index = repo.packages(suite, arch.debian_arch)
    closure, skipped = resolve_closure(
        index, spec.roots, base, where=f"{suite}/main/binary-{arch.debian_arch}", spec=spec
    )
    suites = [suite, *[s for s in recipe.fallback_suites if s != suite]]
    # The key sees what the index names; fallback suites only come into play when a .deb is gone.
    base_shas = [(name, index[name][0].sha256) for name in base if index.get(name)]
    material: list[object] = [
        f"{spec.name}-bundle",
        BUNDLE_FORMAT,
        arch.name,
        suite,
        [(name, index[name][0].version, index[name][0].sha256) for name in closure],
        base_shas,
        recipe.keep,
        recipe.drop,
    ]
    if spec != AUDITD:  # auditd's key stays what it was: its cached bundles remain valid
        material.append([spec.binaries, spec.dlopened, spec.extra_dirs])
    if spec.self_contained:
        material.append("self-contained")
    key = content_key(*material)
    dest = cache / "build" / spec.name / f"{arch.name}-{suite}-{key}"

    def fill(tmp: Path) -> str:
        log(f"{arch.name}: bundling {spec.name} from {suite} ({', '.join(closure)})")
        manifest = _fill(tmp, repo, suites, arch, closure, base, recipe, spec)
        manifest["skipped"] = skipped
        manifest["key"] = key
        text = json.dumps(manifest, indent=1, sort_keys=True)
        (tmp / _MANIFEST).write_text(text)
        return text

    cached_dir(dest, fill, lock_timeout_s=_LOCK_TIMEOUT_S)
    manifest = json.loads((dest / _MANIFEST).read_text())
    return Bundle(
        path=dest,
        key=key,
        suite=suite,
        arch=arch.name,
        packages=dict(manifest["packages"]),
        skipped=dict(manifest["skipped"]),
        libraries=dict(manifest["libraries"]),
        from_image=dict(manifest["from_image"]),
        substitutions=list(manifest["substitutions"]),
        spec=spec,
        loader=manifest.get("loader"),
    )


# ---------------------------------------------------------------------------------------------------
# Package closure


def base_packages(recipe: Recipe) -> list[str]:
    """Packages the guest image already has: the recipe's (bar the templated Python ones) + libc6, libgcc-s1."""
    names = [name for name in recipe.packages if "{" not in name]  # python{py}-*: never a library dep
    return [*BASE_EXTRA, *[n for n in names if n not in BASE_EXTRA]]


def _is_library_package(name: str) -> bool:
    return name.startswith(("lib", "zlib1g")) and not name.endswith(_NOT_LIBRARY_SUFFIXES)


def resolve_closure(
    index: Mapping[str, list[Package]],
    root: str | Iterable[str],
    base: Iterable[str],
    *,
    where: str,
    spec: BundleSpec = AUDITD,
) -> tuple[list[str], dict[str, str]]:
    """Package names of the roots' dependency closure (roots first) and the dependencies not followed.

    Each Pre-Depends/Depends group is satisfied by its first alternative the index has (a real
    package, else the first package providing it); a group is already satisfied when one of its
    alternatives is in the base image. Only library packages are followed past the root.
    """
    base_set = set(base)
    roots = [root] if isinstance(root, str) else list(root)
    for name in roots:
        if not index.get(name):
            raise FetchError(f"package {name} not found in {where}")
    closure: list[str] = []
    skipped: dict[str, str] = {}
    providers: dict[str, list[str]] | None = None
    queue = list(roots)
    seen = set(roots)
    while queue:
        name = queue.pop(0)
        closure.append(name)
        for group in index[name][0].depends_names():
            if any(alt in base_set for alt in group):
                continue
            chosen = next((alt for alt in group if index.get(alt)), None)
            if chosen is None:
                if providers is None:
                    providers = _providers(index)
                chosen = next((providers[alt][0] for alt in group if providers.get(alt)), None)
            if chosen is None:
                raise FetchError(f"{name}'s dependency {' | '.join(group)} is not in {where}")
            if chosen in base_set or chosen in seen:
                continue
            if chosen in spec.ignored or not _is_library_package(chosen):
                skipped.setdefault(chosen, f"not needed to run {' and '.join(spec.binaries)} (dependency of {name})")
                continue
            seen.add(chosen)
            queue.append(chosen)
    return closure, skipped


def _providers(index: Mapping[str, list[Package]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in sorted(index):
        for virtual in index[name][0].provides_names():
            out.setdefault(virtual, []).append(name)
    return out


# ---------------------------------------------------------------------------------------------------
# Filling the directory


@dataclass
class _Tree:
    """One unpacked package: its libraries by file name, in the dirs the loader searches."""

    package: Package
    root: Path
    libs: dict[str, Path]  # file name (as NEEDED would name it) -> the path (maybe a symlink)


def _canonical(rel: str) -> str:
    head, _, rest = rel.partition("/")
    return f"usr/{head}/{rest}".rstrip("/") if head in _MERGED_USR else rel


def _scan(pkg: Package, root: Path) -> _Tree:
    libs: dict[str, Path] = {}
    for dirpath, _dirs, files in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        if not _LIB_DIR.fullmatch(rel_dir):
            continue
        for name in files:  # symlinks to files (and dangling ones) are listed here too
            if ".so" in name:
                libs.setdefault(name, Path(dirpath) / name)
    return _Tree(pkg, root, libs)


def _resolve_in_tree(tree: _Tree, path: Path) -> Path:
    """Follow symlinks inside the unpacked tree (absolute targets are relative to the tree's root)."""
    current = path
    for _ in range(40):
        if not current.is_symlink():
            return current
        target = os.readlink(current)
        current = tree.root / target.lstrip("/") if target.startswith("/") else current.parent / target
    raise BuildError(f"{path}: symlink loop in {tree.package.name}")


def _in_image(rel: str, recipe: Recipe) -> bool:
    keep = [pattern.format(py="*") for pattern in recipe.keep]
    path = _canonical(rel)
    return any(fnmatchcase(path, p) for p in keep) and not any(fnmatchcase(path, p) for p in recipe.drop)


def _fill(
    out: Path,
    repo: DebianRepo,
    suites: list[str],
    arch: ArchProfile,
    closure: list[str],
    base: list[str],
    recipe: Recipe,
    spec: BundleSpec = AUDITD,
) -> dict[str, object]:
    substitutions: list[str] = []

    def unpack(name: str) -> _Tree:
        pkg, notes = repo.find_fetchable(suites, arch.debian_arch, name)
        substitutions.extend(note.splitlines()[0] for note in notes)
        return _scan(pkg, repo.unpack(pkg))

    trees = [unpack(name) for name in closure]
    packages = {
        t.package.name: t.package.version + ("" if t.package.suite == suites[0] else f" ({t.package.suite})")
        for t in trees
    }
    root_trees = trees[: len(spec.roots)]
    (out / "sbin").mkdir()
    (out / "lib").mkdir()
    pending: list[Path] = []
    dirs = (*_BIN_DIRS, *spec.extra_dirs)
    for binary in spec.binaries:
        found_in = next(
            ((tree, tree.root / d / binary) for tree in root_trees for d in dirs if (tree.root / d / binary).exists()),
            None,
        )
        if found_in is None:
            versions = ", ".join(f"{t.package.name} {t.package.version}" for t in root_trees)
            raise BuildError(
                f"{versions} ({suites[0]}, {arch.debian_arch}) has no {binary} in {', '.join(d + '/' for d in dirs)}"
            )
        dest = out / "sbin" / binary
        shutil.copyfile(_resolve_in_tree(*found_in), dest)
        dest.chmod(0o755)
        pending.append(dest)

    base_trees: dict[str, _Tree | None] = {}

    def in_base(soname: str) -> tuple[_Tree, Path] | None:
        """The image package providing soname, unpacked on demand (libc6 first)."""
        for name in base:
            if name not in base_trees:
                # A name this suite does not have (a t64 rename) provides nothing; other errors propagate.
                known = bool(repo.packages(suites[0], arch.debian_arch).get(name))
                base_trees[name] = unpack(name) if known else None
            tree = base_trees[name]
            if tree is not None and soname in tree.libs:
                return tree, tree.libs[soname]
        return None

    libraries: dict[str, str] = {}
    from_image: dict[str, str] = {}
    # (who needs it, soname): the binaries' DT_NEEDED, then what each copied library needs in turn
    queue = [(binary.name, soname) for binary in pending for soname in elf_needed(binary)]
    queue += [(f"{spec.name} (dlopen)", soname) for soname in spec.dlopened]
    while queue:
        needer, soname = queue.pop(0)
        if soname in libraries or soname in from_image:
            continue
        found = next(((t, t.libs[soname]) for t in trees if soname in t.libs), None)
        if found is None:
            found = in_base(soname)
            if found is not None and _in_image(found[1].relative_to(found[0].root).as_posix(), recipe):
                from_image[soname] = found[0].package.name
                continue
        if found is None:
            raise BuildError(
                f"{needer} needs {soname}, which neither {spec.name}'s closure ({', '.join(closure)}) nor "
                f"the guest image's packages ({', '.join(base)}) provide in {suites[0]} for {arch.debian_arch}"
            )
        tree, lib = found
        real = _resolve_in_tree(tree, lib)
        if not real.is_file():
            raise BuildError(f"{tree.package.name}: {lib.relative_to(tree.root)} points to nothing")
        dest = out / "lib" / soname
        shutil.copyfile(real, dest)
        dest.chmod(0o644)
        libraries[soname] = tree.package.name
        queue += [(soname, name) for name in elf_needed(dest)]
    loader = None
    if spec.self_contained:
        loader = _copy_loader(out, pending[0], trees, libraries)
    return {
        "loader": loader,
        "packages": packages,
        "libraries": dict(sorted(libraries.items())),
        "from_image": dict(sorted(from_image.items())),
        "substitutions": substitutions,
    }


def _copy_loader(out: Path, binary: Path, trees: list[_Tree], libraries: dict[str, str]) -> str:
    """Copy the binary's PT_INTERP (the closure's own glibc loader) into lib/; its file name."""
    interp = elf_interpreter(binary)
    if interp is None:
        raise BuildError(f"{binary.name} has no PT_INTERP: a self-contained bundle is for dynamic programs")
    name = interp.rsplit("/", 1)[-1]
    found = next(((t, t.libs[name]) for t in trees if name in t.libs), None)
    if found is None:
        raise BuildError(f"{binary.name} asks for the loader {interp}, which no package of the bundle provides")
    tree, lib = found
    dest = out / "lib" / name
    if name not in libraries:  # libc.so.6 names it in DT_NEEDED, so usually it is there already
        shutil.copyfile(_resolve_in_tree(tree, lib), dest)
        libraries[name] = tree.package.name
    dest.chmod(0o755)
    return name


# ---------------------------------------------------------------------------------------------------
# ELF: DT_NEEDED, PT_INTERP


_DT_NEEDED = 1
_DT_SONAME = 14
_SHT_DYNAMIC = 6


def elf_dynamic(path: Path) -> tuple[list[str], str | None]:
    """(DT_NEEDED names, DT_SONAME) of an ELF file of any class and byte order."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or len(data) < 64:
        raise BuildError(f"{path}: not an ELF file")
    wide = data[4] == 2
    order = "<" if data[5] == 1 else ">"
    if wide:
        (shoff,) = struct.unpack_from(order + "Q", data, 0x28)
        shentsize, shnum = struct.unpack_from(order + "HH", data, 0x3A)
        sec_fmt, dyn_fmt = order + "IIQQQQIIQQ", order + "qQ"
    else:
        (shoff,) = struct.unpack_from(order + "I", data, 0x20)
        shentsize, shnum = struct.unpack_from(order + "HH", data, 0x2E)
        sec_fmt, dyn_fmt = order + "IIIIIIIIII", order + "iI"
    sections = [struct.unpack_from(sec_fmt, data, shoff + i * shentsize) for i in range(shnum)]
    for _name, sh_type, _flags, _addr, offset, size, link, _info, _align, _entsize in sections:
        if sh_type != _SHT_DYNAMIC:
            continue
        str_offset = sections[link][4]
        needed: list[str] = []
        soname: str | None = None
        step = struct.calcsize(dyn_fmt)
        for pos in range(offset, offset + size - step + 1, step):
            tag, value = struct.unpack_from(dyn_fmt, data, pos)
            if tag == 0:
                break
            if tag in (_DT_NEEDED, _DT_SONAME):
                end = data.index(b"\0", str_offset + value)
                text = data[str_offset + value : end].decode()
                if tag == _DT_NEEDED:
                    needed.append(text)
                else:
                    soname = text
        return needed, soname
    return [], None  # static


def elf_needed(path: Path) -> list[str]:
    return elf_dynamic(path)[0]


_PT_INTERP = 3


def elf_interpreter(path: Path) -> str | None:
    """The program interpreter (PT_INTERP) an ELF executable names, or None (static)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        raise BuildError(f"{path}: not an ELF file")
    wide, order = data[4] == 2, "<" if data[5] == 1 else ">"
    if wide:
        (phoff,) = struct.unpack_from(order + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(order + "HH", data, 0x36)
    else:
        (phoff,) = struct.unpack_from(order + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(order + "HH", data, 0x2A)
    for i in range(phnum):
        at = phoff + i * phentsize
        if struct.unpack_from(order + "I", data, at)[0] != _PT_INTERP:
            continue
        offset, size = (struct.unpack_from(order + "QQQQ", data, at + 8)[0::3] if wide
                        else struct.unpack_from(order + "IIII", data, at + 4)[0::3])
        return data[offset : offset + size].split(b"\0", 1)[0].decode()
    return None
