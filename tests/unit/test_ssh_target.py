"""SSH targets without a VM: URL parsing, the host key policy, and a handshake with paramiko's own
server in this process (an unknown key is refused before anything is sent; a pinned one logs in)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.errors import ConfigError
from harness.remote.ssh import (
    HostKeyError,
    SshTarget,
    SshUrl,
    check_host_key,
    fingerprint,
    normalize_fingerprint,
    parse_target,
    public_key_from_line,
)


def ed25519() -> paramiko.Ed25519Key:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    return paramiko.Ed25519Key(file_obj=io.StringIO(pem.decode()))


# -- URLs ------------------------------------------------------------------------------------------


def test_parse_target_forms() -> None:
    assert parse_target("ssh://root@arm-box.lab") == SshUrl("root", "arm-box.lab", 22)
    url = parse_target("ssh://ci@10.1.2.3:2222")
    assert (url.user, url.host, url.port, str(url), url.known_hosts_name) == (
        "ci", "10.1.2.3", 2222, "ssh://ci@10.1.2.3:2222", "[10.1.2.3]:2222")
    v6 = parse_target("ssh://root@[fe80::1]:22/")
    assert (v6.host, str(v6), v6.known_hosts_name) == ("fe80::1", "ssh://root@[fe80::1]", "fe80::1")
    key = ed25519()
    fp = fingerprint(key)
    pinned = parse_target(f"ssh://root@127.0.0.1:40022?fingerprint={fp}&identity=/tmp/k&known_hosts=/tmp/kh")
    assert pinned.fingerprint == fp  # '+' and '/' in base64 survive the query
    assert pinned.identity == Path("/tmp/k") and pinned.known_hosts == Path("/tmp/kh")
    assert str(pinned) == "ssh://root@127.0.0.1:40022"


@pytest.mark.parametrize(
    ("url", "what"),
    [
        ("root@box", "only ssh://"),
        ("http://root@box", "only ssh://"),
        ("ssh://box", "no user"),
        ("ssh://root@", "no host"),
        ("ssh://root:secret@box", "passwords"),
        ("ssh://root@box:99999", "port"),
        ("ssh://root@box:ssh", "port"),
        ("ssh://root@box:0", "port 0"),
        ("ssh://root@box/home", "no path"),
        ("ssh://root@box?password=x", "unknown or empty option"),
        ("ssh://root@box?fingerprint=", "unknown or empty option"),
        ("ssh://root@box?fingerprint=MD5:aa:bb", "not a SHA256"),
    ],
)
def test_bad_targets_are_config_errors(url: str, what: str) -> None:
    with pytest.raises(ConfigError, match=what) as error:
        parse_target(url)
    assert error.value.exit_code == 2


def test_fingerprints_normalise_and_match_ssh_keygen(tmp_path: Path) -> None:
    key = ed25519()
    fp = fingerprint(key)
    assert fp.startswith("SHA256:") and len(fp) == 7 + 43
    assert normalize_fingerprint(fp) == normalize_fingerprint("sha256:" + fp[7:] + "=") == normalize_fingerprint(fp[7:])
    line = f"{key.get_name()} {key.get_base64()} test"
    assert fingerprint(public_key_from_line(line)) == fp
    if shutil.which("ssh-keygen"):
        (tmp_path / "k.pub").write_text(line + "\n")
        out = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True, text=True,
                             check=True).stdout
        assert out.split()[1] == fp
    with pytest.raises(ConfigError):
        public_key_from_line("ssh-ed25519")


# -- the host key policy ---------------------------------------------------------------------------


def test_explicit_fingerprint_match_and_mismatch() -> None:
    key, other = ed25519(), ed25519()
    url = parse_target(f"ssh://root@box:2222?fingerprint={fingerprint(key)}")
    assert check_host_key(url, key, paramiko.HostKeys()) == "fingerprint"
    with pytest.raises(HostKeyError, match="not the expected") as error:
        check_host_key(url, other, paramiko.HostKeys())
    assert fingerprint(other) in str(error.value) and fingerprint(key) in str(error.value)


def test_known_hosts_match_mismatch_and_port_naming(tmp_path: Path) -> None:
    key, other = ed25519(), ed25519()
    known = tmp_path / "known_hosts"
    known.write_text(f"[box]:2222 {key.get_name()} {key.get_base64()}\n")
    hosts = paramiko.HostKeys(str(known))
    assert check_host_key(parse_target("ssh://root@box:2222"), key, hosts) == "known_hosts"
    with pytest.raises(HostKeyError, match="does not match") as error:
        check_host_key(parse_target("ssh://root@box:2222"), other, hosts)
    assert "ssh-keygen -R '[box]:2222'" in (error.value.hint or "")
    # the same host on port 22 is another known_hosts name: unknown there
    with pytest.raises(HostKeyError, match="unknown host key for box:"):
        check_host_key(parse_target("ssh://root@box"), key, hosts)


def test_unknown_key_is_refused_with_its_fingerprint_and_how_to_trust_it() -> None:
    key = ed25519()
    with pytest.raises(HostKeyError) as error:
        check_host_key(parse_target("ssh://root@box:2222"), key, paramiko.HostKeys())
    fp = fingerprint(key)
    assert f"unknown host key for [box]:2222: ssh-ed25519 {fp}" in str(error.value)
    assert f"?fingerprint={fp}" in (error.value.hint or "") and "known_hosts" in (error.value.hint or "")
    assert error.value.exit_code == 2


# -- a handshake with an in-process server ---------------------------------------------------------


class _Server(paramiko.ServerInterface):
    def __init__(self, client: paramiko.PKey) -> None:
        self.client = client
        self.auth_attempts = 0

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        self.auth_attempts += 1
        ok = username == "root" and key.asbytes() == self.client.asbytes()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED


@pytest.fixture
def server() -> Iterator[tuple[int, paramiko.PKey, paramiko.PKey, _Server]]:
    """A paramiko SSH server on a loopback port for one connection: (port, host key, client key, server)."""
    host_key, client_key = ed25519(), ed25519()
    interface = _Server(client_key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        conn, _ = listener.accept()
        transport = paramiko.Transport(conn)
        transports.append(transport)
        transport.add_server_key(host_key)
        with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
            transport.start_server(server=interface)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], host_key, client_key, interface
    for transport in transports:
        transport.close()
    listener.close()
    thread.join(5)


def test_unknown_server_key_is_refused_before_logging_in(
    server: tuple[int, paramiko.PKey, paramiko.PKey, _Server], tmp_path: Path
) -> None:
    port, host_key, client_key, interface = server
    with pytest.raises(HostKeyError, match=fingerprint(host_key).replace("+", r"\+")):
        SshTarget.connect(f"ssh://root@127.0.0.1:{port}?known_hosts={tmp_path / 'none'}", identity=client_key)
    assert interface.auth_attempts == 0  # the key was never offered to an unverified server


def test_pinned_server_key_logs_in(server: tuple[int, paramiko.PKey, paramiko.PKey, _Server]) -> None:
    port, host_key, client_key, interface = server
    target = SshTarget.connect(f"ssh://root@127.0.0.1:{port}?fingerprint={fingerprint(host_key)}",
                               identity=client_key, known_hosts=paramiko.HostKeys())
    try:
        assert target.transport.is_authenticated()
        assert (target.trusted_by, target.host_key_fingerprint) == ("fingerprint", fingerprint(host_key))
    finally:
        target.transport.close()
    assert interface.auth_attempts == 1


def test_wrong_client_key_is_a_clear_error(server: tuple[int, paramiko.PKey, paramiko.PKey, _Server]) -> None:
    port, host_key, _client_key, _interface = server
    with pytest.raises(ConfigError, match="accepted none of 1 key"):
        SshTarget.connect(f"ssh://root@127.0.0.1:{port}?fingerprint={fingerprint(host_key)}",
                          identity=ed25519(), known_hosts=paramiko.HostKeys())


# -- the SSH test guest's QEMU NIC -----------------------------------------------------------------


@pytest.mark.parametrize(("arch", "device"), [("x86_64", "virtio-net-pci,netdev=kmxnet,romfile="),
                                              ("aarch64", "virtio-net-pci,netdev=kmxnet,romfile="),
                                              ("s390x", "virtio-net-ccw,netdev=kmxnet")])
def test_forwarded_port_adds_a_user_mode_nic(arch: str, device: str) -> None:
    from harness.archs import ARCHS
    from harness.vm import BootSpec, qemu_command

    spec = BootSpec(ARCHS[arch], Path("/k"), Path("/i"))
    assert "-netdev" not in qemu_command(spec) and "-nic" in qemu_command(spec)
    argv = qemu_command(dataclasses.replace(spec, ssh_forward_port=40022))
    assert "-nic" not in argv
    assert argv[argv.index("-netdev") + 1] == "user,id=kmxnet,hostfwd=tcp:127.0.0.1:40022-:22"
    assert argv[argv.index("-device") + 1] == device
