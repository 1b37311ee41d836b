"""A private Dovecot IMAP/LMTP server for tests and benchmarks.

Never touches the system Dovecot service: :class:`DovecotServer` writes its own configuration,
certificate, users file, runtime and state directories and Maildirs under one temporary folder and
runs ``dovecot -F -c <conf>`` in the foreground, listening on loopback only:

- ``port``: IMAP with STARTTLS (RFC 3501 §6.2.1 / RFC 2595),
- ``tls_port``: IMAP over implicit TLS (RFC 8314 §3.2),
- ``lmtp_port``: LMTP (RFC 2033) to deliver mail the way an MTA would (a recipient
  ``user@domain`` is the user ``user``: the private Postfix delivers here by address),
- ``auth_port``: Dovecot's authentication for SASL clients (the private Postfix's submission
  service signs its users in here, ``smtpd_sasl_type = dovecot``).

``variant="full"`` advertises Dovecot's usual capabilities (CONDSTORE and QRESYNC of RFC 7162,
MOVE of RFC 6851, IDLE of RFC 2177, SPECIAL-USE of RFC 6154, ...). ``variant="basic"`` sets
``imap_capability`` explicitly without CONDSTORE, QRESYNC and MOVE, so fallback code paths can be
exercised against a real server. Weaker servers still: ``without`` drops more capabilities from
that explicit list (e.g. ``{"MOVE", "UIDPLUS"}``; the commands stay implemented, only no longer
advertised, so a client that honours the list never uses them), ``extra_capabilities`` adds some
(``CREATE-SPECIAL-USE``: Dovecot 2.3 accepts ``CREATE name (USE (...))`` of RFC 6154 §3 but
does not advertise it) and ``special_folders`` names the special-use folders every user gets
(default Drafts, Sent, Trash, Archive, Junk; ``()`` for a mailbox with INBOX only).

Users are added at runtime (:meth:`DovecotServer.add_user`): Dovecot's passwd-file driver
re-reads the file when its size or mtime changes, so no restart or reload is needed.

This module is imported by benchmarks too, so it must not import pytest.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import datetime as dt
import imaplib
import ipaddress
import os
import secrets
import shutil
import signal
import smtplib
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from correspond.imap.mutf7 import encode_mutf7
from correspond.testing.net import free_ports, server_failure_text, wait_for_port

__all__ = [
    "BASIC_CAPABILITIES",
    "FULL_CAPABILITIES",
    "SPECIAL_FOLDERS",
    "DovecotServer",
    "DovecotStartError",
    "ImapUser",
    "dovecot_binary",
]

# Dovecot 2.3's own post-login list minus CONDSTORE, QRESYNC and MOVE (what "basic" advertises).
BASIC_CAPABILITIES = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
    "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN "
    "NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 ESEARCH ESORT SEARCHRES WITHIN "
    "CONTEXT=SEARCH LIST-STATUS BINARY SNIPPET=FUZZY SPECIAL-USE LITERAL+"
)

# Dovecot 2.3's post-login list (what "full" advertises without an explicit list).
FULL_CAPABILITIES = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
    "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN "
    "NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES "
    "WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW "
    "STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE"
)

SPECIAL_FOLDERS = ("Drafts", "Sent", "Trash", "Archive", "Junk")
_PR_SET_PDEATHSIG = 1
_POOL_SIZE = 100


class DovecotStartError(RuntimeError):
    """Dovecot did not start; the message carries its log."""


@dataclass(frozen=True)
class ImapUser:
    """A mailbox user on the private server. ``password`` is hidden from ``repr``."""

    username: str
    password: str
    address: str

    def __repr__(self) -> str:
        return f"ImapUser(username={self.username!r}, address={self.address!r})"


def dovecot_binary() -> str | None:
    """Path of the ``dovecot`` binary, or None when it is not installed."""
    return shutil.which("dovecot") or next(
        (p for p in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot") if os.access(p, os.X_OK)),
        None,
    )


def _make_certificate(directory: Path) -> tuple[Path, Path, str]:
    """A self-signed certificate for ``localhost`` / ``127.0.0.1`` (EC P-256: fast to make)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_text(cert_pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path, cert_pem


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM dovecot when its parent goes away, or None.

    atexit does not run when the test runner is SIGKILLed; this covers that case. ``prctl`` is
    looked up here, in the parent: the forked child of a multi-threaded process must not dlopen
    (a lock another thread held at fork time would never be released). Linux sends the signal
    when the *thread* that started the child ends, so start the server from a long-lived
    thread (the main thread, as pytest fixtures do), not from ``asyncio.to_thread``.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


class DovecotServer:
    """One private Dovecot instance on loopback; start once, add users per test.

    >>> server = DovecotServer().start()        # doctest: +SKIP
    >>> user = server.add_user()                # doctest: +SKIP
    >>> server.deliver(user, b"Subject: hi\\r\\n\\r\\nbody\\r\\n")  # doctest: +SKIP
    >>> server.stop()                           # doctest: +SKIP
    """

    host = "127.0.0.1"

    def __init__(
        self,
        variant: Literal["full", "basic"] = "full",
        *,
        allow_plaintext_auth: bool = False,
        base_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = 20.0,
        without: Iterable[str] = (),
        extra_capabilities: Iterable[str] = (),
        special_folders: Iterable[str] = SPECIAL_FOLDERS,
    ) -> None:
        if variant not in ("full", "basic"):
            raise ValueError(f"unknown variant {variant!r}")
        self.variant = variant
        self.without = frozenset(c.upper() for c in without)
        self.extra_capabilities = tuple(extra_capabilities)
        self.special_folders = tuple(special_folders)
        unknown = set(self.special_folders) - set(SPECIAL_FOLDERS)
        if unknown:
            raise ValueError(f"unknown special folders: {sorted(unknown)}")
        self.allow_plaintext_auth = allow_plaintext_auth
        self._requested_dir = Path(base_dir) if base_dir is not None else None
        self.start_timeout = start_timeout
        self.root: Path | None = None
        self.port = 0
        self.tls_port = 0
        self.lmtp_port = 0
        self.auth_port = 0
        self.cert_pem = ""
        self.cert_path = Path()
        self.key_path = Path()
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._pool: list[ImapUser] = []
        self._pending: list[ImapUser] = []
        self._atexit_registered = False
        # Mail files belong to one numeric uid/gid; as root Dovecot drops to it (no passwd entry
        # needed), otherwise it must be our own uid.
        self._mail_uid = 2000 if os.geteuid() == 0 else os.geteuid()
        self._mail_gid = 2000 if os.geteuid() == 0 else os.getegid()

    # -- paths ---------------------------------------------------------------------------------

    def _path(self, *parts: str) -> Path:
        if self.root is None:
            raise RuntimeError("DovecotServer is not started")
        return self.root.joinpath(*parts)

    @property
    def config_path(self) -> Path:
        return self._path("etc", "dovecot.conf")

    @property
    def users_path(self) -> Path:
        return self._path("etc", "users")

    @property
    def log_path(self) -> Path:
        return self._path("log", "dovecot.log")

    def maildir(self, user: ImapUser | str) -> Path:
        """The Maildir of ``user`` (for tests that inspect files or load corpora directly)."""
        name = user.username if isinstance(user, ImapUser) else user
        return self._path("mail", name, "Maildir")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> DovecotServer:
        """Write the configuration, start Dovecot and wait until all three ports accept.

        Raises DovecotStartError with Dovecot's log when it does not come up in time.
        """
        if self.running:
            return self
        binary = dovecot_binary()
        if binary is None:
            raise DovecotStartError("the dovecot binary is not installed (dovecot-imapd)")
        if self._requested_dir is not None:
            self.root = self._requested_dir
            self.root.mkdir(parents=True, exist_ok=True)
        else:
            self.root = Path(tempfile.mkdtemp(prefix="correspond-dovecot-"))
        # The mail uid must traverse the root to reach its Maildir.
        self.root.chmod(0o755)
        for sub in ("etc", "run", "state", "log", "ssl", "mail"):
            (self.root / sub).mkdir(exist_ok=True)
        mail = self.root / "mail"
        mail.chmod(0o755)
        if os.geteuid() == 0:
            os.chown(mail, self._mail_uid, self._mail_gid)
        self.cert_path, key_path, self.cert_pem = _make_certificate(self.root / "ssl")
        self.key_path = key_path
        self.users_path.touch()
        # Users written before start are known from Dovecot's first read: no reload wait.
        self._pool.clear()
        self._pending.clear()
        self._write_users(_new_user() for _ in range(_POOL_SIZE))
        self._pool.extend(self._pending)
        self._pending.clear()
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True

        last_error = ""
        # A free port can be taken by someone else before Dovecot binds it: retry a few times.
        for _attempt in range(3):
            self.port, self.tls_port, self.lmtp_port, self.auth_port = free_ports(4, self.host)
            self.config_path.write_text(self._config(key_path))
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()
            self._proc = subprocess.Popen(
                [binary, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent_hook(),
                # Its own process group, so stop() can take every Dovecot process down at once.
                start_new_session=True,
            )
            if self._wait_ready():
                return self
            last_error = self._failure_text()
            self._terminate()
        self._cleanup_dir()
        raise DovecotStartError(f"dovecot did not start:\n{last_error}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        for port in (self.port, self.tls_port, self.lmtp_port, self.auth_port):
            while True:
                if self._proc is None or self._proc.poll() is not None:
                    return False
                if wait_for_port(self.host, port, 0.2):
                    break
                if time.monotonic() >= deadline:
                    return False
        return True

    def _failure_text(self) -> str:
        return server_failure_text(self._proc, self.log_path, "dovecot")

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # SIGTERM to the whole group: children need not wait for the master to tell them.
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                proc.terminate()
            try:
                # Usually quick; a master stopped right after start-up sometimes waits ~6 s for
                # its children. Test data is throwaway, so do not wait that long.
                proc.wait(timeout=1.5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        # Children left behind by a killed master go with the whole process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.stdout:
            proc.stdout.close()

    def _cleanup_dir(self) -> None:
        if self.root is not None and self._requested_dir is None:
            shutil.rmtree(self.root, ignore_errors=True)

    def stop(self) -> None:
        """Stop Dovecot (SIGTERM, then SIGKILL) and remove the temporary folder. Idempotent."""
        self._terminate()
        self._cleanup_dir()
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    def __enter__(self) -> DovecotServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration -------------------------------------------------------------------------

    def _config(self, key_path: Path) -> str:
        root = self.root
        assert root is not None
        internal_user = "dovecot" if os.geteuid() == 0 else _current_user()
        login_user = "dovenull" if os.geteuid() == 0 else _current_user()
        capability = ""
        if self.variant == "basic" or self.without or self.extra_capabilities:
            base = BASIC_CAPABILITIES if self.variant == "basic" else FULL_CAPABILITIES
            names = [c for c in base.split() if c.upper() not in self.without]
            names += [c for c in self.extra_capabilities if c not in names]
            capability = f"imap_capability = {' '.join(names)}"
        mailboxes = "\n".join(
            f"  mailbox {name} {{\n    special_use = \\{name}\n    auto = subscribe\n  }}"
            for name in self.special_folders
        )
        return f"""# generated by correspond.testing.dovecot; does not read the system config
instance_name = correspond-{root.name}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/log/dovecot.log
info_log_path = {root}/log/dovecot.log
protocols = imap lmtp
listen = {self.host}
default_internal_user = {internal_user}
default_login_user = {login_user}
first_valid_uid = {min(self._mail_uid, 500)}
last_valid_uid = 0
first_valid_gid = 1

ssl = yes
ssl_cert = <{self.cert_path}
ssl_key = <{key_path}
disable_plaintext_auth = {"no" if self.allow_plaintext_auth else "yes"}
auth_mechanisms = plain login
auth_cache_size = 0
auth_failure_delay = 0

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/etc/users
}}
userdb {{
  driver = static
  args = uid={self._mail_uid} gid={self._mail_gid} home={root}/mail/%u
}}
mail_location = maildir:~/Maildir
mail_fsync = optimized
postmaster_address = postmaster@example.test
lmtp_save_to_detail_mailbox = no

namespace inbox {{
  inbox = yes
  separator = /
{mailboxes}
}}

service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {self.port}
  }}
  inet_listener imaps {{
    address = {self.host}
    port = {self.tls_port}
    ssl = yes
  }}
  service_count = 0
  process_min_avail = 1
}}
service lmtp {{
  inet_listener lmtp {{
    address = {self.host}
    port = {self.lmtp_port}
  }}
}}
service imap {{
  vsz_limit = 1G
}}
# SASL for the private Postfix (correspond.testing.postfix): an auth-client listener on
# loopback TCP (any name but auth-master/-userdb/-worker is a client socket).
service auth {{
  inet_listener sasl {{
    address = {self.host}
    port = {self.auth_port}
  }}
}}
# Postfix hands LMTP the full recipient address: the user is its local part.
protocol lmtp {{
  auth_username_format = %n
}}
# No auth penalty (2-15 s per failed login per client IP, auth-penalty.c): every test connects
# from 127.0.0.1, so one wrong-password test would slow every later login. Mode 0 on the
# penalty socket is the documented switch: the auth process cannot reach it and skips penalties.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
protocol imap {{
  {capability}
  mail_max_userip_connections = 1000
}}
"""

    # -- users and mail ------------------------------------------------------------------------

    def add_user(self, name: str | None = None, password: str | None = None) -> ImapUser:
        """A fresh user (never used before) on the running server, no restart needed.

        Dovecot's passwd-file driver re-reads the file when its size or mtime changes, but checks
        at most once per second of its clock (``last_sync_time == ioloop_time`` in
        ``db-passwd-file.c``): a user appended right after a lookup stays unknown until the next
        second. So generated users come from a pool written ahead of use, and a user appended
        now (explicit name, or an empty pool) is returned only once the next second has begun.
        """
        with self._lock:
            if name is None and password is None:
                if not self._pool:
                    self._write_users(_new_user() for _ in range(_POOL_SIZE))
                    self._pool.extend(self._pending)
                    self._pending.clear()
                    _wait_next_second()
                return self._pool.pop()
            user = _new_user(name, password)
            self._write_users([user])
            self._pending.clear()
            _wait_next_second()
            return user

    def _write_users(self, users: Iterable[ImapUser]) -> None:
        lines = []
        for user in users:
            for value in (user.username, user.password):
                if not value or any(c in value for c in ":\r\n"):
                    raise ValueError("user names and passwords must be non-empty, no ':' or EOL")
            lines.append(f"{user.username}:{{PLAIN}}{user.password}::::::\n")
            self._pending.append(user)
        with self.users_path.open("a", encoding="utf-8") as fh:
            fh.write("".join(lines))

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts exactly this server's certificate (hostname checked)."""
        ctx = ssl.create_default_context(cadata=self.cert_pem)
        return ctx

    def deliver(self, user: ImapUser, raw: bytes, *, sender: str = "sender@example.test") -> None:
        """Deliver ``raw`` into ``user``'s INBOX over LMTP (RFC 2033), as an MTA would."""
        with smtplib.LMTP(self.host, self.lmtp_port, timeout=30) as lmtp:
            refused = lmtp.sendmail(sender, [user.username], raw)
        if refused:
            raise RuntimeError(f"LMTP refused the delivery: {refused!r}")

    def imaplib_client(self, user: ImapUser) -> imaplib.IMAP4:
        """A logged-in stdlib client (STARTTLS, this server's certificate trusted)."""
        conn = imaplib.IMAP4(self.host, self.port, timeout=30)
        conn.starttls(ssl_context=self.ssl_context())
        conn.login(user.username, user.password)
        return conn

    def append(
        self,
        user: ImapUser,
        mailbox: str,
        raw: bytes,
        flags: Iterable[str] = (),
        date: dt.datetime | None = None,
    ) -> None:
        """APPEND ``raw`` to ``mailbox`` (RFC 3501 §6.3.11) with stdlib imaplib, for test setup.

        ``mailbox`` is the display name; it is sent as modified UTF-7 (RFC 3501 §5.1.3)."""
        conn = self.imaplib_client(user)
        try:
            flag_text = "(" + " ".join(flags) + ")" if flags else None
            when = imaplib.Time2Internaldate(date) if date is not None else None
            typ, data = conn.append(_quote(mailbox), flag_text, when, raw)
            if typ != "OK":
                raise RuntimeError(f"APPEND failed: {typ} {data!r}")
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def connections(self, user: ImapUser | str) -> int:
        """How many IMAP connections of ``user`` the server has now, as it sees them
        (``doveadm who``, from Dovecot's connection tracker: a connection counts until the
        server has noticed it closed)."""
        name = user.username if isinstance(user, ImapUser) else user
        result = subprocess.run(
            ["doveadm", "-c", str(self.config_path), "who", "-1", name],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if result.returncode not in (0, 68):  # 68 (EX_NOUSER): nobody connected
            raise RuntimeError(f"doveadm who failed: {result.stderr.strip()}")
        return sum(1 for line in result.stdout.splitlines() if line.split()[:1] == [name])

    def create_mailbox(self, user: ImapUser, mailbox: str) -> None:
        """CREATE ``mailbox`` for ``user`` (RFC 3501 §6.3.3), sent as modified UTF-7 (§5.1.3)."""
        conn = self.imaplib_client(user)
        try:
            typ, data = conn.create(_quote(mailbox))
            if typ != "OK":
                raise RuntimeError(f"CREATE failed: {typ} {data!r}")
        finally:
            with contextlib.suppress(Exception):
                conn.logout()


def _new_user(name: str | None = None, password: str | None = None) -> ImapUser:
    username = name or f"u{secrets.token_hex(5)}"
    return ImapUser(
        username=username,
        password=password or secrets.token_urlsafe(12),
        address=f"{username}@example.test",
    )


def _wait_next_second() -> None:
    """Sleep until the wall clock enters its next whole second (Dovecot's reload granularity)."""
    now = time.time()
    time.sleep(int(now) + 1 - now + 0.02)


def _quote(mailbox: str) -> str:
    """A display name as a quoted mailbox: imaplib sends str as ASCII, and Dovecot (no
    UTF8=ACCEPT here) reads names as modified UTF-7, so "Entwürfe" goes as "Entw&APw-rfe"."""
    escaped = encode_mutf7(mailbox).decode("ascii").replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name
