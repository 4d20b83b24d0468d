"""A real ejabberd (Debian `ejabberd`, 23.01) as a child process, for the tests.

Like prosody.py: every server gets its own temp dir (config, Mnesia spool,
logs, cert) and its own loopback IP with c2s/s2s on the standard ports, and
is stopped by its PID.

    srv = EjabberdServer(tmp_path / "ej", domain="ejabberd.test", ip="127.0.0.40")
    srv.add_host("tern.test", "127.0.0.1")   # tern.test's s2s is 127.0.0.1:5269
    srv.register("bob", "pw")                # queued until start() if stopped
    srv.start()
    ...
    srv.stop()

Finding peers on loopback: ejabberd looks up the SRV record of a peer with
the Erlang DNS client (inet_res, configured by the ERL_INETRC file written
here), then resolves the SRV target, or the bare domain when there is no SRV,
with libc getaddrinfo, which only /etc/hosts and the machine's DNS feed. A
hosts file in ERL_INETRC is therefore NOT enough (ejabberd logs `DNS lookup
failed: enoname`). The rig runs a small DNS server (SrvResponder) that
ejabberd's inet_res asks, answering `_xmpp-server._tcp.<peer>` with an IP
literal as the target, which getaddrinfo takes as it is.

Why `erl` and not `ejabberdctl foreground`: run as root, ejabberdctl su's to
the `ejabberd` user, who cannot enter pytest's 0700 tmp dirs, and it keeps a
shell between us and the VM, so the PID we hold would not be the server's.
The command line here is the one ejabberdctl builds, minus those two.

No epmd: the node listens for Erlang distribution on a fixed port of its own
IP (-erl_epmd_port, -start_epmd false, as ejabberdctl does with
ERL_DIST_PORT), with a random cookie, so ctl() works without leaving a
system-wide epmd daemon behind.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

from xmpp.prosody import ProsodyServer, _port_open, make_cert

ERL = os.environ.get("ERL_BIN", "erl")

# ejabberd 23.01 starts in 2-4 s here; the cap is for slow CI.
START_WAIT = 30.0
STOP_WAIT = 15.0
CTL_WAIT = 30.0
# Erlang distribution (for ctl) listens here on the server's own IP.
DEFAULT_DIST_PORT = 4370
# ejabberd.log, once every listener and module is up.
STARTED = "is started in the node"


def ejabberd_lib_dir() -> Path | None:
    """The directory ERL_LIBS must name for the VM to find ejabberd's code
    (Debian: /usr/lib/<multiarch>), or None if ejabberd is not installed."""
    apps = sorted(glob.glob("/usr/lib/*/ejabberd-*/ebin/ejabberd.app"))
    return Path(apps[-1]).parents[2] if apps else None


def have_ejabberd() -> bool:
    return shutil.which(ERL) is not None and ejabberd_lib_dir() is not None


def terminate(proc: subprocess.Popen, timeout: float = STOP_WAIT) -> int:
    """SIGTERM `proc` (a child we started), SIGKILL it after `timeout`;
    returns its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode


def yaml_str(value) -> str:
    """A YAML double-quoted scalar (JSON string escaping is valid YAML)."""
    s = str(value)
    s = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{s}"'


