"""harness.debian against a tiny signed repository built on the fly: no network, no real mirror."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import logging
import multiprocessing
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from debrepo_fixture import SUITE, Gpg, build_repo, throwaway_gpg, write_release

from harness import debian
from harness.debian import DebianRepo, Package, gpgv_accepts, host_mirror, parse_packages
from harness.errors import ConfigError, FetchError

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("gpg", "gpg-agent", "gpgv", "dpkg-deb", "gpgconf")),
    reason="needs gpg, gpg-agent, gpgv and dpkg-deb (./bootstrap installs them)",
)


@dataclasses.dataclass(frozen=True)
class Repo:
    root: Path
    keyring: Path
    other_keyring: Path  # a key that signed nothing
    gpg: Gpg

    @property
    def url(self) -> str:
        return self.root.as_uri()


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gpg, Path, Path]]:
    keys = tmp_path_factory.mktemp("keys")
    with throwaway_gpg() as gpg, throwaway_gpg() as other:
        yield gpg, gpg.export(keys / "test.gpg"), other.export(keys / "other.gpg")


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory, signing_keys: tuple[Gpg, Path, Path]) -> Repo:
    gpg, keyring, other = signing_keys
    root = tmp_path_factory.mktemp("repo") / "debian"
    build_repo(root, gpg)
    return Repo(root, keyring, other, gpg)


@pytest.fixture
def repo(pristine: Repo, tmp_path: Path) -> Repo:
    """A private copy of the mirror, which a test may damage."""
    root = tmp_path / "mirror" / "debian"
    shutil.copytree(pristine.root, root, symlinks=True)
    return dataclasses.replace(pristine, root=root)


def client(repo: Repo, cache: Path, **kwargs: object) -> DebianRepo:
    kwargs.setdefault("retry_delay_s", 0)
    return DebianRepo(repo.url, cache, [repo.keyring], **kwargs)  # type: ignore[arg-type]


# -- happy path ------------------------------------------------------------------------------------


def test_fetch_and_unpack_round_trip(pristine: Repo, tmp_path: Path) -> None:
    repo = client(pristine, tmp_path)
    pkg = repo.find(SUITE, "amd64", "hello")
    deb = repo.fetch(pkg)
    assert deb.read_bytes() == (pristine.root / pkg.filename).read_bytes()
    tree = repo.unpack(pkg)
    assert (tree / "usr/share/hello/greeting").read_text() == "hello 2.0\n"
    assert (tree / "boot/vmlinuz-test").is_file()
    link = tree / "usr/bin/hello-link"
    assert link.is_symlink() and os.readlink(link) == "/usr/share/hello/greeting"
    assert os.readlink(tree / "usr/lib/rel-link") == "../share/hello"
    assert repo.unpack(pkg) == tree  # cached
    assert not list(tree.parent.glob(".*tmp-*"))


def test_newest_version_first_and_exact_version(pristine: Repo, tmp_path: Path) -> None:
    repo = client(pristine, tmp_path)
    versions = repo.packages(SUITE, "amd64")["hello"]
    assert [p.version for p in versions] == ["2.0-1", "1.0-1"]
    assert repo.find(SUITE, "amd64", "hello").version == "2.0-1"
    old = repo.find(SUITE, "amd64", "hello", "1.0-1")
    assert old.suite == SUITE and old.architecture == "amd64"
    assert (repo.unpack(old) / "usr/share/hello/greeting").read_text() == "hello 1.0\n"
    with pytest.raises(FetchError, match=r"version 9\.9 not found.*2\.0-1, 1\.0-1"):
        repo.find(SUITE, "amd64", "hello", "9.9")


def test_index_fields_and_arch_all(pristine: Repo, tmp_path: Path) -> None:
    repo = client(pristine, tmp_path)
    hello = repo.find(SUITE, "amd64", "hello")
    assert hello.depends_names() == [["dpkg"], ["libgreet", "libgreet-alt"], ["base-files"]]
    assert hello.source_name == "hello-src"
    assert repo.find(SUITE, "amd64", "libgreet").provides_names() == ["greeting-lib"]
    assert repo.find(SUITE, "arm64", "greet-data").architecture == "all"
    assert "hello" not in repo.packages(SUITE, "arm64")


def test_missing_package_names_it_and_suggests(pristine: Repo, tmp_path: Path) -> None:
    repo = client(pristine, tmp_path)
    with pytest.raises(FetchError, match=rf"package helo not found in {SUITE}/main/binary-amd64") as e:
        repo.find(SUITE, "amd64", "helo")
    assert "hello" in (e.value.hint or "")
    with pytest.raises(FetchError) as e:
        repo.find(SUITE, "amd64", "greeting-lib")
    assert "libgreet" in (e.value.hint or "")


def test_missing_architecture(pristine: Repo, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=rf"suite {SUITE} does not carry architecture loong64"):
        client(pristine, tmp_path).packages(SUITE, "loong64")


def test_armored_keyring_accepted(pristine: Repo, tmp_path: Path) -> None:
    armored = pristine.gpg.export(tmp_path / "test.asc", armor=True)
    repo = DebianRepo(pristine.url, tmp_path / "cache", [pristine.other_keyring, armored])
    assert repo.find(SUITE, "amd64", "hello").version == "2.0-1"


# -- trust chain -----------------------------------------------------------------------------------


def test_altered_inrelease_is_rejected(repo: Repo, tmp_path: Path) -> None:
    inrelease = repo.root / "dists" / SUITE / "InRelease"
    inrelease.write_text(inrelease.read_text().replace("Origin: kmatrix-test", "Origin: kmatrix-evil"))
    with pytest.raises(FetchError, match=r"signature not valid.*BADSIG"):
        client(repo, tmp_path).packages(SUITE, "amd64")
    assert not list((tmp_path / "debian").rglob("InRelease")), "a rejected InRelease must not be cached"


def test_unknown_key_is_rejected(pristine: Repo, tmp_path: Path) -> None:
    repo = DebianRepo(pristine.url, tmp_path, [pristine.other_keyring])
    with pytest.raises(FetchError, match=r"signature not valid.*NO_PUBKEY"):
        repo.packages(SUITE, "amd64")


def test_missing_keyring_or_gpgv(pristine: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FetchError, match="archive keyring not found") as e:
        DebianRepo(pristine.url, tmp_path, [tmp_path / "nope.gpg"]).packages(SUITE, "amd64")
    assert "apt-get install gpgv debian-archive-keyring" in (e.value.hint or "")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FetchError, match="gpgv is not installed") as e:
        client(pristine, tmp_path).packages(SUITE, "amd64")
    assert "apt-get install gpgv" in (e.value.hint or "")


def test_release_for_another_suite_is_rejected(repo: Repo, tmp_path: Path) -> None:
    shutil.copytree(repo.root / "dists" / SUITE, repo.root / "dists" / "othersuite")
    with pytest.raises(FetchError, match=f"signed Release is for suite {SUITE}"):
        client(repo, tmp_path).packages("othersuite", "amd64")


@pytest.mark.parametrize(
    ("status", "ok"),
    [
        ("[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG A x\n[GNUPG:] VALIDSIG F 2024\n", True),
        (
            "[GNUPG:] ERRSIG B 1 8 00 1 9\n[GNUPG:] NO_PUBKEY B\n[GNUPG:] GOODSIG A x\n[GNUPG:] VALIDSIG F\n",
            True,
        ),
        ("[GNUPG:] BADSIG A x\n[GNUPG:] GOODSIG C x\n[GNUPG:] VALIDSIG F\n", False),
        ("[GNUPG:] EXPKEYSIG A x\n[GNUPG:] VALIDSIG F\n", False),
        ("[GNUPG:] ERRSIG B 1 8 00 1 9\n[GNUPG:] NO_PUBKEY B\n", False),
        ("", False),
    ],
)
def test_gpgv_status_rule(status: str, ok: bool) -> None:
    assert gpgv_accepts(status) is ok


# -- index and .deb integrity ----------------------------------------------------------------------


def test_index_mismatch_fails_after_retries(repo: Repo, tmp_path: Path) -> None:
    index = repo.root / "dists" / SUITE / "main" / "binary-amd64" / "Packages.xz"
    index.write_bytes(index.read_bytes() + b"\0")
    attempts: list[str] = []
    repo_client = client(
        repo,
        tmp_path,
        retries=3,
        progress=lambda name, done, total: attempts.append(name) if done == 0 else None,
    )
    with pytest.raises(FetchError) as e:
        repo_client.packages(SUITE, "amd64")
    message = str(e.value)
    assert index.as_uri() in message and "expected" in message and "got" in message
    assert "3 attempts" in message and "mid" in (e.value.hint or "")
    assert sum(name.endswith("Packages.xz") for name in attempts) == 3
    assert sum(name.endswith("InRelease") for name in attempts) == 3  # re-read on every retry


def test_index_mismatch_recovers_when_the_mirror_settles(repo: Repo, tmp_path: Path) -> None:
    index = repo.root / "dists" / SUITE / "main" / "binary-amd64" / "Packages.xz"
    good = index.read_bytes()
    index.write_bytes(good[:-1])

    def settle(name: str, done: int, total: int | None) -> None:
        if name.endswith("Packages.xz") and done:
            index.write_bytes(good)  # the mid-sync mirror catches up after the first attempt

    assert client(repo, tmp_path, progress=settle).find(SUITE, "amd64", "hello").version == "2.0-1"


def test_deb_mismatch_fails_and_caches_nothing(repo: Repo, tmp_path: Path) -> None:
    repo_client = client(repo, tmp_path)
    pkg = repo_client.find(SUITE, "amd64", "libgreet")
    deb = repo.root / pkg.filename
    data = bytearray(deb.read_bytes())
    data[-1] ^= 0xFF
    deb.write_bytes(bytes(data))
    with pytest.raises(FetchError, match=r"sha256/size mismatch.*expected.*got.*3 attempts"):
        repo_client.fetch(pkg)
    assert not list((tmp_path / "debian").rglob("*.deb"))
    assert not list((tmp_path / "debian").rglob("*.tmp-*"))


def test_tampered_cached_deb_is_fetched_again(pristine: Repo, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = client(pristine, tmp_path)
    pkg = repo.find(SUITE, "amd64", "hello")
    deb = repo.fetch(pkg)
    deb.write_bytes(b"!" * pkg.size)
    with caplog.at_level(logging.WARNING, logger="kmatrix.debian"):
        assert repo.fetch(pkg) == deb
    assert deb.read_bytes() == (pristine.root / pkg.filename).read_bytes()
    assert "does not match its index entry" in caplog.text


def test_forged_index_entry_is_refused(pristine: Repo, tmp_path: Path) -> None:
    pkg = client(pristine, tmp_path).find(SUITE, "amd64", "hello")
    with pytest.raises(FetchError, match="suspicious Filename"):
        client(pristine, tmp_path).fetch(dataclasses.replace(pkg, filename="../../etc/passwd"))


def test_half_extracted_tree_is_redone(pristine: Repo, tmp_path: Path) -> None:
    repo = client(pristine, tmp_path)
    pkg = repo.find(SUITE, "amd64", "libgreet")
    tree = repo.unpack(pkg)
    marker = tree.with_name(tree.name + ".sha256")
    marker.unlink()
    (tree / "junk").write_text("left by a killed run")
    assert repo.unpack(pkg) == tree
    assert not (tree / "junk").exists() and (tree / "usr/lib/libgreet.txt").is_file()
    assert marker.read_text().strip() == pkg.sha256


# -- cache and offline -----------------------------------------------------------------------------


def test_second_instance_uses_parsed_cache(pristine: Repo, tmp_path: Path) -> None:
    client(pristine, tmp_path).packages(SUITE, "amd64")
    fetched: list[str] = []
    repo = client(pristine, tmp_path, progress=lambda name, done, total: fetched.append(name))
    assert "hello" in repo.packages(SUITE, "amd64")
    assert fetched == []  # InRelease still fresh, index parsed once already


def test_offline_from_cache(repo: Repo, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    online = client(repo, tmp_path)
    pkg = online.find(SUITE, "amd64", "hello")
    online.fetch(pkg)
    shutil.rmtree(repo.root)  # the mirror is gone
    offline = client(repo, tmp_path, refresh_after_s=0)
    with caplog.at_level(logging.WARNING, logger="kmatrix.debian"):
        assert offline.find(SUITE, "amd64", "hello") == pkg
        assert (offline.unpack(pkg) / "usr/share/hello/greeting").read_text() == "hello 2.0\n"
    assert "using the cached copy" in caplog.text


def test_no_cache_and_no_network(tmp_path: Path, pristine: Repo) -> None:
    repo = DebianRepo((tmp_path / "gone" / "debian").as_uri(), tmp_path / "cache", [pristine.keyring])
    with pytest.raises(FetchError, match="cannot reach the mirror and nothing is cached") as e:
        repo.packages(SUITE, "amd64")
    assert "KMATRIX_MIRROR" in (e.value.hint or "")


def test_invalid_inputs(pristine: Repo, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        DebianRepo("ftp://mirror.invalid/debian", tmp_path)
    with pytest.raises(ConfigError):
        client(pristine, tmp_path).packages("../etc", "amd64")


def _unpack_in_child(url: str, cache: str, keyring: str) -> tuple[str, str]:
    repo = DebianRepo(url, Path(cache), [Path(keyring)], retry_delay_s=0)
    pkg = repo.find(SUITE, "amd64", "hello")
    return str(repo.unpack(pkg)), str(repo.fetch(pkg))


def test_parallel_processes_share_the_cache(pristine: Repo, tmp_path: Path) -> None:
    args = (pristine.url, str(tmp_path), str(pristine.keyring))
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.starmap(_unpack_in_child, [args] * 8)
    assert len(set(results)) == 1
    tree = Path(results[0][0])
    assert (tree / "usr/share/hello/greeting").read_text() == "hello 2.0\n"
    assert not list((tmp_path / "debian").rglob("*.tmp-*"))


# -- over HTTP -------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_mirror(repo: Repo) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(repo.root.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/debian/"
    finally:
        server.shutdown()
        server.server_close()


def test_over_http_with_progress(repo: Repo, http_mirror: str, tmp_path: Path) -> None:
    events: list[tuple[str, int, int | None]] = []
    mirror = DebianRepo(
        http_mirror,
        tmp_path,
        [repo.keyring],
        retry_delay_s=0,
        timeout_s=10,
        progress=lambda *event: events.append(event),
    )
    pkg = mirror.find(SUITE, "amd64", "hello")
    assert (mirror.unpack(pkg) / "usr/share/hello/greeting").read_text() == "hello 2.0\n"
    deb_events = [e for e in events if e[0] == Path(pkg.filename).name]
    assert deb_events[0] == (deb_events[0][0], 0, pkg.size) and deb_events[-1][1:] == (pkg.size, pkg.size)
    gone = dataclasses.replace(pkg, filename=pkg.filename.replace("2.0-1", "0.1-1"))
    with pytest.raises(FetchError, match=r"404.*no longer in the mirror's pool"):
        mirror.fetch(gone)


# -- parsing and host configuration ----------------------------------------------------------------


def test_parse_packages_folded_and_incomplete() -> None:
    text = (
        "Package: a\nVersion: 1\nArchitecture: all\nDepends: b,\n c (>= 2)\nFilename: pool/a.deb\n"
        "Size: 3\nSHA256: " + "0" * 64 + "\nDescription: x\n long\n\nPackage: broken\nVersion: 1\n\n"
    )
    rows = parse_packages(text)
    assert len(rows) == 1
    pkg = Package(*rows[0])
    assert pkg.size == 3 and pkg.depends_names() == [["b"], ["c"]]


def test_depends_names_drops_constraints_and_qualifiers() -> None:
    pkg = Package(
        "x",
        "1",
        "amd64",
        "pool/x.deb",
        "0" * 64,
        1,
        depends="libc6 (>= 2.36), python3:any | python3-minimal (<< 4) [amd64], ",
        pre_depends="dpkg (>= 1.19.1)",
    )
    assert pkg.depends_names() == [["dpkg"], ["libc6"], ["python3", "python3-minimal"]]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_host_mirror_from_deb822(tmp_path: Path) -> None:
    _write(
        tmp_path / "d" / "a.sources",
        "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian-security\nSuites: s-security\n\n"
        "Types: deb-src\nURIs: http://src.invalid/debian\nSuites: s\n\n"
        "Enabled: no\nTypes: deb\nURIs: http://off.invalid/debian\nSuites: s\n\n"
        "Types: deb deb-src\nURIs: http://ports.invalid/debian-ports http://mirror.invalid/debian/\n"
        "Suites: s\nComponents: main\n",
    )
    assert host_mirror({}, tmp_path / "d", tmp_path / "none.list") == "http://mirror.invalid/debian"


def test_host_mirror_from_one_line_list(tmp_path: Path) -> None:
    sources = _write(
        tmp_path / "sources.list",
        "# deb http://commented.invalid/debian s main\n"
        "deb-src http://src.invalid/debian s main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian/ s main\n",
    )
    assert host_mirror({}, tmp_path / "nodir", sources) == "http://mirror.invalid/debian"


def test_host_mirror_env_wins_and_none_is_config_error(tmp_path: Path) -> None:
    sources = _write(tmp_path / "sources.list", "deb http://mirror.invalid/debian s main\n")
    assert host_mirror({"KMATRIX_MIRROR": "file:///srv/debian/"}, tmp_path, sources) == "file:///srv/debian"
    empty = _write(tmp_path / "d" / "x.sources", "Types: deb\nURIs: http://m.invalid/ubuntu\nSuites: s\n")
    with pytest.raises(ConfigError, match=str(empty)) as e:
        host_mirror({}, empty.parent, tmp_path / "missing.list")
    assert e.value.hint == "set KMATRIX_MIRROR=<uri of a Debian mirror>"


def test_default_keyrings_from_env() -> None:
    assert debian.default_keyrings({"KMATRIX_KEYRING": "/a.gpg:/b.gpg"}) == [Path("/a.gpg"), Path("/b.gpg")]
    assert debian.default_keyrings({}) == [debian.DEFAULT_KEYRING]


def test_resigned_repo_refreshes_after_expiry(repo: Repo, tmp_path: Path) -> None:
    first = client(repo, tmp_path)
    assert "hello" in first.packages(SUITE, "amd64")
    index = repo.root / "dists" / SUITE / "main" / "binary-amd64" / "Packages"
    for path in index.parent.glob("Packages*"):
        path.unlink()
    index.write_text("")  # the suite is emptied and re-signed
    write_release(repo.root, repo.gpg)
    assert "hello" in client(repo, tmp_path).packages(SUITE, "amd64")  # still fresh: cached view
    assert "hello" not in client(repo, tmp_path, refresh_after_s=0).packages(SUITE, "amd64")
