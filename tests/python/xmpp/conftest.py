"""Fixtures for tests that need a real Prosody and slixmpp clients.

None of these depend on tern; the shared tests/python/conftest.py only adds
its autouse per-test deadline here.
"""

from __future__ import annotations

import pytest

from xmpp.client import XmppClient, XmppComponent
from xmpp.prosody import ProsodyServer, _port_open, have_prosody

# Loopback addresses handed out to servers, one each, first free first
# (another run on the same machine may hold 127.0.0.2).
IP_POOL = [f"127.0.0.{n}" for n in range(2, 64)]


def _free_ip(ports: list[int], taken: set[str]) -> str:
    for ip in IP_POOL:
        if ip in taken:
            continue
        if not any(_port_open(ip, p, timeout=0.2) for p in ports):
            return ip
    raise RuntimeError("no free 127.0.0.x for a Prosody")


@pytest.fixture
def prosody_factory(request, tmp_path):
    """make(domain="xmpp.test", ip=None, users={name: password}, start=True,
    hosts={name: ip}, **ProsodyServer kwargs) -> ProsodyServer.

    ip=None picks the first 127.0.0.x (from .2) whose ports are free. Every
    server is stopped (by PID) at teardown; their logs go into the report of
    a failed test.
    """
    if not have_prosody():
        pytest.fail("prosody/prosodyctl not found: run scripts/install-test-deps")
    made: list[ProsodyServer] = []
    request.node._prosody_servers = made

    def make(
        domain: str = "xmpp.test",
        ip: str | None = None,
        *,
        users: dict[str, str] | None = None,
        hosts: dict[str, str] | None = None,
        start: bool = True,
        **kw,
    ) -> ProsodyServer:
        if ip is None:
            ports = [kw.get("c2s_port", 5222), kw.get("s2s_port", 5269), kw.get("component_port", 5347)]
            ip = _free_ip(ports, {s.ip for s in made})
        srv = ProsodyServer(tmp_path / f"prosody-{domain}", domain, ip, **kw)
        made.append(srv)
        for name, addr in (hosts or {}).items():
            srv.add_host(name, addr)
        for user, password in (users or {}).items():
            srv.register(user, password)
        if start:
            srv.start()
        return srv

    yield make
    for srv in made:
        srv.stop()


@pytest.fixture
def prosody(prosody_factory) -> ProsodyServer:
    """A running Prosody for xmpp.test with alice/bob/carol."""
    return prosody_factory(
        "xmpp.test",
        users={"alice": "alice-xmpp-1", "bob": "bob-xmpp-2", "carol": "carol-xmpp-3"},
    )


@pytest.fixture
def xmpp_client():
    """make(jid, password, address, **XmppClient kwargs) -> connected XmppClient.

    make(server, user) is the short form for a user of a ProsodyServer.
    Every client is closed at teardown.
    """
    made: list[XmppClient] = []

    def make(who, user_or_jid: str, address=None, connect: bool = True, **kw) -> XmppClient:
        if isinstance(who, ProsodyServer):
            srv, user = who, user_or_jid
            c = XmppClient(srv.jid(user), srv.passwords[user], srv.c2s, **kw)
        else:  # make(jid, password, address)
            c = XmppClient(who, user_or_jid, address, **kw)
        made.append(c)
        return c.connect() if connect else c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def xmpp_component():
    """make(server, jid=None, secret=None, connect=True) -> XmppComponent on
    server's component port (default: its first configured component).
    Every component is closed at teardown."""
    made: list[XmppComponent] = []

    def make(srv: ProsodyServer, jid: str | None = None, secret: str | None = None, connect: bool = True):
        jid = jid or next(iter(srv.components))
        secret = srv.components[jid] if secret is None else secret
        c = XmppComponent(jid, secret, srv.component)
        made.append(c)
        return c.connect() if connect else c

    yield make
    for c in made:
        c.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of every Prosody log of the test."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for srv in getattr(item, "_prosody_servers", []):
            rep.sections.append((f"prosody {srv.domain} log (tail)", srv.log_tail()))
