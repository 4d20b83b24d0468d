"""A real Prosody (Debian `prosody`, 0.12) as a child process, for the tests.

Every server gets its own temp dir (config, data, pidfile, log, cert, hosts
file) and its own loopback IP, so several can run side by side on the
standard ports and still find each other the way federation does (by name,
through Prosody's resolver). Everything is time-bounded; the server is
stopped by its PID and nothing else is ever signalled.

    srv = ProsodyServer(tmp_path / "p1", domain="xmpp.test", ip="127.0.0.2")
    srv.add_host("tern.test", "127.0.0.1")   # before start(): see add_host
    srv.start()
    srv.register("alice", "pw")
    ...
    srv.stop()
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PROSODY = os.environ.get("PROSODY_BIN", "prosody")
PROSODYCTL = os.environ.get("PROSODYCTL_BIN", "prosodyctl")

# Prosody starts in well under a second here; the cap is for slow CI.
START_WAIT = 15.0
STOP_WAIT = 10.0
CTL_WAIT = 30.0

DEFAULT_COMPONENT_SECRET = "tern-component-secret"


def have_prosody() -> bool:
    return shutil.which(PROSODY) is not None and shutil.which(PROSODYCTL) is not None


def lua_str(value) -> str:
    """A Lua string literal (double-quoted, escaped)."""
    s = str(value)
    s = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{s}"'


def _port_open(ip: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def _openssl(*args: str) -> None:
    proc = subprocess.run(
        ["openssl", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed ({proc.returncode}): {proc.stderr}")


_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]


def make_cert(cert: Path, key: Path, names: list[str], days: int = 30) -> None:
    """A self-signed EC cert whose CN is names[0] and SANs are all of names."""
    san = ",".join(f"DNS:{n}" for n in names)
    _openssl(
        "req", "-x509", "-nodes", *_EC_KEY,
        "-keyout", str(key), "-out", str(cert),
        "-days", str(days),
        "-subj", f"/CN={names[0]}",
        "-addext", f"subjectAltName={san}",
    )


def make_ca(cert: Path, key: Path, name: str = "tern test federation CA", days: int = 30) -> None:
    """A self-signed EC CA certificate (basicConstraints CA, keyCertSign) to sign with make_signed_cert."""
    _openssl(
        "req", "-x509", "-nodes", *_EC_KEY,
        "-keyout", str(key), "-out", str(cert),
        "-days", str(days),
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )


def make_signed_cert(
    ca_cert: Path, ca_key: Path, cert: Path, key: Path, names: list[str], days: int = 30
) -> None:
    """An EC server certificate for `names` (DNS SANs, CN names[0]) signed by the CA, usable
    for both TLS roles as XMPP servers use it (serverAuth and clientAuth)."""
    csr = cert.with_suffix(".csr")
    ext = cert.with_suffix(".ext")
    _openssl("req", "-new", "-nodes", *_EC_KEY, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={names[0]}")
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        f"subjectAltName={','.join(f'DNS:{n}' for n in names)}\n"
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", str(days), "-extfile", str(ext),
    )


class ProsodyServer:
    """One Prosody: a VirtualHost `domain`, MUC at `muc.<domain>`, XEP-0114
    components, c2s/s2s/component ports on one loopback IP.

    Parameters
      workdir     a fresh directory (created) that holds everything
      domain      the VirtualHost, e.g. "xmpp.test"
      ip          loopback address to bind, e.g. "127.0.0.2" (one per server)
      c2s_port, s2s_port, component_port
                  ports on `ip`; keep s2s on 5269 if a peer must find this
                  server by name alone (no SRV records in the rig)
      components  {component JID: secret} for XEP-0114 external components;
                  default {"tern.<domain>": DEFAULT_COMPONENT_SECRET}; {} for none
      muc         add `Component "muc.<domain>" "muc"`
      s2s_require_encryption, s2s_secure_auth, c2s_require_encryption
                  written as-is into the config
      cafile      PEM trust anchors for peers' certificates (`ssl.cafile`);
                  replace cert_path/key_path before start() to use a
                  certificate signed by it
      extra_global, extra_host
                  raw Lua appended to the global section / the VirtualHost
      log_level   minimum level written to prosody.log
    """

    def __init__(
        self,
        workdir: Path,
        domain: str = "xmpp.test",
        ip: str = "127.0.0.2",
        *,
        c2s_port: int = 5222,
        s2s_port: int = 5269,
        component_port: int = 5347,
        components: dict[str, str] | None = None,
        muc: bool = True,
        s2s_require_encryption: bool = False,
        s2s_secure_auth: bool = False,
        c2s_require_encryption: bool = True,
        cafile: Path | None = None,
        modules: list[str] | None = None,
        extra_global: str = "",
        extra_host: str = "",
        log_level: str = "debug",
    ):
        self.dir = Path(workdir).resolve()
        self.domain = domain
        self.ip = ip
        self.c2s_port = c2s_port
        self.s2s_port = s2s_port
        self.component_port = component_port
        self.components = (
            {f"tern.{domain}": DEFAULT_COMPONENT_SECRET} if components is None else dict(components)
        )
        self.muc_domain = f"muc.{domain}" if muc else None
        self.s2s_require_encryption = s2s_require_encryption
        self.s2s_secure_auth = s2s_secure_auth
        self.c2s_require_encryption = c2s_require_encryption
        self.cafile = Path(cafile).resolve() if cafile else None
        self.modules = list(modules) if modules is not None else [
            "roster", "saslauth", "tls", "dialback", "disco", "ping", "time", "version",
        ]
        self.extra_global = extra_global
        self.extra_host = extra_host
        self.log_level = log_level
        self.proc: subprocess.Popen | None = None
        self.passwords: dict[str, str] = {}
        self._hosts: dict[str, list[str]] = {}

        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "data").mkdir(exist_ok=True)
        (self.dir / "certs").mkdir(exist_ok=True)
        # Prosody answers for itself without the resolver, but its own names
        # in the hosts file cost nothing and help tools run inside the rig.
        self._write_hosts()
        self.resolv_path.write_text("nameserver 127.0.0.1\n")
        names = [domain, f"*.{domain}"]
        make_cert(self.cert_path, self.key_path, names)

    # -- paths / addresses ------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.dir / "prosody.cfg.lua"

    @property
    def log_path(self) -> Path:
        return self.dir / "prosody.log"

    @property
    def stdout_path(self) -> Path:
        return self.dir / "prosody.stdout"

    @property
    def pid_path(self) -> Path:
        return self.dir / "prosody.pid"

    @property
    def hosts_path(self) -> Path:
        return self.dir / "hosts"

    @property
    def resolv_path(self) -> Path:
        return self.dir / "resolv.conf"

    @property
    def cert_path(self) -> Path:
        """Self-signed cert for domain and *.domain (PEM); trust it to verify."""
        return self.dir / "certs" / f"{self.domain}.crt"

    @property
    def key_path(self) -> Path:
        return self.dir / "certs" / f"{self.domain}.key"

    @property
    def c2s(self) -> tuple[str, int]:
        return (self.ip, self.c2s_port)

    @property
    def s2s(self) -> tuple[str, int]:
        return (self.ip, self.s2s_port)

    @property
    def component(self) -> tuple[str, int]:
        return (self.ip, self.component_port)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def jid(self, user: str) -> str:
        return f"{user}@{self.domain}"

    # -- name resolution --------------------------------------------------

    def add_host(self, name: str, ip: str = "127.0.0.1", *, restart: bool = False) -> None:
        """Make Prosody resolve `name` to `ip` (an A or AAAA by the address).

        Prosody (libunbound) reads the hosts file once, at start: neither
        SIGHUP nor a not-yet-used resolver picks up a later change. So call
        this before start(); on a running server it raises unless
        restart=True, which restarts Prosody (users and rosters survive).
        Only addresses: there are no SRV records (unmapped `.test` names are
        NXDOMAIN at once), so a peer is reached on port 5269 of that address.
        """
        if self.running and not restart:
            raise RuntimeError(
                f"add_host({name!r}) on a running Prosody takes effect only after a "
                "restart: call it before start(), or pass restart=True"
            )
        self._hosts.setdefault(name, [])
        if ip not in self._hosts[name]:
            self._hosts[name].append(ip)
        self._write_hosts()
        if self.running:
            self.restart()

    def _write_hosts(self) -> None:
        lines = ["# written by tests/python/xmpp/prosody.py"]
        lines.append(f"{self.ip} {self.domain}")
        for name, ips in self._hosts.items():
            for ip in ips:
                lines.append(f"{ip} {name}")
        self.hosts_path.write_text("\n".join(lines) + "\n")

    # -- config -----------------------------------------------------------

    def _ssl_block(self, indent: str) -> str:
        lines = [
            f"certificate = {lua_str(self.cert_path)};",
            f"key = {lua_str(self.key_path)};",
        ]
        if self.cafile:
            lines.append(f"cafile = {lua_str(self.cafile)};")
        inner = "".join(f"{indent}    {l}\n" for l in lines)
        return f"{indent}ssl = {{\n{inner}{indent}}}\n"

    def config_text(self) -> str:
        d = self.dir
        mods = "; ".join(lua_str(m) for m in self.modules)
        b = lambda v: "true" if v else "false"  # noqa: E731
        out = f"""-- Written by tests/python/xmpp/prosody.py: a throwaway test server.
