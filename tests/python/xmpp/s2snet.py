"""Rig for the s2s transport tests (DNS, retry, bounce): a real DNS server
(Debian's dnsmasq, in the foreground on 127.0.0.1:<free port>) and a tern
federating as tern.test with [s2s] settings of the test's choosing.

tern's s2s listener gets a loopback address of its own (port 5269 there), so
these tests never compete for 127.0.0.1:5269; Prosody finds it through its
hosts file (prosody_factory(hosts={"tern.test": ip})).
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ternclient import phone_factory
from xmpp.prosody import _port_open
from xmpp.ternproc import TernProc, start_tern

TERN_DOMAIN = "tern.test"
PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-2", "carol": "carol-secret-3"}
XMPP_USERS = {"bob": "bob-xmpp-2"}
# Two dialback streams and a few reconnect attempts: more than a round trip.
FED_WAIT = 20.0


def stop_child(proc: subprocess.Popen) -> None:
    """SIGTERM our own child (by PID), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def free_loopback_ip(ports: tuple[int, ...] = (5269,)) -> str:
    """A random 127.0.x.y (x >= 100: away from the rig's pool, which other runs on this
    machine share) where every one of `ports` is free."""
    for _ in range(200):
        ip = f"127.0.{random.randint(100, 250)}.{random.randint(2, 250)}"
        if all(_bindable(ip, port) for port in ports):
            return ip
    raise RuntimeError(f"no loopback address with ports {ports} free")


# c2s, s2s and component ports of a ProsodyServer.
PROSODY_PORTS = (5222, 5269, 5347)


def prosody_ip() -> str:
    """An address for a Prosody that no other run picks meanwhile (prosody_factory(ip=...))."""
    return free_loopback_ip(PROSODY_PORTS)


def _bindable(ip: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def free_udp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 a moment ago."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if _bindable("127.0.0.1", port):
            return port


class Dnsmasq:
    """dnsmasq as an authoritative-only server for `.test` on 127.0.0.1:port:
    names it was not given are NXDOMAIN, and nothing is forwarded anywhere."""

    def __init__(self, workdir: Path, srv: list[str], hosts: list[str]):
        self.log_path = workdir / "dnsmasq.log"
        # dnsmasq binds UDP and TCP on its port; another process may take either between
        # our check and its bind, so a failed start is retried on another port.
        for _ in range(5):
            self.port = free_udp_port()
            if self._start(srv, hosts):
                self.addr = f"127.0.0.1:{self.port}"
                return
        raise RuntimeError(f"dnsmasq did not start: {self.log_text()}")

    def _start(self, srv: list[str], hosts: list[str]) -> bool:
        args = [
            shutil.which("dnsmasq") or "/usr/sbin/dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            f"--port={self.port}",
            "--local=/test/",
            "--log-queries",
            "--log-facility=-",
        ]
        args += [f"--srv-host={s}" for s in srv]
        args += [f"--host-record={h}" for h in hosts]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 10
        while b"started, version" not in self.log_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                return False
            time.sleep(0.05)
        return True

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def queries(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if "query[" in line]

    def stop(self) -> None:
        stop_child(self.proc)
        self.log.close()


@pytest.fixture
def dnsmasq(tmp_path):
    """make(srv=[...], hosts=[...]) -> Dnsmasq, in dnsmasq's --srv-host and
    --host-record syntax; stopped by PID at teardown."""
    if not shutil.which("dnsmasq") and not Path("/usr/sbin/dnsmasq").exists():
        pytest.fail("dnsmasq not found: run scripts/install-test-deps")
    made: list[Dnsmasq] = []

    def make(srv: list[str] = (), hosts: list[str] = ()) -> Dnsmasq:
        d = Dnsmasq(tmp_path, list(srv), list(hosts))
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


@pytest.fixture
def s2s_tern(request, user_template, tmp_path):
    """make(s2s_ip, **s2s keys) -> TernProc for tern.test, its s2s listener on
    s2s_ip:5269; keys go into [s2s] (routes= a dict goes into [s2s.routes]).
    Stopped by PID at teardown, its log printed for a failed test."""
    made: list[TernProc] = []

    def make(s2s_ip: str, routes: dict[str, str] | None = None, **keys) -> TernProc:
        lines = [f"{k} = {toml_value(v)}" for k, v in keys.items()]
        route_lines = [f'"{d}" = "{a}"' for d, a in (routes or {}).items()]

        def config(data_dir: Path) -> str:
            return "\n".join(
                [
                    f'domain = "{TERN_DOMAIN}"',
                    f'data_dir = "{data_dir}"',
                    "[mqtt]",
                    'tcp = "127.0.0.1:0"\ntls = "off"\nws = "off"',
                    "[metrics]",
                    'listen = "off"',
                    "[s2s]",
                    f'listen = "{s2s_ip}:5269"',
                    'tls = "preferred"',
                    *lines,
                    "[s2s.routes]",
                    *route_lines,
                    "",
                ]
            )

        proc, addrs, log_path, data_dir = start_tern(tmp_path, user_template, config)
        tern = TernProc(data_dir, proc, addrs["tcp"], log_path, TERN_DOMAIN, dict(PASSWORDS))
        made.append(tern)
        return tern

    yield make
    for tern in made:
        print(f"--- tern log (tail) ---\n{tern.log_tail()}")
        stop_child(tern.proc)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return f'"{v}"'


@pytest.fixture
def phones(pb):
    """make(tern, user, device) -> connected Phone; closed at teardown."""
    with phone_factory(pb, None, connect=True) as make:
        yield lambda tern, user="alice", device="phone1": make(user, device, server=tern)


def closed_port(ip: str = "127.0.0.1") -> int:
    """A port on `ip` where nothing listens (connects are refused)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((ip, 0))
            port = s.getsockname()[1]
        if not _port_open(ip, port, timeout=0.2):
            return port
    raise RuntimeError("no closed port")
