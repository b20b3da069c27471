"""Build a tiny signed Debian repository on disk, for tests that must not touch a real mirror.

It has a throwaway ed25519 key, a few .debs made with dpkg-deb, Packages indexes (plain, .gz, .xz)
and an InRelease clearsigned with gpg, laid out as a mirror is: ``dists/<suite>/...`` and ``pool/``.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SUITE = "kmxtest"
ARCHS = ("amd64", "arm64")
UID = "kmatrix test <t@example.invalid>"


@dataclass(frozen=True)
class DebSpec:
    name: str
    version: str
    arch: str = "amd64"
    files: Mapping[str, str] = field(default_factory=dict)  # path in the tree -> text content
    symlinks: Mapping[str, str] = field(default_factory=dict)  # path in the tree -> link target
    control: Mapping[str, str] = field(default_factory=dict)  # extra control fields (Depends...)


DEFAULT_DEBS = (
    DebSpec("hello", "1.0-1", files={"usr/share/hello/greeting": "hello 1.0\n"}),
    DebSpec(
        "hello",
        "2.0-1",
        files={"usr/share/hello/greeting": "hello 2.0\n", "boot/vmlinuz-test": "not a kernel\n"},
        symlinks={"usr/bin/hello-link": "/usr/share/hello/greeting", "usr/lib/rel-link": "../share/hello"},
        control={
            "Depends": "libgreet (>= 1.0) | libgreet-alt, base-files:any",
            "Pre-Depends": "dpkg (>= 1.19)",
            "Source": "hello-src (2.0-1)",
        },
    ),
    DebSpec(
        "libgreet",
        "1.0-1",
        files={"usr/lib/libgreet.txt": "greet\n"},
        control={"Provides": "greeting-lib (= 1.0)"},
    ),
    DebSpec("greet-data", "1.0-1", arch="all", files={"usr/share/greet/data": "data\n"}),
)


@dataclass(frozen=True)
class Gpg:
    home: Path

    def run(self, *args: str, stdout: int | None = None) -> subprocess.CompletedProcess[bytes]:
        cmd = [
            "gpg",
            "--homedir",
            str(self.home),
            "--batch",
            "--yes",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            *args,
        ]
        return subprocess.run(cmd, check=True, capture_output=stdout is None, stdout=stdout)

    def export(self, dest: Path, *, armor: bool = False) -> Path:
        with dest.open("wb") as out:
            self.run(*(["--armor"] if armor else []), "--export", stdout=out.fileno())
        return dest

    def clearsign(self, src: Path, dest: Path) -> None:
        self.run("--digest-algo", "SHA256", "--clearsign", "--output", str(dest), str(src))


@contextmanager
def throwaway_gpg() -> Iterator[Gpg]:
    # A short path: gpg-agent's socket must fit in a sockaddr_un.
    home = Path(tempfile.mkdtemp(prefix="kmxgpg-"))
    os.chmod(home, 0o700)
    gpg = Gpg(home)
    try:
        gpg.run("--quick-gen-key", UID, "ed25519", "sign", "never")
        yield gpg
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def build_deb(spec: DebSpec, workdir: Path, pool: Path) -> Path:
    tree = workdir / f"{spec.name}_{spec.version}_{spec.arch}"
    (tree / "DEBIAN").mkdir(parents=True)
    for rel, text in spec.files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    for rel, target in spec.symlinks.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).symlink_to(target)
    control = {
        "Package": spec.name,
        "Version": spec.version,
        "Architecture": spec.arch,
        "Maintainer": UID,
        "Description": f"test package {spec.name}",
        **spec.control,
    }
    (tree / "DEBIAN" / "control").write_text("".join(f"{k}: {v}\n" for k, v in control.items()))
    out = pool / spec.name[0] / spec.name / f"{spec.name}_{spec.version}_{spec.arch}.deb"
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(out)],
        check=True,
        capture_output=True,
    )
    return out


def packages_stanza(deb: Path, root: Path, control: Mapping[str, str]) -> str:
    data = deb.read_bytes()
    fields = {
        **control,
        "Filename": deb.relative_to(root).as_posix(),
        "Size": str(len(data)),
        "SHA256": hashlib.sha256(data).hexdigest(),
    }
    return "".join(f"{k}: {v}\n" for k, v in fields.items())


def write_release(root: Path, gpg: Gpg, suite: str = SUITE, archs: tuple[str, ...] = ARCHS) -> None:
    """(Re)write dists/<suite>/Release from the indexes present, and clearsign it into InRelease."""
    dist = root / "dists" / suite
    lines = [
        f"Origin: kmatrix-test\nSuite: {suite}\nCodename: {suite}\n",
        f"Architectures: {' '.join(archs)}\nComponents: main\nSHA256:\n",
    ]
    for index in sorted(p for p in dist.rglob("Packages*") if p.is_file()):
        data, name = index.read_bytes(), index.relative_to(dist).as_posix()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}\n")
    (dist / "Release").write_text("".join(lines))
    gpg.clearsign(dist / "Release", dist / "InRelease")


def build_repo(root: Path, gpg: Gpg, debs: tuple[DebSpec, ...] = DEFAULT_DEBS) -> None:
    work = root.parent / f"{root.name}-build"
    stanzas: dict[str, list[str]] = {arch: [] for arch in ARCHS}
    for spec in debs:
        deb = build_deb(spec, work, root / "pool" / "main")
        control = subprocess.run(["dpkg-deb", "--field", str(deb)], check=True, capture_output=True, text=True).stdout
        parsed = dict(line.split(": ", 1) for line in control.splitlines() if ": " in line)
        for arch in ARCHS if spec.arch == "all" else (spec.arch,):
            stanzas[arch].append(packages_stanza(deb, root, parsed))
    for arch, entries in stanzas.items():
        folder = root / "dists" / SUITE / "main" / f"binary-{arch}"
        folder.mkdir(parents=True)
        text = "\n".join(entries).encode()
        (folder / "Packages").write_bytes(text)
        (folder / "Packages.gz").write_bytes(gzip.compress(text))
        (folder / "Packages.xz").write_bytes(lzma.compress(text))
    write_release(root, gpg)
    shutil.rmtree(work)
