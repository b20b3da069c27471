"""A Debian archive client that needs no root: signed indexes, verified .debs, unpacked trees.

Trust chain, as apt does it: the suite's ``InRelease`` is checked with ``gpgv`` against the Debian
archive keyring; only the signed text gpgv hands back is parsed; it lists the sha256 of every index;
every index lists the sha256 of every .deb. Everything lands in a cache, written atomically under
per-file locks, so parallel processes share it and a later run works with the network gone.
"""

from __future__ import annotations

import base64
import difflib
import errno
import gc
import gzip
import hashlib
import http.client
import io
import json
import logging
import lzma
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import filelock
from debian.deb822 import Deb822, Release
from debian.debfile import DebError, DebFile
from debian.debian_support import Version

from harness.errors import ConfigError, FetchError, KmatrixError
from harness.paths import cache_write_error

log = logging.getLogger("kmatrix.debian")

DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
MIRROR_HINT = "set KMATRIX_MIRROR=<uri of a Debian mirror>"
INSTALL_HINT = "apt-get install gpgv debian-archive-keyring"

Progress = Callable[[str, int, int | None], None]

_CHUNK = 1 << 20
_LOCK_TIMEOUT_S = 3600.0  # a peer may be downloading a large kernel package over a slow link
_PARSED_FORMAT = 1  # bump when the parsed-index cache layout changes
_SAFE_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_~-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PKG_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9.+-]*)")
_ONE_LINE_DEB = re.compile(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)")
# What a failed transfer raises: URLError, HTTPError, timeouts and resets are OSErrors; a truncated
# HTTP body is not.
_NET_ERRORS = (OSError, http.client.HTTPException)
_INDEX_SUFFIXES = (".xz", ".gz", "")  # preference order of the Packages index compressions


# ---------------------------------------------------------------------------------------------------
# Which mirror


def host_mirror(
    environ: Mapping[str, str] | None = None,
    sources_dir: Path = Path("/etc/apt/sources.list.d"),
    sources_list: Path = Path("/etc/apt/sources.list"),
) -> str:
    """The Debian mirror to use: ``KMATRIX_MIRROR``, else the first ``/debian`` URI in apt's sources."""
    env = os.environ if environ is None else environ
    override = env.get("KMATRIX_MIRROR", "").strip()
    if override:
        return override.rstrip("/")
    read: list[str] = []
    for path in _source_files(sources_list, sources_dir):
        read.append(str(path))
        for uri in _deb_uris(path):
            if _is_debian_archive(uri):
                return uri.rstrip("/")
    files = ", ".join(read) if read else f"none found ({sources_list}, {sources_dir}/*.sources, *.list)"
    raise ConfigError(
        f"no Debian archive URI (path ending in /debian) in the apt sources; read: {files}", hint=MIRROR_HINT
    )


def _source_files(sources_list: Path, sources_dir: Path) -> list[Path]:
    # apt's own order: sources.list first, then the directory's entries sorted by name.
    files = [sources_list] if sources_list.is_file() else []
    if sources_dir.is_dir():
        files += sorted(p for p in sources_dir.iterdir() if p.suffix in (".sources", ".list") and p.is_file())
    return files


