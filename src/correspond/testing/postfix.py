"""A private Postfix submission server for tests and benchmarks, delivering into the test Dovecot.

Never touches the system Postfix: :class:`PostfixServer` writes its own ``main.cf`` and
``master.cf`` (``config_directory``), queue (``queue_directory``) and data (``data_directory``)
under one temporary folder and runs Postfix's ``master`` in the foreground on that
configuration (``master -c <dir> -d``: what ``postfix -c <dir> start`` would start, without the
start script's permission checks, which take seconds). It listens on loopback only:

- ``port``: submission (RFC 6409) with STARTTLS (RFC 3207) on the test Dovecot's self-signed
  certificate (one host, one certificate: an account that trusts its IMAP server's certificate
  trusts its SMTP server too; ``cert_pem``), AUTH (RFC 4954) only after STARTTLS, through the
  test Dovecot's authentication (``smtpd_sasl_type = dovecot`` on Dovecot's ``auth_port``):
  the Dovecot users sign in with their IMAP password;
- mail for ``example.test`` (the Dovecot users' domain) is delivered by LMTP (RFC 2033) into
  the test Dovecot (``virtual_transport = lmtp:...``); mail for any other domain is bounced
  at once (``default_transport = error``): nothing leaves the machine;
- :attr:`PostfixServer.REFUSED` is refused at RCPT with a 5xx, :attr:`PostfixServer.DEFERRED`
  with a 4xx (the permanent and transient failures of the tests).

``message_size_limit`` is what the server announces as SIZE (RFC 1870). As root (the tests
run so) the queue belongs to the ``postfix`` user of the Debian package, and ``master`` drops
its children to it; port 25 and 587 of the machine and ``/etc/postfix/main.cf`` are never used.

This module is imported by benchmarks too, so it must not import pytest.
"""

from __future__ import annotations

import atexit
import contextlib
import grp
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from correspond.testing.dovecot import DovecotServer, _die_with_parent_hook
from correspond.testing.net import free_port, server_failure_text, wait_for_port

__all__ = ["PostfixServer", "PostfixStartError", "postfix_binary"]

#: Postfix's daemons (Debian: /usr/lib/postfix/sbin).
_DAEMON_DIRS = ("/usr/lib/postfix/sbin", "/usr/libexec/postfix", "/usr/lib/postfix")
#: The queue subdirectories, with their group and mode (Debian's postfix-files).
_QUEUE_DIRS = {
    "active": ("", 0o700),
    "bounce": ("", 0o700),
    "corrupt": ("", 0o700),
    "defer": ("", 0o700),
    "deferred": ("", 0o700),
    "flush": ("", 0o700),
    "hold": ("", 0o700),
    "incoming": ("", 0o700),
    "private": ("", 0o700),
    "saved": ("", 0o700),
    "trace": ("", 0o700),
    "maildrop": ("postdrop", 0o730),
    "public": ("postdrop", 0o710),
    "pid": ("root", 0o755),
}


class PostfixStartError(RuntimeError):
    """Postfix did not start; the message carries its log."""


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies, which wait for whoever reaps
    orphans here, do not count: they hold no port, file or CPU)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def postfix_binary() -> str | None:
    """The directory of Postfix's ``master`` daemon, or None when Postfix is not installed."""
    for directory in _DAEMON_DIRS:
        if os.access(os.path.join(directory, "master"), os.X_OK):
            return directory
    return None


