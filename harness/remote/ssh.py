"""Remote targets over SSH: run the guest agent on a real machine through paramiko.

`ssh://user@host[:port]` names the machine. Its host key is checked against an explicit
fingerprint (`?fingerprint=SHA256:...`, from the machine's console or its admin) or the user's
known_hosts; an unknown or different key is refused with its fingerprint and how to trust it,
never accepted silently. The agent (harness/__init__.py, protocol.py and guest/) and the cell's
artifacts go over SFTP into a fresh directory under /tmp; the agent then runs with the same framed
protocol over the exec channel's stdin/stdout that it speaks on a guest's console. Closing the
target removes that directory and unloads a driver the agent left loaded.

URL query parameters (all optional): `fingerprint` (SHA256:<base64>, as `ssh-keygen -lf` prints),
`identity` (a private key file; default: ssh-agent's keys, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa),
`known_hosts` (a file; default ~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts).
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import hashlib
import shlex
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paramiko

from harness import protocol
from harness.errors import ConfigError, GuestError
from harness.vm import ConsoleLog, Ready

DEFAULT_PORT = 22
# Set only in the command the SSH runner starts: the guest's driver loader accepts it in place of
# a kmatrix guest's kernel command line (harness.guest.capture.refuse_outside_guest).
REMOTE_ENV = "KMATRIX_REMOTE_TARGET"
# Modules the suites load; one the agent left loaded (a killed run) is unloaded on close.
DRIVER_MODULES = ("kmx",)
_QUERY_KEYS = ("fingerprint", "identity", "known_hosts")
_DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")
_PROJECT = Path(__file__).resolve().parent.parent.parent


class HostKeyError(ConfigError):
    """The target's host key is unknown or not the expected one: nothing was sent to it."""


@dataclass(frozen=True)
class SshUrl:
    """A parsed `ssh://user@host[:port][?fingerprint=...&identity=...&known_hosts=...]`."""

    user: str
    host: str
    port: int = DEFAULT_PORT
    fingerprint: str | None = None
    identity: Path | None = None
    known_hosts: Path | None = None

    def __str__(self) -> str:
        """The target without its options (what results record)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == DEFAULT_PORT else f":{self.port}"
        return f"ssh://{self.user}@{host}{port}"

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this host: `host`, or `[host]:port` off port 22."""
        return self.host if self.port == DEFAULT_PORT else f"[{self.host}]:{self.port}"


def parse_target(url: str) -> SshUrl:
    """Parse a --target URL; a ConfigError names what is wrong with it."""
    usage = "write it as ssh://user@host[:port], e.g. ssh://root@arm-box.lab:2222"
    parts = urlsplit(url)
    if parts.scheme != "ssh":
        raise ConfigError(f"target {url!r}: only ssh:// targets are supported", hint=usage)
    if parts.password is not None:
        raise ConfigError(f"target {url!r}: passwords are not accepted in the URL",
                          hint="log in with a key: ssh-agent, ~/.ssh/id_*, or ?identity=FILE")
    if not parts.username:
        raise ConfigError(f"target {url!r}: no user", hint=usage)
    if not parts.hostname:
        raise ConfigError(f"target {url!r}: no host", hint=usage)
    try:
        port = DEFAULT_PORT if parts.port is None else parts.port
    except ValueError:
        raise ConfigError(f"target {url!r}: the port is not a number from 1 to 65535", hint=usage) from None
    if port == 0:
        raise ConfigError(f"target {url!r}: port 0 is not a port", hint=usage)
    if parts.path not in ("", "/") or parts.fragment:
        raise ConfigError(f"target {url!r}: a target has no path or fragment", hint=usage)
    options: dict[str, str] = {}
    for item in filter(None, parts.query.split("&")):
        key, sep, value = item.partition("=")
        if key not in _QUERY_KEYS or not sep or not value:
            raise ConfigError(f"target {url!r}: unknown or empty option {item!r}",
                              hint=f"options are {', '.join(k + '=...' for k in _QUERY_KEYS)}")
        options[key] = unquote(value)  # not unquote_plus: '+' belongs to base64 fingerprints
    fingerprint = options.get("fingerprint")
    return SshUrl(
        user=unquote(parts.username),
        host=parts.hostname,
        port=port,
        fingerprint=normalize_fingerprint(fingerprint) if fingerprint else None,
        identity=Path(options["identity"]).expanduser() if "identity" in options else None,
        known_hosts=Path(options["known_hosts"]).expanduser() if "known_hosts" in options else None,
    )