def _deb_uris(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        log.warning("cannot read %s: %s", path, e)
        return []
    if path.suffix == ".sources":
        return _deb822_uris(text)
    uris = []
    for line in text.splitlines():
        match = _ONE_LINE_DEB.match(line.split("#", 1)[0].strip())
        if match:
            uris.append(match.group(1))
    return uris


def _deb822_uris(text: str) -> list[str]:
    uris: list[str] = []
    for para in Deb822.iter_paragraphs(text.splitlines(keepends=True)):
        if "deb" not in str(para.get("Types", "")).split():
            continue
        if str(para.get("Enabled", "yes")).strip().lower() == "no":
            continue
        uris += str(para.get("URIs", "")).split()
    return uris


def _is_debian_archive(uri: str) -> bool:
    # Only the main archive: debian-security, debian-ports and friends carry other suites or archs.
    parts = urllib.parse.urlsplit(uri)
    return parts.scheme in ("http", "https", "file") and parts.path.rstrip("/").endswith("/debian")


def default_keyrings(environ: Mapping[str, str] | None = None) -> list[Path]:
    """``KMATRIX_KEYRING`` (colon-separated), else the debian-archive-keyring package's keyring."""
    env = os.environ if environ is None else environ
    configured = [Path(p) for p in env.get("KMATRIX_KEYRING", "").split(":") if p.strip()]
    return configured or [DEFAULT_KEYRING]


# ---------------------------------------------------------------------------------------------------
# Packages


@dataclass(frozen=True)
class Package:
    """One binary package as an index lists it."""

    name: str
    version: str
    architecture: str
    filename: str
    sha256: str
    size: int
    depends: str = ""
    pre_depends: str = ""
    provides: str = ""
    source: str = ""
    suite: str = ""

    def depends_names(self) -> list[list[str]]:
        """Pre-Depends then Depends, as OR-groups of bare package names."""
        return _relation_names(self.pre_depends) + _relation_names(self.depends)

    def provides_names(self) -> list[str]:
        return [group[0] for group in _relation_names(self.provides)]

    @property
    def source_name(self) -> str:
        """The source package's name (the ``Source`` field may carry a version in parentheses)."""
        return self.source.split(" ", 1)[0] if self.source else self.name


def _relation_names(field: str) -> list[list[str]]:
    groups = []
    for clause in field.split(","):
        names = []
        for alternative in clause.split("|"):
            # The name ends at the version constraint, arch list or ":any"/":native" qualifier.
            match = _PKG_NAME.match(alternative)
            if match:
                names.append(match.group(1))
        if names:
            groups.append(names)
    return groups


# Packages fields kept, in Package's positional order (suite is added when loading).
_FIELDS = (
    "Package",
    "Version",
    "Architecture",
    "Filename",
    "SHA256",
    "Size",
    "Depends",
    "Pre-Depends",
    "Provides",
    "Source",
)
_FIELD_INDEX = {name: i for i, name in enumerate(_FIELDS)}
_SIZE = _FIELD_INDEX["Size"]

Row = list[Any]


def parse_packages(text: str) -> list[Row]:
    """Rows of the kept fields from a Packages index.

    A plain split on blank lines: python-debian's general parser takes many seconds on sid's
    ~60 MB index, and these fields need none of its generality.
    """
    rows: list[Row] = []
    for para in text.split("\n\n"):
        fields: Row = [""] * len(_FIELDS)
        current = -1
        for line in para.split("\n"):
            if not line:
                continue
            if line[0] in " \t":  # a folded field continues
                if current >= 0:
                    fields[current] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            current = _FIELD_INDEX.get(key, -1)
            if current >= 0:
                fields[current] = value.strip()
        if fields[0] and fields[3] and fields[4] and fields[_SIZE].isdigit():
            fields[_SIZE] = int(fields[_SIZE])
            rows.append(fields)
        elif fields[0]:
            log.warning("index entry for %s lacks Filename/SHA256/Size; skipped", fields[0])
    return rows


def _group_rows(rows: list[Row], suite: str) -> dict[str, list[Package]]:
    make = cast(Callable[..., Package], Package)  # rows hold every field before suite, in order
    by_name: dict[str, list[Package]] = {}
    for row in rows:
        pkg = make(*row, suite)
        versions = by_name.get(pkg.name)
        if versions is None:
            by_name[pkg.name] = [pkg]
        else:
            versions.append(pkg)
    for versions in by_name.values():
        if len(versions) > 1:
            versions.sort(key=_version_key, reverse=True)
    return by_name


def _version_key(pkg: Package) -> Any:
    try:
        return Version(pkg.version)
    except ValueError:  # a malformed version sorts as the oldest rather than breaking the index
        return Version("0~~")


def _same_version(a: str, b: str) -> bool:
    try:
        return bool(Version(a) == Version(b))
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------------
# Signed releases


@dataclass(frozen=True)
class IndexFile:
    """An index as the signed Release lists it."""

    path: str  # relative to dists/<suite>/
    sha256: str
    size: int


@dataclass(frozen=True)
class ReleaseInfo:
    """The parts of a verified Release file this client uses."""

    suite: str
    codename: str
    architectures: frozenset[str]
    components: frozenset[str]
    files: Mapping[str, IndexFile]
    acquire_by_hash: bool


def gpgv_accepts(status: str) -> bool:
    """True iff gpgv's status output shows a good, valid signature and no bad one.

    gpgv exits non-zero when one of several signatures is by a key we lack (Debian signs with two
    keys), so its exit code alone is not the answer. GOODSIG is left out for expired or revoked keys.
    """
    words = {line.split()[1] for line in status.splitlines() if line.startswith("[GNUPG:] ") and len(line.split()) > 1}
    return "VALIDSIG" in words and "GOODSIG" in words and "BADSIG" not in words


def _keyring_for_gpgv(keyring: Path, workdir: Path) -> Path:
    # gpgv reads only binary keyrings: dearmor .asc ones. A name without a slash would be looked
    # up in ~/.gnupg, so always pass an absolute path.
    data = keyring.read_bytes()
    if not data.lstrip().startswith(b"-----BEGIN PGP"):
        return keyring.resolve()
    out = workdir / f"keyring-{len(list(workdir.iterdir()))}.gpg"
    out.write_bytes(_dearmor(data.decode("ascii", errors="replace")))
    return out


def _dearmor(text: str) -> bytes:
    body: list[str] = []
    in_block = in_body = False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("-----BEGIN PGP"):
            in_block, in_body = True, False
        elif line.startswith("-----END PGP"):
            in_block = False
        elif in_block and not in_body:
            in_body = not line or ":" not in line  # armor headers end at a blank line
            if in_body and line:
                body.append(line)
        elif in_block and not line.startswith("="):  # "=XXXX" is the CRC24 line
            body.append(line)
    return base64.b64decode("".join(body))


def verify_inrelease(data: bytes, keyrings: Sequence[Path], *, what: str) -> str:
    """The signed text of an InRelease file, or FetchError if gpgv does not vouch for it."""
    missing = [str(k) for k in keyrings if not k.is_file()]
    if missing or not keyrings:
        raise FetchError(
            f"archive keyring not found: {', '.join(missing) or '(none given)'}",
            hint=f"{INSTALL_HINT}, or set KMATRIX_KEYRING=<keyring.gpg>[:<more>]",
        )
    with tempfile.TemporaryDirectory(prefix="kmatrix-gpgv-") as tmp:
        work = Path(tmp)
        try:
            (work / "InRelease").write_bytes(data)
            cmd = ["gpgv", "--homedir", str(work), "--status-fd", "1", "--output", str(work / "Release")]
            for keyring in keyrings:
                cmd += ["--keyring", str(_keyring_for_gpgv(keyring, work))]
        except OSError as e:  # a full temporary directory: name it, not the cache the caller writes to
            mapped = cache_write_error(work, e)
            if mapped is None or e.errno not in (errno.ENOSPC, errno.EDQUOT):  # EACCES on a keyring is not ours
                raise
            raise mapped from e
        cmd.append(str(work / "InRelease"))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except FileNotFoundError as e:
            raise FetchError("gpgv is not installed: cannot verify the archive signature", hint=INSTALL_HINT) from e
        except subprocess.TimeoutExpired as e:
            raise FetchError(f"gpgv timed out verifying {what}") from e
        if not gpgv_accepts(proc.stdout) or not (work / "Release").is_file():
            raise FetchError(
                f"{what}: signature not valid for keyrings {', '.join(map(str, keyrings))}: "
                f"{_status_summary(proc.stdout, proc.stderr)}",
                hint="the mirror served a file not signed by a trusted Debian archive key; "
                f"check the mirror or KMATRIX_KEYRING ({INSTALL_HINT})",
            )
        return (work / "Release").read_text(encoding="utf-8")


def _status_summary(status: str, stderr: str) -> str:
    wanted = {"GOODSIG", "BADSIG", "ERRSIG", "NO_PUBKEY", "EXPKEYSIG", "REVKEYSIG", "NODATA", "VALIDSIG"}
    lines = [
        line.removeprefix("[GNUPG:] ")
        for line in status.splitlines()
        if line.startswith("[GNUPG:] ") and line.split()[1:2] and line.split()[1] in wanted
    ]
    if lines:
        return "; ".join(lines)
    errors = stderr.strip().splitlines()
    return errors[-1] if errors else "gpgv said nothing"


def parse_release(text: str) -> ReleaseInfo:
    release = Release(text)
    files: dict[str, IndexFile] = {}
    for entry in release.get("SHA256", []):
        files[entry["name"]] = IndexFile(entry["name"], entry["sha256"].lower(), int(entry["size"]))
    return ReleaseInfo(
        suite=str(release.get("Suite", "")),
        codename=str(release.get("Codename", "")),
        architectures=frozenset(str(release.get("Architectures", "")).split()),
        components=frozenset(str(release.get("Components", "")).split()),
        files=files,
        acquire_by_hash=str(release.get("Acquire-By-Hash", "no")).strip().lower() == "yes",
    )


# ---------------------------------------------------------------------------------------------------
# Small file helpers


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_digest(path: Path) -> tuple[str, int]:
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256")
    return digest.hexdigest(), path.stat().st_size


def _rmtree(path: Path) -> None:
    # Packages can ship read-only directories; make them writable so removal can proceed.
    def onerror(func: Callable[..., Any], failed: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(failed) or ".", stat.S_IRWXU)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, stat.S_IRWXU)
        func(failed)

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=onerror)