class PostfixServer:
    """One private Postfix on loopback, relaying authenticated submissions into ``dovecot``.

    >>> server = PostfixServer(dovecot).start()   # doctest: +SKIP
    >>> server.port                               # doctest: +SKIP
    >>> server.stop()                             # doctest: +SKIP
    """

    host = "127.0.0.1"
    #: The domain delivered into the test Dovecot (its users' addresses).
    local_domain = "example.test"
    #: A recipient refused for good (550 at RCPT) and one refused for now (450 at RCPT).
    REFUSED = "refused@example.test"
    DEFERRED = "deferred@example.test"

    def __init__(
        self,
        dovecot: DovecotServer,
        *,
        message_size_limit: int = 10_240_000,
        start_timeout: float = 10.0,
    ) -> None:
        self.dovecot = dovecot
        self.message_size_limit = message_size_limit
        self.start_timeout = start_timeout
        self.root: Path | None = None
        self.port = 0
        self.cert_pem = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False

    # -- paths ---------------------------------------------------------------------------------

    def _path(self, *parts: str) -> Path:
        if self.root is None:
            raise RuntimeError("PostfixServer is not started")
        return self.root.joinpath(*parts)

    @property
    def config_dir(self) -> Path:
        return self._path("etc")

    @property
    def queue_dir(self) -> Path:
        return self._path("queue")

    @property
    def log_path(self) -> Path:
        return self._path("log", "postfix.log")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> PostfixServer:
        """Write the configuration, start ``master`` and wait until submission accepts.

        Raises PostfixStartError with Postfix's log when it does not come up in time."""
        if self.running:
            return self
        daemons = postfix_binary()
        if daemons is None:
            raise PostfixStartError("Postfix is not installed (apt-get install postfix)")
        if not self.dovecot.running or not self.dovecot.auth_port:
            raise PostfixStartError("the test Dovecot must be running (SASL and LMTP)")
        self.root = Path(tempfile.mkdtemp(prefix="correspond-postfix-"))
        self.root.chmod(0o755)
        for sub in ("etc", "queue", "data", "log"):
            (self.root / sub).mkdir()
        cert_path = self.dovecot.cert_path
        key_path = cert_path.parent / "key.pem"
        self.cert_pem = self.dovecot.cert_pem
        owner, group = self._mail_owner()
        self._make_queue(owner)
        data = self.root / "data"
        if os.geteuid() == 0:
            os.chown(data, pwd.getpwnam(owner).pw_uid, -1)
            # Postfix writes its log as root through postlogd; the directory is ours.
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        last_error = ""
        for _attempt in range(3):
            self.port = free_port(self.host)
            (self.config_dir / "main.cf").write_text(
                self._main_cf(daemons, owner, group, cert_path, key_path)
            )
            (self.config_dir / "master.cf").write_text(self._master_cf())
            # Postfix reads a file changed in the last second again and again, 300 ms apart,
            # until it is older (a guard against half-written files): seconds at every start.
            past = time.time() - 5
            for name in ("main.cf", "master.cf"):
                os.utime(self.config_dir / name, (past, past))
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()
            self._proc = subprocess.Popen(
                [os.path.join(daemons, "master"), "-c", str(self.config_dir), "-d"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent_hook(),
                # Its own process group: stop() takes every Postfix process down at once.
                start_new_session=True,
                env={**os.environ, "MAIL_CONFIG": str(self.config_dir)},
            )
            if self._wait_ready():
                return self
            last_error = self._failure_text()
            self._terminate()
        self._cleanup_dir()
        raise PostfixStartError(f"postfix did not start:\n{last_error}")

    def _mail_owner(self) -> tuple[str, str]:
        if os.geteuid() != 0:
            raise PostfixStartError("the private Postfix runs as root (its daemons drop rights)")
        for name in ("postfix",):
            with contextlib.suppress(KeyError):
                pwd.getpwnam(name)
                grp.getgrnam("postdrop")
                return name, "postdrop"
        raise PostfixStartError("no postfix user or postdrop group (install the postfix package)")

    def _make_queue(self, owner: str) -> None:
        uid = pwd.getpwnam(owner).pw_uid
        queue = self.queue_dir
        for name, (group, mode) in _QUEUE_DIRS.items():
            path = queue / name
            path.mkdir()
            gid = grp.getgrnam(group).gr_gid if group else -1
            os.chown(path, 0 if group == "root" else uid, gid)
            path.chmod(mode)

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc is None or self._proc.poll() is not None:
                return False
            if wait_for_port(self.host, self.port, 0.1):
                return True
            if time.monotonic() >= deadline:
                return False

    def _failure_text(self) -> str:
        return server_failure_text(self._proc, self.log_path, "postfix")

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # master stops its children on SIGTERM (what ``postfix stop`` sends it).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        # A child left behind by a killed master goes with the process group; wait (briefly)
        # until the group is empty, so a stopped server leaves no process behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.stdout:
            proc.stdout.close()

    def _cleanup_dir(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def stop(self) -> None:
        """Stop Postfix (SIGTERM to its process group, then SIGKILL) and remove the temporary
        folder. Idempotent."""
        self._terminate()
        self._cleanup_dir()
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    def __enter__(self) -> PostfixServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the queue -----------------------------------------------------------------------------

    def queue_empty(self) -> bool:
        """Whether every accepted message has left the queue (delivered or bounced)."""
        for name in ("incoming", "active", "deferred", "hold", "maildrop"):
            for _dirpath, _dirs, files in os.walk(self._path("queue", name)):
                if files:
                    return False
        return True

    def wait_queue_empty(self, timeout: float = 10.0) -> None:
        """Wait until :meth:`queue_empty`; TimeoutError with the log's tail otherwise."""
        deadline = time.monotonic() + timeout
        while not self.queue_empty():
            if time.monotonic() >= deadline:
                tail = self._failure_text()[-2000:]
                raise TimeoutError(f"the Postfix queue did not empty:\n{tail}")
            time.sleep(0.02)

    # -- configuration -------------------------------------------------------------------------

    def _main_cf(
        self, daemons: str, owner: str, group: str, cert_path: Path, key_path: Path
    ) -> str:
        root = self.root
        assert root is not None
        dovecot = self.dovecot
        return f"""# generated by correspond.testing.postfix; does not read /etc/postfix/main.cf
compatibility_level = 3.6
config_directory = {root}/etc
queue_directory = {root}/queue
data_directory = {root}/data
daemon_directory = {daemons}
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = {owner}
setgid_group = {group}
maillog_file = {root}/log/postfix.log
maillog_file_prefixes = {root}/log
import_environment = MAIL_CONFIG MAIL_DEBUG TZ LANG=C
inet_interfaces = {self.host}
inet_protocols = ipv4
myhostname = mail.{self.local_domain}
mydomain = {self.local_domain}
myorigin = $myhostname
mydestination =
mynetworks = {self.host}/32
alias_maps =
alias_database =
local_recipient_maps =
local_transport = error:no local delivery in the test Postfix
default_transport = error:the test Postfix delivers to {self.local_domain} only
relay_transport = error:the test Postfix relays nothing
virtual_mailbox_domains = {self.local_domain}
virtual_transport = lmtp:inet:{dovecot.host}:{dovecot.lmtp_port}
smtpd_reject_unlisted_recipient = no
smtpd_peername_lookup = no
smtpd_banner = $myhostname ESMTP correspond test
biff = no
append_dot_mydomain = no
message_size_limit = {self.message_size_limit}
mailbox_size_limit = 0
in_flow_delay = 0
smtpd_error_sleep_time = 0
smtpd_client_connection_rate_limit = 0
delay_warning_time = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
bounce_queue_lifetime = 0
maximal_queue_lifetime = 1h
lmtp_connection_cache_on_demand = yes
smtpd_tls_cert_file = {cert_path}
smtpd_tls_key_file = {key_path}
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_tls_session_cache_database =
tls_random_source = dev:/dev/urandom
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:{dovecot.host}:{dovecot.auth_port}
smtpd_sasl_authenticated_header = no
smtpd_client_restrictions =
smtpd_helo_restrictions =
smtpd_sender_restrictions =
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions =
  check_recipient_access inline:{{ {{{self.REFUSED}=REJECT no such person here}},
    {{{self.DEFERRED}=DEFER_IF_PERMIT mailbox busy, try again later}} }},
  permit_sasl_authenticated, reject
"""

    def _master_cf(self) -> str:
        # Every service unchrooted (the queue is not a chroot jail); only what submission,
        # queueing, LMTP delivery, bounces and logging need.
        return f"""# generated by correspond.testing.postfix
{self.host}:{self.port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""