# -- host keys -------------------------------------------------------------------------------------


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a public key: SHA256:<base64 without padding>."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def normalize_fingerprint(text: str) -> str:
    """`SHA256:abc`, `sha256:abc=` or `abc` -> `SHA256:abc`; anything else is a ConfigError."""
    value = text.strip()
    if value[:7].upper() == "SHA256:":
        value = value[7:]
    value = value.rstrip("=")
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{text!r} is not a SHA256 host key fingerprint",
                          hint="give it as `ssh-keygen -lf <host key>.pub` prints it: SHA256:<43 base64 characters>")
    return "SHA256:" + value


def load_known_hosts(paths: Iterable[Path] | None = None) -> paramiko.HostKeys:
    """The known_hosts files that exist among paths (default: the user's and the system's)."""
    if paths is None:
        paths = [Path("~/.ssh/known_hosts").expanduser(), Path("/etc/ssh/ssh_known_hosts")]
    keys = paramiko.HostKeys()
    for path in paths:
        if not path.is_file():
            continue
        try:
            keys.load(str(path))
        except (OSError, paramiko.SSHException, ValueError) as error:
            raise ConfigError(f"cannot read known_hosts file {path}: {error}") from None
    return keys


def check_host_key(url: SshUrl, key: paramiko.PKey, known_hosts: paramiko.HostKeys) -> str:
    """How the key was trusted ('fingerprint' or 'known_hosts'); HostKeyError if it is not."""
    seen = fingerprint(key)
    name = url.known_hosts_name
    if url.fingerprint is not None:
        if seen == url.fingerprint:
            return "fingerprint"
        raise HostKeyError(
            f"host key of {url} is {key.get_name()} {seen}, not the expected {url.fingerprint}: refusing to connect",
            hint="the machine is not the one you meant, its key changed, or the connection is intercepted; "
                 "compare with `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on its console",
        )
    entries = known_hosts.lookup(name)
    known = entries.get(key.get_name()) if entries is not None else None
    if known is not None:
        if known == key:
            return "known_hosts"
        raise HostKeyError(
            f"host key of {url} ({key.get_name()} {seen}) does not match the one known_hosts has for {name} "
            f"({fingerprint(known)}): refusing to connect",
            hint="if the machine was reinstalled, check the new key on its console, then "
                 f"`ssh-keygen -R '{name}'` and connect again; otherwise the connection may be intercepted",
        )
    raise HostKeyError(
        f"unknown host key for {name}: {key.get_name()} {seen}; kmatrix never trusts a key it has not been given",
        hint=f"check it on the machine (`ssh-keygen -lf /etc/ssh/ssh_host_{_key_file_kind(key)}_key.pub`), then "
             f"either add `?fingerprint={seen}` to the target URL or add the key to ~/.ssh/known_hosts "
             f"(e.g. `ssh -p {url.port} {url.user}@{url.host}` and answer yes)",
    )