def _remove_stale_temps(target: Path) -> None:
    # Called with target's lock held, so any temp for target is a leftover of a killed process.
    for leftover in target.parent.glob(f".{target.name}.tmp-*"):
        _rmtree(leftover)


def _no_devices_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    # The "tar" filter keeps absolute symlinks and refuses escaping paths; device nodes and fifos
    # cannot be made without root, and dpkg -x as a user skips them as well.
    kept = tarfile.tar_filter(member, dest)
    if kept is not None and (kept.ischr() or kept.isblk() or kept.isfifo()):
        return None
    return kept


class MissingFromPool(FetchError):
    """The index names a .deb that the mirror's pool no longer (or not yet) holds."""


class _Mismatch(Exception):
    """A download did not match the checksum or size its signed parent lists (retryable)."""


class _Unreachable(Exception):
    """A download failed in transit (retryable)."""


def _retry_hint(failure: Exception | None) -> str:
    if isinstance(failure, _Unreachable):
        return f"check the network and that the mirror is up, or {MIRROR_HINT}"
    return f"the mirror may be in the middle of a sync: try again in a few minutes, or {MIRROR_HINT}"


# ---------------------------------------------------------------------------------------------------
# The client


class DebianRepo:
    """One Debian mirror, cached under ``cache_dir/debian/<short sha of the mirror URI>/``."""

    def __init__(
        self,
        mirror: str,
        cache_dir: Path,
        keyrings: Sequence[Path] | None = None,
        *,
        refresh_after_s: float = 6 * 3600,
        retries: int = 3,
        retry_delay_s: float = 2.0,
        progress: Progress | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.mirror = mirror.strip().rstrip("/")
        scheme = urllib.parse.urlsplit(self.mirror).scheme
        if scheme not in ("http", "https", "file"):
            raise ConfigError(
                f"unsupported mirror URI {self.mirror!r}: need http://, https:// or file://", hint=MIRROR_HINT
            )
        self.root = cache_dir / "debian" / hashlib.sha256(self.mirror.encode()).hexdigest()[:16]
        self.keyrings = list(keyrings) if keyrings is not None else default_keyrings()
        self.refresh_after_s = refresh_after_s
        self.retries = max(1, retries)
        self.retry_delay_s = retry_delay_s
        self.progress = progress
        self.timeout_s = timeout_s
        self._releases: dict[str, ReleaseInfo] = {}
        self._indexes: dict[tuple[str, str, str], dict[str, list[Package]]] = {}
        # .debs this process already found missing from the pool: not asked for again.
        self._missing: dict[str, MissingFromPool] = {}

    def __repr__(self) -> str:
        return f"DebianRepo({self.mirror!r}, cache={self.root})"

    # -- public ------------------------------------------------------------------------------------

    def release(self, suite: str, *, refresh: bool = False) -> ReleaseInfo:
        """The suite's verified Release; cached, refreshed when older than ``refresh_after_s``."""
        _check_word("suite", suite)
        if not refresh and suite in self._releases:
            return self._releases[suite]
        info = self._load_release(suite, force=refresh)
        self._releases[suite] = info
        return info

    def packages(self, suite: str, arch: str, component: str = "main") -> dict[str, list[Package]]:
        """Every package of ``<suite>/<component>/binary-<arch>``: name -> versions, newest first."""
        _check_word("architecture", arch)
        _check_word("component", component)
        key = (suite, arch, component)
        if key not in self._indexes:
            self._indexes[key] = self._load_packages(suite, arch, component)
        return self._indexes[key]

    def find(self, suite: str, arch: str, name: str, version: str | None = None, *, component: str = "main") -> Package:
        """The newest ``name`` in the suite, or exactly ``version``."""
        pkgs = self.packages(suite, arch, component)
        where = f"{suite}/{component}/binary-{arch}"
        versions = pkgs.get(name)
        if not versions:
            raise FetchError(f"package {name} not found in {where}", hint=_not_found_hint(name, pkgs))
        if version is None:
            return versions[0]
        for pkg in versions:
            if pkg.version == version or _same_version(pkg.version, version):
                return pkg
        raise FetchError(
            f"package {name} version {version} not found in {where} (it has {', '.join(p.version for p in versions)})",
            hint="the pool keeps only current versions: use one of those, or leave the version out to take the newest",
        )

    def fetch(self, pkg: Package) -> Path:
        """The package's .deb in the cache, checked against the index's sha256 on every call."""
        _check_package(pkg)
        dest = self.root / "debs" / pkg.sha256[:16] / Path(pkg.filename).name
        with self._locked(dest):
            if dest.is_file():
                if _file_digest(dest) == (pkg.sha256, pkg.size):
                    return dest
                log.warning("cached %s does not match its index entry; fetching it again", dest)
                dest.unlink()
            self._download_verified(pkg, dest)
            return dest

    def find_fetchable(self, suites: Sequence[str], arch: str, name: str) -> tuple[Package, list[str]]:
        """Newest `name` from the first suite whose .deb is really in the pool.

        Mirrors drop superseded files before every index stops naming them (seen here: trixie's
        s390x index named a libc6 the pool no longer had). Returns the package and one note per
        suite passed over, so results can record the substitution.
        """
        notes: list[str] = []
        last: FetchError | None = None
        for suite in suites:
            try:
                pkg = self.find(suite, arch, name)
                if pkg.sha256 in self._missing:
                    raise self._missing[pkg.sha256]
                self.fetch(pkg)
                return pkg, notes
            except MissingFromPool as error:
                self._missing[pkg.sha256] = error
                notes.append(f"{name} from {suite} is missing from the pool ({error}); trying the next suite")
                last = error
            except FetchError as error:
                if last is None:
                    last = error
                notes.append(f"{name} not usable from {suite}: {str(error).splitlines()[0]}")
        assert last is not None
        raise FetchError(
            f"{name} ({arch}) could not be fetched from any of {', '.join(suites)}: {last}", hint=last.hint
        )

    def unpack(self, pkg: Package) -> Path:
        """The .deb's data extracted like ``dpkg -x``; the tree is cached, keyed by sha256."""
        _check_package(pkg)
        final = self.root / "unpacked" / f"{pkg.sha256[:16]}_{pkg.name}"
        marker = final.with_name(final.name + ".sha256")
        with self._locked(final):
            if _unpacked(final, marker, pkg.sha256):
                return final
        deb = self.fetch(pkg)  # not under final's lock: never hold one lock while taking another
        with self._locked(final):
            if _unpacked(final, marker, pkg.sha256):
                return final
            _rmtree(final)  # a half-done tree from an interrupted run (no marker)
            marker.unlink(missing_ok=True)
            _remove_stale_temps(final)
            tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
            try:
                _extract_data(deb, tmp, final)
                os.rename(tmp, final)
            except BaseException:
                _rmtree(tmp)
                raise
            _atomic_write(marker, pkg.sha256.encode() + b"\n")
            return final

    # -- InRelease ---------------------------------------------------------------------------------

    def _load_release(self, suite: str, *, force: bool) -> ReleaseInfo:
        path = self.root / "dists" / suite / "InRelease"
        url = f"{self.mirror}/dists/{suite}/InRelease"
        with self._locked(path):
            fresh = path.is_file() and time.time() - path.stat().st_mtime < self.refresh_after_s
            if fresh and not force:
                try:
                    return self._verified_release(path.read_bytes(), suite, url + " (cached)")
                except FetchError as e:
                    log.warning("cached %s is no longer valid (%s); fetching it again", path, e)
            try:
                data = self._get_bytes(url, f"{suite}/InRelease")
            except _NET_ERRORS as e:
                return self._offline_release(path, suite, url, e)
            info = self._verified_release(data, suite, url)  # a bad signature is never cached
            _atomic_write(path, data)
            return info

    def _offline_release(self, path: Path, suite: str, url: str, err: BaseException) -> ReleaseInfo:
        if path.is_file():
            log.warning(
                "cannot refresh %s (%s); using the cached copy from %s",
                url,
                err,
                time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime)),
            )
            return self._verified_release(path.read_bytes(), suite, url + " (cached)")
        if isinstance(err, urllib.error.HTTPError) and err.code == 404:
            raise FetchError(
                f"{url}: not found (404): the mirror does not carry suite {suite}",
                hint="check the suite name, or " + MIRROR_HINT,
            ) from err
        raise FetchError(
            f"{url}: cannot reach the mirror and nothing is cached ({err})",
            hint=f"check the network, or {MIRROR_HINT}",
        ) from err

    def _verified_release(self, data: bytes, suite: str, what: str) -> ReleaseInfo:
        info = parse_release(verify_inrelease(data, self.keyrings, what=what))
        # A validly signed Release of another suite must not stand in for this one.
        if suite not in (info.suite, info.codename):
            raise FetchError(
                f"{what}: signed Release is for suite {info.suite or '?'} "
                f"(codename {info.codename or '?'}), not {suite}",
                hint="the mirror is misconfigured or serving the wrong suite; " + MIRROR_HINT,
            )
        return info

    # -- Packages index ----------------------------------------------------------------------------

    def _load_packages(self, suite: str, arch: str, component: str) -> dict[str, list[Package]]:
        failure: Exception | None = None
        for attempt in range(self.retries):
            info = self.release(suite, refresh=attempt > 0)  # a mid-sync mirror may have moved on
            entry = _index_entry(info, suite, arch, component)
            try:
                with _gc_paused():
                    return _group_rows(self._index_rows(suite, info, entry), suite)
            except (_Mismatch, _Unreachable) as e:
                failure = e
                log.warning("attempt %d/%d: %s", attempt + 1, self.retries, e)
                if attempt + 1 < self.retries:
                    time.sleep(self.retry_delay_s)
        raise FetchError(f"{failure} (gave up after {self.retries} attempts)", hint=_retry_hint(failure))

    def _index_rows(self, suite: str, info: ReleaseInfo, entry: IndexFile) -> list[Row]:
        parsed = self.root / "indexes" / f"{entry.sha256}.json"
        with self._locked(parsed):
            rows = _read_parsed(parsed)
            if rows is not None:
                return rows
            data = self._get_index(suite, info, entry)
            rows = parse_packages(_decompress(data, entry.path).decode("utf-8", errors="replace"))
            payload = {"format": _PARSED_FORMAT, "rows": rows}
            _atomic_write(parsed, json.dumps(payload, separators=(",", ":")).encode())
            return rows

    def _get_index(self, suite: str, info: ReleaseInfo, entry: IndexFile) -> bytes:
        url = f"{self.mirror}/dists/{suite}/{entry.path}"
        name = f"{suite}/{entry.path}"
        if info.acquire_by_hash:
            # by-hash files never change under a given name, which sidesteps most mid-sync races.
            folder = entry.path.rsplit("/", 1)[0]
            by_hash = f"{self.mirror}/dists/{suite}/{folder}/by-hash/SHA256/{entry.sha256}"
            try:
                return _checked(self._get_bytes(by_hash, name, limit=entry.size), entry, by_hash)
            except urllib.error.HTTPError as e:
                log.info("%s: %s; trying %s", by_hash, e, url)
            except _NET_ERRORS as e:
                raise _Unreachable(f"{by_hash}: {e}") from e
        try:
            data = self._get_bytes(url, name, limit=entry.size)
        except _NET_ERRORS as e:
            raise _Unreachable(f"{url}: {e}") from e
        return _checked(data, entry, url)

    # -- .deb --------------------------------------------------------------------------------------

    def _download_verified(self, pkg: Package, dest: Path) -> None:
        url = f"{self.mirror}/{pkg.filename}"
        _remove_stale_temps(dest)
        failure: Exception | None = None
        for attempt in range(self.retries):
            fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.tmp-")
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as sink:
                    got = self._get(url, Path(pkg.filename).name, sink, limit=pkg.size, dest=dest)
                if got == (pkg.sha256, pkg.size):
                    # Trust what landed on disk, not only what streamed past: a short write must not pass.
                    written = _file_digest(tmp)
                    if written == got:
                        os.replace(tmp, dest)
                        return
                    got = written
                failure = _Mismatch(
                    f"{url}: sha256/size mismatch: expected {pkg.sha256} ({pkg.size} bytes), "
                    f"got {got[0]} ({got[1]} bytes)"
                )
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    raise MissingFromPool(
                        f"{url}: not found (404): {pkg.name} {pkg.version} is no longer in the mirror's pool",
                        hint="the index was stale: resolve the package "
                        "again (newest in suite) and record the version found",
                    ) from e
                failure = _Unreachable(f"{url}: {e}")
            except _NET_ERRORS as e:
                failure = _Unreachable(f"{url}: {e}")
            finally:
                tmp.unlink(missing_ok=True)
            log.warning("attempt %d/%d: %s", attempt + 1, self.retries, failure)
            if attempt + 1 < self.retries:
                time.sleep(self.retry_delay_s)
        raise FetchError(f"{failure} (gave up after {self.retries} attempts)", hint=_retry_hint(failure))

    # -- transport ---------------------------------------------------------------------------------

    def _get_bytes(self, url: str, name: str, limit: int | None = None) -> bytes:
        sink = io.BytesIO()
        self._get(url, name, sink, limit=limit)
        return sink.getvalue()

    def _get(
        self, url: str, name: str, sink: IO[bytes], *, limit: int | None = None, dest: Path | None = None
    ) -> tuple[str, int]:
        """Stream ``url`` into ``sink``; (sha256, size). Stops one byte past ``limit``.

        ``dest`` names the cache file a file ``sink`` is for: a failed write to it raises a
        KmatrixError at once instead of the OSError a failed transfer raises (which is retried).
        """
        request = urllib.request.Request(url, headers={"User-Agent": "kmatrix"})
        digest = hashlib.sha256()
        done = 0
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else limit
            self._report(name, 0, total)
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                _write_sink(sink, chunk, dest)
                done += len(chunk)
                self._report(name, done, total)
                if limit is not None and done > limit:
                    break  # more than the signed size: no point reading on
            _write_sink(sink, b"", dest)  # flush here, so a full disk is not mistaken for the network
        return digest.hexdigest(), done

    def _report(self, name: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(name, done, total)

    @contextmanager
    def _locked(self, target: Path) -> Iterator[None]:
        """Hold ``target``'s lock; every write to the cache happens inside one of these.

        So this is where a full or read-only cache becomes one clear CacheError naming the path
        (each writer removes its own temporary files on the way out).
        """
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            lock = filelock.FileLock(str(target) + ".lock", timeout=_LOCK_TIMEOUT_S)
            try:
                lock.acquire()
            except filelock.Timeout as e:
                raise FetchError(
                    f"timed out waiting for the lock on {target}",
                    hint="another kmatrix process holds it; delete the .lock if none runs",
                ) from e
            try:
                yield
            finally:
                lock.release()
        except OSError as e:
            mapped = _cache_error(self.root, target, e)
            if mapped is None:
                raise
            raise mapped from e


def _write_sink(sink: IO[bytes], data: bytes, dest: Path | None) -> None:
    try:
        if data:
            sink.write(data)
        else:
            sink.flush()
    except OSError as e:
        if dest is None:
            raise
        mapped = cache_write_error(dest, e)
        raise mapped or FetchError(f"cannot write {dest}: {e}") from e


def _cache_error(root: Path, where: Path, error: OSError) -> KmatrixError | None:
    # A read-only/permission error about a file outside the cache (a keyring, say) is not the cache's.
    named = Path(os.fsdecode(error.filename)) if error.filename else None
    not_writable = error.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    if named is not None and not_writable and not named.is_relative_to(root.parent.parent):
        return None
    return cache_write_error(where, error)


_gc_lock = threading.Lock()
_gc_depth = 0
_gc_was_enabled = True


@contextmanager
def _gc_paused() -> Iterator[None]:
    # Building ~80k objects triggers many pointless cyclic-GC passes: a third of sid's load time.
    # Counted, so threads loading indexes at once leave the collector as they found it.
    global _gc_depth, _gc_was_enabled
    with _gc_lock:
        if _gc_depth == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_depth += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_was_enabled:
                gc.enable()


def _check_word(what: str, value: str) -> None:
    # Suites, archs and components end up in URLs and cache paths.
    if not _SAFE_WORD.fullmatch(value):
        raise ConfigError(f"invalid {what} {value!r}")


def _check_package(pkg: Package) -> None:
    # Index fields become cache paths: refuse anything that could climb out of the cache.
    if not _SHA256.fullmatch(pkg.sha256) or not _SAFE_WORD.fullmatch(pkg.name):
        raise FetchError(f"refusing index entry with name {pkg.name!r} and sha256 {pkg.sha256!r}")
    _check_pool_path(pkg.filename)


def _check_pool_path(filename: str) -> None:
    parts = filename.split("/")
    if not filename or filename.startswith("/") or ".." in parts or "" in parts:
        raise FetchError(f"refusing suspicious Filename {filename!r} from the index")


def _index_entry(info: ReleaseInfo, suite: str, arch: str, component: str) -> IndexFile:
    if info.architectures and arch not in info.architectures:
        raise FetchError(
            f"suite {suite} does not carry architecture {arch} (it has: {', '.join(sorted(info.architectures))})",
            hint="pick another suite for this architecture (e.g. loong64 is only in sid)",
        )
    if info.components and component not in info.components:
        raise FetchError(f"suite {suite} has no component {component} (it has: {', '.join(sorted(info.components))})")
    for suffix in _INDEX_SUFFIXES:
        entry = info.files.get(f"{component}/binary-{arch}/Packages{suffix}")
        if entry is not None:
            return entry
    raise FetchError(
        f"suite {suite}'s Release lists no {component}/binary-{arch}/Packages index",
        hint=f"the suite may not carry architecture {arch}",
    )


def _checked(data: bytes, entry: IndexFile, url: str) -> bytes:
    got = hashlib.sha256(data).hexdigest()
    if (got, len(data)) != (entry.sha256, entry.size):
        raise _Mismatch(
            f"{url}: sha256/size mismatch with InRelease: expected {entry.sha256} "
            f"({entry.size} bytes), got {got} ({len(data)} bytes)"
        )
    return data


def _decompress(data: bytes, path: str) -> bytes:
    try:
        if path.endswith(".xz"):
            return lzma.decompress(data)
        if path.endswith(".gz"):
            return gzip.decompress(data)
    except (lzma.LZMAError, OSError, EOFError) as e:
        raise FetchError(f"cannot decompress {path}: {e}") from e
    return data


def _read_parsed(path: Path) -> list[Row] | None:
    try:
        payload = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable parsed index %s: %s", path, e)
        return None
    if not isinstance(payload, dict) or payload.get("format") != _PARSED_FORMAT:
        return None
    rows = payload.get("rows")
    return rows if isinstance(rows, list) else None


def _not_found_hint(name: str, pkgs: Mapping[str, list[Package]]) -> str:
    providers = sorted({p.name for versions in pkgs.values() for p in versions[:1] if name in p.provides_names()})
    if providers:
        return f"{name} is a virtual package provided by: {', '.join(providers[:8])}"
    close = difflib.get_close_matches(name, list(pkgs), n=5, cutoff=0.75)
    if close:
        return f"did you mean: {', '.join(close)}?"
    return "check the package name (apt-cache search on a Debian host can help)"


def _unpacked(final: Path, marker: Path, sha256: str) -> bool:
    try:
        return final.is_dir() and marker.read_text().strip() == sha256
    except OSError:
        return False


def _extract_data(deb: Path, dest: Path, shown: Path) -> None:
    try:
        with DebFile(str(deb)) as debfile:
            debfile.data.tgz().extractall(dest, filter=_no_devices_filter)
    except OSError as e:
        # A full or read-only cache is not a damaged package: say so instead of blaming the .deb.
        mapped = cache_write_error(shown, e)
        if mapped is not None:
            raise mapped from e
        raise _unpack_error(deb, e) from e
    except (DebError, tarfile.TarError, EOFError, lzma.LZMAError) as e:
        raise _unpack_error(deb, e) from e


def _unpack_error(deb: Path, e: BaseException) -> FetchError:
    return FetchError(
        f"cannot unpack {deb}: {e}",
        hint=f"delete {deb} and try again; if it persists the package is damaged",
    )