-- prosodyctl would setuid() to the `prosody` user when run as root; stay.
run_as_root = true
daemonize = false
pidfile = {lua_str(d / "prosody.pid")}
data_path = {lua_str(d / "data")}
plugin_paths = {{ }}
log = {{
    {{ levels = {{ min = {lua_str(self.log_level)} }}, to = "file", filename = {lua_str(self.log_path)} }};
}}

-- Loopback only, one IP per server, no IPv6 wildcard.
interfaces = {{ {lua_str(self.ip)} }}
local_interfaces = {{ {lua_str(self.ip)} }}
c2s_ports = {{ {self.c2s_port} }}
s2s_ports = {{ {self.s2s_port} }}
c2s_direct_tls_ports = {{ }}
s2s_direct_tls_ports = {{ }}
component_ports = {{ {self.component_port} }}
component_interfaces = {{ {lua_str(self.ip)} }}
http_ports = {{ }}
https_ports = {{ }}

-- net.unbound (libunbound) ignores /etc/hosts unless told: the test's own
-- hosts file, and no real DNS (nothing answers on 127.0.0.1:53; names under
-- .test are NXDOMAIN at once anyway, libunbound serves that zone locally).
unbound = {{
    hoststxt = {lua_str(self.hosts_path)};
    resolvconf = {lua_str(self.resolv_path)};
}}