def _key_file_kind(key: paramiko.PKey) -> str:
    name = key.get_name()
    return {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(name, "ecdsa" if "ecdsa" in name else "*")


def public_key_from_line(line: str) -> paramiko.PKey:
    """A public key from an OpenSSH line `<type> <base64> [comment]` (what dropbearkey -y prints)."""
    words = line.split()
    if len(words) < 2:
        raise ConfigError(f"not an OpenSSH public key line: {line[:80]!r}")
    try:
        return paramiko.PKey.from_type_string(words[0], base64.b64decode(words[1]))
    except (ValueError, paramiko.SSHException) as error:
        raise ConfigError(f"not an OpenSSH public key line ({error}): {line[:80]!r}") from None


# -- the connection --------------------------------------------------------------------------------


def _identities(url: SshUrl, identity: paramiko.PKey | None) -> list[paramiko.PKey]:
    if identity is not None:
        return [identity]
    if url.identity is not None:
        try:
            return [paramiko.PKey.from_path(url.identity)]
        except (OSError, paramiko.SSHException, ValueError) as error:
            raise ConfigError(f"cannot load the identity {url.identity}: {error}",
                              hint="give an unencrypted OpenSSH private key file, or use ssh-agent") from None
    keys: list[paramiko.PKey] = list(paramiko.Agent().get_keys())
    for name in _DEFAULT_IDENTITIES:
        path = Path("~/.ssh").expanduser() / name
        if path.is_file():
            with contextlib.suppress(OSError, paramiko.SSHException, ValueError):
                keys.append(paramiko.PKey.from_path(path))
    return keys


@dataclass(frozen=True)
class Command:
    rc: int
    stdout: str
    stderr: str


class SshTarget:
    """An authenticated SSH connection to a target whose host key was checked."""

    def __init__(self, url: SshUrl, transport: paramiko.Transport, trusted_by: str) -> None:
        self.url = url
        self.transport = transport
        self.trusted_by = trusted_by
        self.host_key_fingerprint = fingerprint(transport.get_remote_server_key())
        self.remote_dir: str | None = None
        self._agents: list[RemoteAgent] = []

    @classmethod
    def connect(cls, target: str | SshUrl, *, identity: paramiko.PKey | None = None,
                known_hosts: paramiko.HostKeys | None = None, timeout_s: float = 30) -> SshTarget:
        url = parse_target(target) if isinstance(target, str) else target
        if known_hosts is None:
            known_hosts = load_known_hosts([url.known_hosts] if url.known_hosts else None)
        try:
            sock = socket.create_connection((url.host, url.port), timeout=timeout_s)
        except OSError as error:
            raise GuestError(f"cannot reach {url}: {error}",
                             hint="check the host, the port and that sshd runs there") from None
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=timeout_s)
            trusted_by = check_host_key(url, transport.get_remote_server_key(), known_hosts)
            keys = _identities(url, identity)
            if not keys:
                raise ConfigError(f"no key to log in to {url} with",
                                  hint="start ssh-agent with a key, create ~/.ssh/id_ed25519, or add ?identity=FILE")
            for key in keys:
                with contextlib.suppress(paramiko.AuthenticationException):
                    transport.auth_publickey(url.user, key)
                    break
            if not transport.is_authenticated():
                raise ConfigError(f"{url} accepted none of {len(keys)} key(s) for {url.user}",
                                  hint=f"add your public key to ~{url.user}/.ssh/authorized_keys there, "
                                       "or pass ?identity=FILE")
        except (paramiko.SSHException, EOFError, OSError) as error:
            transport.close()
            raise GuestError(f"SSH handshake with {url} failed: {error or type(error).__name__}") from None
        except BaseException:
            transport.close()
            raise
        return cls(url, transport, trusted_by)

    def __enter__(self) -> SshTarget:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def sudo(self) -> list[str]:
        """Loading a driver needs root: other users go through `sudo -n` (never a password prompt)."""
        return [] if self.url.user == "root" else ["sudo", "-n"]

    def run(self, argv: list[str], timeout_s: float = 60, *, as_root: bool = False) -> Command:
        """Run a command (an argument list, quoted for the remote shell) and wait for it."""
        channel = self._open_session(timeout_s)
        try:
            channel.settimeout(timeout_s)
            channel.exec_command(shlex.join([*(self.sudo if as_root else []), *argv]))
            channel.shutdown_write()
            stdout, stderr = bytearray(), bytearray()
            deadline = time.monotonic() + timeout_s
            while not (channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready()):
                if time.monotonic() > deadline:
                    raise GuestError(f"{shlex.join(argv)} on {self.url} did not finish in {timeout_s:.0f} s")
                if channel.recv_ready():
                    stdout += channel.recv(65536)
                elif channel.recv_stderr_ready():
                    stderr += channel.recv_stderr(65536)
                else:
                    time.sleep(0.02)
            return Command(channel.recv_exit_status(), stdout.decode(errors="replace"),
                           stderr.decode(errors="replace"))
        except TimeoutError:
            raise GuestError(f"{shlex.join(argv)} on {self.url} did not finish in {timeout_s:.0f} s") from None
        finally:
            channel.close()

    def _open_session(self, timeout_s: float | None = None) -> paramiko.Channel:
        try:
            return self.transport.open_session(timeout=timeout_s)
        except (paramiko.SSHException, EOFError, OSError) as error:
            raise GuestError(f"the connection to {self.url} failed: {error or type(error).__name__}") from None

    def upload(self, files: Iterable[tuple[Path, str, int]]) -> str:
        """Upload the agent and files (source, path under the remote directory, mode); the directory."""
        if self.remote_dir is None:
            made = self.run(["mktemp", "-d", "/tmp/kmatrix.XXXXXX"])
            if made.rc != 0 or not made.stdout.strip().startswith("/tmp/kmatrix."):
                raise GuestError(f"cannot make a directory under /tmp on {self.url}: {made.stderr.strip()}")
            self.remote_dir = made.stdout.strip()
        everything = [*agent_files(), *files]
        try:
            sftp = paramiko.SFTPClient.from_transport(self.transport)
        except paramiko.SSHException as error:
            raise GuestError(f"{self.url} offers no SFTP ({error})",
                             hint="install its SFTP server (openssh-sftp-server on Debian)") from None
        assert sftp is not None
        with sftp:
            try:
                self._put(sftp, everything)
            except (OSError, paramiko.SSHException, EOFError) as error:
                raise GuestError(f"uploading to {self.remote_dir} on {self.url} failed: {error}",
                                 hint="check free space in /tmp there") from None
        return self.remote_dir

    def _put(self, sftp: paramiko.SFTPClient, everything: list[tuple[Path, str, int]]) -> None:
        made_dirs: set[str] = set()
        for source, rel, mode in everything:
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in made_dirs:
                    made_dirs.add(directory)
                    with contextlib.suppress(OSError):  # exists already
                        sftp.mkdir(f"{self.remote_dir}/{directory}", 0o755)
            remote = f"{self.remote_dir}/{rel}"
            sftp.put(str(source), remote)
            sftp.chmod(remote, mode)


    def start_agent(self, log_path: Path) -> RemoteAgent:
        """Run the uploaded agent; requests go to it like to a guest's (see RemoteAgent)."""
        if self.remote_dir is None:
            raise GuestError("upload() the agent before starting it")
        loaded = self.run(["cat", "/proc/modules"]).stdout
        busy = [name for name in DRIVER_MODULES if any(line.split(" ", 1)[0] == name for line in loaded.splitlines())]
        if busy:
            raise GuestError(f"{self.url} already has {', '.join(busy)} loaded: a driver from elsewhere is in use",
                             hint=f"unload it there (`rmmod {busy[0]}`) if nothing needs it, then run again")
        env = [f"PYTHONPATH={self.remote_dir}", "PYTHONDONTWRITEBYTECODE=1", "PYTHON_COLORS=0",
               f"{REMOTE_ENV}={self.url}"]
        # -S: the agent needs only the standard library, and a kmatrix guest's cut-down one has no site.
        argv = [*self.sudo, "env", *env, "python3", "-S", "-u", "-m", "harness.guest.agent"]
        command = f"cd {shlex.quote(self.remote_dir)} && exec {shlex.join(argv)}"
        channel = self._open_session(30)
        channel.exec_command(command)
        agent = RemoteAgent(self, channel, ConsoleLog(log_path))
        self._agents.append(agent)
        return agent

    def close(self) -> None:
        """Stop agents, unload a driver they left, remove the uploaded directory, disconnect."""
        try:
            for agent in self._agents:
                agent.close()
            self._agents.clear()
            if self.transport.is_active():
                for name in DRIVER_MODULES:
                    # Only ours can be loaded here: start_agent refused a target that had it before.
                    self.run(["sh", "-c", f"! grep -q '^{name} ' /proc/modules || rmmod {name}"], as_root=True)
                if self.remote_dir is not None:
                    self.run(["rm", "-rf", self.remote_dir], as_root=True)
                    self.remote_dir = None
        finally:
            self.transport.close()