class SrvResponder:
    """A tiny authoritative DNS server on UDP `ip`:<any port> that answers
    SRV queries from a table (RFC 2782 records, RFC 1035 wire format) and
    NXDOMAIN to everything else, for ejabberd's resolver only."""

    def __init__(self, ip: str):
        self.ip = ip
        self.port = 0
        self._srv: dict[str, tuple[str, int]] = {}
        self._sock: socket.socket | None = None

    def add_srv(self, name: str, target_ip: str, port: int) -> None:
        self._srv[name.lower().rstrip(".")] = (target_ip, port)

    def start(self) -> None:
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.ip, 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        threading.Thread(target=self._serve, args=(sock,), name="ejabberd-rig-dns", daemon=True).start()

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()  # the thread's recvfrom fails and it ends

    def _serve(self, sock: socket.socket) -> None:
        while True:
            try:
                query, peer = sock.recvfrom(512)
            except OSError:
                return
            answer = self.answer(query)
            if answer:
                try:
                    sock.sendto(answer, peer)
                except OSError:
                    pass  # the asker is gone; it retries or gives up

    def answer(self, query: bytes) -> bytes | None:
        """The response to one query message; None for a malformed one."""
        if len(query) < 12:
            return None
        qid, flags, qdcount = struct.unpack("!HHH", query[:6])
        if qdcount != 1 or flags & 0x8000:
            return None
        labels, pos = [], 12
        while pos < len(query) and query[pos] != 0:
            n = query[pos]
            labels.append(query[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
            pos += 1 + n
        if pos + 5 > len(query):
            return None
        qtype, qclass = struct.unpack("!HH", query[pos + 1 : pos + 5])
        question = query[12 : pos + 5]
        record = self._srv.get(".".join(labels).lower()) if qtype == 33 and qclass == 1 else None
        # QR, AA, RD copied; RCODE 3 (NXDOMAIN) when there is nothing to say
        rflags = 0x8400 | (flags & 0x0100) | (0 if record else 3)
        out = struct.pack("!HHHHHH", qid, rflags, 1, 1 if record else 0, 0, 0) + question
        if record:
            target_ip, port = record
            target = b"".join(bytes([len(l)]) + l.encode() for l in target_ip.split(".")) + b"\0"
            rdata = struct.pack("!HHH", 0, 0, port) + target
            # name: a pointer to the question's (offset 12)
            out += struct.pack("!HHHIH", 0xC00C, 33, 1, 60, len(rdata)) + rdata
        return out


class EjabberdServer:
    """One ejabberd: the virtual host `domain`, c2s and s2s on one loopback IP.

    Parameters
      workdir           a fresh directory (created) that holds everything
      domain            the virtual host, e.g. "ejabberd.test"
      ip                loopback address to bind, e.g. "127.0.0.3" (one per server)
      c2s_port, s2s_port
                        ports on `ip`; keep s2s on 5269 if a peer must find
                        this server by name alone
      dist_port         Erlang distribution port on `ip` (for ctl)
      s2s_use_starttls  "optional" | "required" | "false" (written as-is)
      dialback          load mod_s2s_dialback (XEP-0220)
      extra_config      raw YAML appended to the top level
      log_level         ejabberd's loglevel (debug shows every stanza)
    """

    def __init__(
        self,
        workdir: Path,
        domain: str = "ejabberd.test",
        ip: str = "127.0.0.3",
        *,
        c2s_port: int = 5222,
        s2s_port: int = 5269,
        dist_port: int = DEFAULT_DIST_PORT,
        s2s_use_starttls: str = "optional",
        dialback: bool = True,
        extra_config: str = "",
        log_level: str = "debug",
    ):
        self.dir = Path(workdir).resolve()
        self.domain = domain
        self.ip = ip
        self.c2s_port = c2s_port
        self.s2s_port = s2s_port
        self.dist_port = dist_port
        self.s2s_use_starttls = s2s_use_starttls
        self.dialback = dialback
        self.extra_config = extra_config
        self.log_level = log_level
        self.node = f"ejabberd@{ip}"
        self.cookie = secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None
        self.passwords: dict[str, str] = {}
        self._pending_users: dict[str, str] = {}
        self.dns = SrvResponder(ip)
        self.c2s = (ip, c2s_port)
        self.s2s = (ip, s2s_port)

        d = self.dir
        self.config_path = d / "ejabberd.yml"
        self.inetrc_path = d / "inetrc"
        self.spool_dir = d / "spool"
        self.log_path = d / "logs" / "ejabberd.log"
        self.stdout_path = d / "ejabberd.stdout"
        # self-signed, for domain and *.domain (PEM)
        self.cert_path = d / "certs" / f"{domain}.crt"
        self.key_path = d / "certs" / f"{domain}.key"
        for sub in ("spool", "logs", "certs"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        make_cert(self.cert_path, self.key_path, [domain, f"*.{domain}"])

    pid = ProsodyServer.pid
    running = ProsodyServer.running

    def jid(self, user: str) -> str:
        return f"{user}@{self.domain}"

    # -- name resolution --------------------------------------------------

    def add_host(self, name: str, ip: str = "127.0.0.1", port: int = 5269) -> None:
        """Make ejabberd find the XMPP server of `name` at ip:port.

        Works before start() and while running (the records are served live),
        but ejabberd bounces stanzas to a domain it failed to reach for a
        while, so add hosts before anything is sent there.
        """
        self.dns.add_srv(f"_xmpp-server._tcp.{name}", ip, port)

    # -- config -----------------------------------------------------------

    def inetrc_text(self) -> str:
        # ejabberd asks inet_res (the Erlang DNS client, which this file
        # configures) for SRV records, but resolves the SRV target with
        # getaddrinfo (libc: /etc/hosts, the machine's DNS), which no file of
        # ours reaches. So the rig's SRV targets are IP literals, which
        # getaddrinfo takes as they are. No resolv.conf: .test names never
        # leave the machine.
        return (
            "%% Written by tests/python/xmpp/ejabberd.py (ERL_INETRC).\n"
            '{resolv_conf, ""}.\n'
            f"{{nameserver, {{{self.dns.ip.replace('.', ',')}}}, {self.dns.port}}}.\n"
            "{lookup, [file, dns]}.\n"
        )

    def config_text(self) -> str:
        modules = ["mod_roster", "mod_disco", "mod_ping", "mod_version"]
        if self.dialback:
            modules.append("mod_s2s_dialback")
        mods = "\n".join(f"  {m}: {{}}" for m in modules)
        out = f"""# Written by tests/python/xmpp/ejabberd.py: a throwaway test server.
loglevel: {self.log_level}
log_rotate_count: 0
hosts:
  - {yaml_str(self.domain)}
certfiles:
  - {yaml_str(self.cert_path)}
  - {yaml_str(self.key_path)}

# Loopback only, one IP per server.
listen:
  -
    port: {self.c2s_port}
    ip: {yaml_str(self.ip)}
    module: ejabberd_c2s
    starttls_required: true
  -
    port: {self.s2s_port}
    ip: {yaml_str(self.ip)}
    module: ejabberd_s2s_in

s2s_use_starttls: {self.s2s_use_starttls}
# The rig's DNS (SrvResponder) answers at once; a lookup that waits is a bug.
# s2s_dns_retries counts tries: 0 fails every lookup at once, with
# "DNS lookup failed: timeout".
outgoing_s2s_families: [ipv4]
s2s_dns_timeout: 2
s2s_dns_retries: 1

auth_method: internal
auth_password_format: scram
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
api_permissions:
  "console commands":
    from: [ejabberd_ctl]
    who: all
    what: "*"

modules:
{mods}
"""
        if self.extra_config:
            out += "\n" + self.extra_config.rstrip() + "\n"
        return out

    def write_config(self) -> Path:
        self.config_path.write_text(self.config_text())
        self.inetrc_path.write_text(self.inetrc_text())
        return self.config_path

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            EJABBERD_CONFIG_PATH=str(self.config_path),
            EJABBERD_LOG_PATH=str(self.log_path),
            ERL_INETRC=str(self.inetrc_path),
            ERL_LIBS=str(ejabberd_lib_dir()),
            ERL_CRASH_DUMP_BYTES="0",
            HOME=str(self.dir),  # the VM would write ~/.erlang.cookie otherwise
        )
        return env

    def _dist_args(self) -> list[str]:
        return [
            "-setcookie", self.cookie,
            "-start_epmd", "false",
            "-erl_epmd_port", str(self.dist_port),
        ]

    # -- users ------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = CTL_WAIT) -> str:
        """`ejabberdctl ARGS...` against this running node (what ejabberdctl
        runs: ejabberd_ctl on a hidden node); raises on non-zero exit."""
        if not self.running:
            raise RuntimeError(f"ctl {args[:1]} needs a running ejabberd")
        ctl_node = f"ctl-{secrets.token_hex(4)}@{self.ip}"
        proc = subprocess.run(
            [ERL, "-name", ctl_node, *self._dist_args(), "-dist_listen", "false",
             "-hidden", "-noinput", "-s", "ejabberd_ctl", "-extra", self.node, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self._env(),
            cwd=self.dir,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"ejabberdctl {' '.join(args[:1])} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc.stdout

    def register(self, user: str, password: str) -> str:
        """Create user@domain; on a stopped server at the next start().

        Returns the bare JID.
        """
        if self.running:
            self.ctl("register", user, self.domain, password)
        else:
            self._pending_users[user] = password
        self.passwords[user] = password
        return self.jid(user)

    # -- lifecycle --------------------------------------------------------

    def _ports(self) -> list[tuple[str, int]]:
        return [("c2s", self.c2s_port), ("s2s", self.s2s_port), ("dist", self.dist_port)]

    def start(self, timeout: float = START_WAIT) -> "EjabberdServer":
        """Write the config, run the VM in the foreground, wait until ejabberd
        says it started and listens on c2s and s2s; then register the users
        queued while stopped."""
        if self.running:
            return self
        for what, port in self._ports():
            if _port_open(self.ip, port, timeout=0.2):
                raise RuntimeError(
                    f"{self.ip}:{port} ({what}) is already taken: give this "
                    "EjabberdServer another ip="
                )
        self.dns.start()
        self.write_config()
        # Readiness from the log, not by connecting: a probe connection would
        # show up in the log as a failed s2s/c2s stream. Distribution listens
        # before any application starts, so STARTED covers it.
        marks = [
            STARTED,
            f"Start accepting TCP connections at {self.ip}:{self.c2s_port} for ejabberd_c2s",
            f"Start accepting TCP connections at {self.ip}:{self.s2s_port} for ejabberd_s2s_in",
        ]
        seen = {m: len(self.log_lines(m)) for m in marks}
        out = open(self.stdout_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [ERL, "-name", self.node, *self._dist_args(),
                 "-kernel", "inet_dist_use_interface", "{" + self.ip.replace(".", ",") + "}",
                 "-noinput", "-mnesia", "dir", f'"{self.spool_dir}"', "-s", "ejabberd",
                 # the log file has it all; stdout only what stops a start
                 "-ejabberd", "quiet", "true"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=self._env(),
                start_new_session=True,  # a ^C in pytest is not for ejabberd
            )
        finally:
            out.close()

        deadline = time.monotonic() + timeout
        waiting = marks
        while waiting:
            if self.proc.poll() is not None:
                self._fail(f"ejabberd exited (rc={self.proc.returncode}) before it started")
            if time.monotonic() > deadline:
                self._fail(f"ejabberd did not log {waiting} within {timeout}s")
            waiting = [m for m in waiting if len(self.log_lines(m)) <= seen[m]]
            time.sleep(0.1)
        pending, self._pending_users = self._pending_users, {}
        for user, password in pending.items():
            self.register(user, password)
        return self

    def stop(self, timeout: float = STOP_WAIT) -> int | None:
        """SIGTERM our VM by PID (a clean init:stop(); SIGKILL after
        `timeout`); returns its exit status."""
        if self.proc is None:
            return None
        rc = terminate(self.proc, timeout)
        self.dns.stop()
        return rc

    # -- logs -------------------------------------------------------------

    def log_lines(self, needle: str | None = None) -> list[str]:
        """Lines of ejabberd.log (containing `needle`)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return lines if needle is None else [l for l in lines if needle in l]

    def wait_log(self, needle: str, timeout: float = 10.0) -> list[str]:
        """log_lines(needle) once there are any; ejabberd's file logger
        buffers its writes (delayed_write), so a line can land a second or
        two after what it tells. Raises AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while not (lines := self.log_lines(needle)):
            if time.monotonic() > deadline:
                raise AssertionError(f"no line with {needle!r} in {self.log_path} within {timeout}s")
            time.sleep(0.1)
        return lines

    def errors(self) -> list[str]:
        """ejabberd.log lines at level error or worse."""
        levels = ("[error]", "[critical]", "[alert]", "[emergency]")
        return [l for l in self.log_lines() if any(f" {lv} " in l for lv in levels)]

    # The Prosody rig's: the same two files (log_path, stdout_path), the
    # same `proc`. A failed start leaves the DNS responder to stop().
    log_tail = ProsodyServer.log_tail
    _fail = ProsodyServer._fail