modules_enabled = {{ {mods} }}
modules_disabled = {{ }}
authentication = "internal_hashed"
storage = "internal"
allow_registration = false

certificates = {lua_str(d / "certs")}
{self._ssl_block("")}
c2s_require_encryption = {b(self.c2s_require_encryption)}
s2s_require_encryption = {b(self.s2s_require_encryption)}
s2s_secure_auth = {b(self.s2s_secure_auth)}

-- Fail fast rather than sit on a half-open s2s link in a test, and do not
-- wait the default 5 s for a peer's </stream> when shutting down.
s2s_timeout = 10
s2s_close_timeout = 2
"""
        if self.extra_global:
            out += "\n" + self.extra_global.rstrip() + "\n"
        out += f"""
VirtualHost {lua_str(self.domain)}
{self._ssl_block("    ")}"""
        if self.extra_host:
            out += "    " + self.extra_host.strip().replace("\n", "\n    ") + "\n"
        if self.muc_domain:
            out += f"""
Component {lua_str(self.muc_domain)} "muc"
    restrict_room_creation = false
    -- 0.12 locks a new room until its owner submits the config form
    -- (XEP-0045 10.1.3); others get <item-not-found/> meanwhile.
    muc_room_locking = false
"""
        for name, secret in self.components.items():
            out += f"""
Component {lua_str(name)}
    component_secret = {lua_str(secret)}