def agent_files() -> list[tuple[Path, str, int]]:
    """The agent's sources (what the guest image carries in /opt/kmatrix), relative to the project."""
    sources = [_PROJECT / "harness/__init__.py", _PROJECT / "harness/protocol.py",
               *sorted((_PROJECT / "harness/guest").glob("*.py"))]
    return [(path, path.relative_to(_PROJECT).as_posix(), 0o644) for path in sources]


@dataclass
class RemoteAgent:
    """The agent at the other end of an SSH exec channel; the request surface of harness.vm.Guest."""

    target: SshTarget
    channel: paramiko.Channel
    log: ConsoleLog
    _scanner: protocol.FrameScanner = field(default_factory=protocol.FrameScanner)
    _frames: list[protocol.Frame] = field(default_factory=list)
    _next_id: int = 0
    _started: float = field(default_factory=time.monotonic)
    _decode: Callable[[bytes], str] = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace").decode)

    def wait_ready(self, timeout_s: float) -> Ready:
        frame = self._wait_frame(lambda m: m.get("type") == "ready", timeout_s, phase="agent start")
        return Ready(round(time.monotonic() - self._started, 3), frame.message)

    def request(self, op: str, timeout_s: float = 60, **fields: Any) -> dict[str, Any]:
        """Send one request to the agent and wait for its result (ok is checked by the caller)."""
        self._next_id += 1
        request_id = self._next_id
        self._send({"type": "request", "id": request_id, "op": op, **fields})
        frame = self._wait_frame(lambda m: m.get("type") == "result" and m.get("id") == request_id, timeout_s,
                                 phase=f"request {op}")
        return frame.message

    def poweroff(self, timeout_s: float = 30) -> None:
        """End the agent (the machine itself stays up: it is not ours to power off)."""
        self.request("poweroff", timeout_s=timeout_s)
        deadline = time.monotonic() + timeout_s
        while not self.channel.exit_status_ready() and time.monotonic() < deadline:
            self._pump(0.2)

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self.channel.close()
        self.log.close()

    def _send(self, message: dict[str, Any]) -> None:
        if self.channel.closed:
            raise GuestError(f"the agent on {self.target.url} is not running")
        try:
            self.channel.sendall((protocol.encode(0, message) + "\n").encode("ascii"))
        except OSError as error:
            raise GuestError(f"lost the agent on {self.target.url}: {error}") from None

    def _pump(self, timeout_s: float) -> bool:
        """Read what the agent printed (stdout and stderr, both into the log); False at EOF."""
        self.channel.settimeout(timeout_s)
        data = b""
        try:
            if self.channel.recv_stderr_ready():
                data = self.channel.recv_stderr(65536)
            else:
                data = self.channel.recv(65536)
                if not data:
                    while self.channel.recv_stderr_ready():
                        self.log.append(self._decode(self.channel.recv_stderr(65536)))
                    return False
        except TimeoutError:
            return True
        text = self._decode(data)
        self.log.append(text)
        protocol.route(self._scanner.feed(text), self._frames, lambda seq: self._send({"type": "resend", "seq": seq}))
        return True

    def _wait_frame(self, wanted: Callable[[dict[str, Any]], bool], timeout_s: float, *,
                    phase: str) -> protocol.Frame:
        deadline = time.monotonic() + timeout_s
        while True:
            for frame in self._frames:
                if wanted(frame.message):
                    self._frames.remove(frame)
                    return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GuestError(f"timed out after {timeout_s:.0f} s in {phase} on {self.target.url}; "
                                 f"last agent output:\n{self.log.tail(15)}", hint=f"full log: {self.log.path}")
            if not self._pump(min(remaining, 0.5)):
                status = self.channel.recv_exit_status() if self.channel.exit_status_ready() else None
                raise GuestError(f"the agent on {self.target.url} exited (status {status}) during {phase}; "
                                 f"last output:\n{self.log.tail(15)}",
                                 hint="it needs python3 on the target's PATH; full log: " + str(self.log.path))