"""
        return out

    def write_config(self) -> Path:
        self.config_path.write_text(self.config_text())
        return self.config_path

    # -- users ------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = CTL_WAIT) -> str:
        """`prosodyctl --config <ours> ARGS...`; raises on non-zero exit."""
        self.write_config()
        proc = subprocess.run(
            [PROSODYCTL, "--config", str(self.config_path), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"prosodyctl {' '.join(args[:1])} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc.stdout

    def register(self, user: str, password: str, host: str | None = None) -> str:
        """Create user@host (default: the VirtualHost); works stopped or running.

        Returns the bare JID.
        """
        host = host or self.domain
        self.ctl("register", user, host, password)
        self.passwords[user] = password
        return f"{user}@{host}"

    # -- lifecycle --------------------------------------------------------

    def _ports(self) -> list[tuple[str, int]]:
        ports = [("c2s", self.c2s_port), ("s2s", self.s2s_port)]
        if self.components:
            ports.append(("component", self.component_port))
        return ports

    def start(self, timeout: float = START_WAIT) -> "ProsodyServer":
        """Write the config, run `prosody -F`, wait until every port listens."""
        if self.running:
            return self
        for what, port in self._ports():
            if _port_open(self.ip, port, timeout=0.2):
                raise RuntimeError(
                    f"{self.ip}:{port} ({what}) is already taken by someone else: "
                    "give this ProsodyServer another ip= (Prosody would only log "
                    "the bind failure and keep running)"
                )
        self.write_config()
        self.pid_path.unlink(missing_ok=True)
        out = open(self.stdout_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [PROSODY, "--config", str(self.config_path), "-F"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,  # a ^C in pytest is not for Prosody
            )
        finally:
            out.close()

        deadline = time.monotonic() + timeout
        waiting = list(self._ports())
        while waiting:
            if self.proc.poll() is not None:
                self._fail(f"prosody exited (rc={self.proc.returncode}) before it listened")
            if time.monotonic() > deadline:
                self._fail(f"prosody did not listen on {waiting} within {timeout}s")
            bind_errors = self._log_lines("Failed to open server port")
            if bind_errors:
                self._fail("prosody could not bind: " + "; ".join(bind_errors))
            waiting = [(w, p) for (w, p) in waiting if not _port_open(self.ip, p, timeout=0.2)]
            if waiting:
                time.sleep(0.05)
        # Without lua-unbound Prosody prints a missing-dependency notice and
        # uses its old resolver, which ignores `unbound = {...}`: add_host()
        # would silently not work.
        if self._log_lines("lua-unbound"):
            self._fail("prosody runs without lua-unbound (apt-get install lua-unbound; "
                       "scripts/install-test-deps does)")
        return self

    def stop(self, timeout: float = STOP_WAIT) -> int | None:
        """SIGTERM our prosody by PID (SIGKILL after `timeout`); returns its rc."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        return proc.returncode

    def restart(self, timeout: float = START_WAIT) -> "ProsodyServer":
        """stop() then start(): new config, new hosts file; users and rosters
        stay (they are in data_path), connections do not."""
        self.stop()
        self.proc = None
        return self.start(timeout)

    def __enter__(self) -> "ProsodyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- logs -------------------------------------------------------------

    def _log_lines(self, needle: str | None = None) -> list[str]:
        lines: list[str] = []
        for path in (self.log_path, self.stdout_path):
            try:
                lines += path.read_text(errors="replace").splitlines()
            except OSError:
                pass
        if needle is None:
            return lines
        return [l for l in lines if needle in l]

    def log_lines(self, needle: str | None = None) -> list[str]:
        """Lines of prosody.log and its stdout/stderr (containing `needle`)."""
        return self._log_lines(needle)

    def errors(self) -> list[str]:
        """Log lines at level error (the log file's third column)."""
        out = []
        for line in self._log_lines():
            # "Nov 23 15:43:09 source<TAB>level<TAB>message"
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1] == "error":
                out.append(line)
        return out

    def log_tail(self, n: int = 80) -> str:
        out = []
        for path in (self.log_path, self.stdout_path):
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            out.append(f"== {path.name} ({self.domain}) ==")
            out.extend(lines[-n:])
        return "\n".join(out) or "(no log)"

    def _fail(self, msg: str):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        raise RuntimeError(f"{msg}\n{self.log_tail(40)}")
