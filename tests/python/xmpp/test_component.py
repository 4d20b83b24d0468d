"""Component mode end to end: tern as the XEP-0114 external component
tern.xmpp.test of a real Prosody (xmpp.test), instead of federating over s2s.

The rig's Prosody already declares `Component "tern.xmpp.test"` with a secret on
its component port; tern's config has `[component]` with that server, domain
and secret, and s2s off. Phones are alice@tern.xmpp.test; bob@xmpp.test is a
slixmpp client of Prosody.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from ternclient import phone_factory
from xmpp.ternproc import TernProc, start_tern

TERN_DOMAIN = "tern.xmpp.test"
PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-2", "carol": "carol-secret-3"}
XMPP_USERS = {"bob": "bob-xmpp-2", "carol": "carol-xmpp-3"}
COMP_WAIT = 20.0


CompTern = TernProc


def _start_tern(tmp_path: Path, user_template: Path, server: tuple[str, int], secret: str) -> CompTern:
    def config(data_dir: Path) -> str:
        return (
            # `domain` is replaced by component.domain in component mode.
            'domain = "ignored.test"\n'
            f'data_dir = "{data_dir}"\n'
            "[mqtt]\n"
            'tcp = "127.0.0.1:0"\ntls = "off"\nws = "off"\n'
            "[metrics]\n"
            'listen = "off"\n'
            "[s2s]\n"
            'listen = "off"\n'
            "[component]\n"
            f'server = "{server[0]}:{server[1]}"\n'
            f'domain = "{TERN_DOMAIN}"\n'
            f'secret = "{secret}"\n'
        )

    proc, addrs, log_path, data_dir = start_tern(tmp_path, user_template, config)
    return CompTern(data_dir, proc, addrs["tcp"], log_path, TERN_DOMAIN, dict(PASSWORDS))


def _wait_log(tern: CompTern, needle: str, timeout: float = COMP_WAIT) -> None:
    deadline = time.monotonic() + timeout
    while needle not in tern.log():
        if time.monotonic() > deadline:
            pytest.fail(f"{needle!r} not in tern's log:\n{tern.log()[-4000:]}")
        time.sleep(0.05)


@pytest.fixture
def component(prosody_factory, user_template, tmp_path):
    """(tern, prosody): tern is the component tern.xmpp.test of xmpp.test."""
    prosody = prosody_factory("xmpp.test", users=XMPP_USERS)
    assert TERN_DOMAIN in prosody.components, prosody.components
    tern = _start_tern(tmp_path, user_template, prosody.component, prosody.components[TERN_DOMAIN])
    yield tern, prosody
    tern.stop()


@pytest.fixture
def comp_phones(pb, component):
    with phone_factory(pb, component[0]) as make:
        yield make


def test_component_phone_chats_with_a_prosody_user_both_ways(component, comp_phones, xmpp_client):
    tern, prosody = component
    _wait_log(tern, "component stream ready")
    bob = xmpp_client(prosody, "bob")
    alice = comp_phones("alice", "phone1")
    alice.connect()

    # phone → Prosody, over the component stream
    mid = alice.chat("bob@xmpp.test", "hello from the component")
    got = bob.wait_message(body="hello from the component", timeout=COMP_WAIT)
    assert got.from_ == "alice@tern.xmpp.test/phone1"
    assert got.id == mid and got.type == "chat"

    # Prosody → phone
    bob.send_chat("alice@tern.xmpp.test", "hello from prosody", receipt=False)
    down = alice.wait_chat("hello from prosody", timeout=COMP_WAIT)
    assert down.chat.peer == bob.jid
    assert not down.chat.outgoing

    # No s2s was involved: Prosody saw a component, not a federated server.
    # (s2s sessions log under ids like s2sout55d1...; the rig's readiness probe
    # opens and closes one s2sin connection, which never authenticates.)
    s2sout = [l for l in prosody.log_lines() if re.search(r"\bs2sout[0-9a-f]+\b", l)]
    assert s2sout == [], s2sout
    assert not prosody.log_lines("is now authenticated")
    assert prosody.log_lines("External component successfully authenticated")
    assert prosody.errors() == []


def test_component_wrong_secret_is_refused_and_retried(prosody_factory, user_template, tmp_path):
    prosody = prosody_factory("xmpp.test", users=XMPP_USERS)
    tern = _start_tern(tmp_path, user_template, prosody.component, "not-the-secret")
    try:
        _wait_log(tern, "component stream failed")
        # Reconnects with backoff, and is refused again.
        deadline = time.monotonic() + COMP_WAIT
        while tern.log().count("component stream failed") < 2:
            assert time.monotonic() < deadline, tern.log()[-4000:]
            time.sleep(0.1)
        assert "component stream ready" not in tern.log()
    finally:
        tern.stop()


def test_component_stream_down_bounces_then_reconnects(component, comp_phones, xmpp_client, pb):
    tern, prosody = component
    _wait_log(tern, "component stream ready")
    alice = comp_phones("alice", "phone1")
    alice.connect()

    # Prosody goes away: a send to another domain comes back as an error entry.
    prosody.stop()
    _wait_log(tern, "component connect failed")
    mid = alice.chat("bob@xmpp.test", "while the server is down")
    err = alice.wait_error(pb.Error.REMOTE_SERVER_NOT_FOUND, timeout=COMP_WAIT)
    assert err.id == mid

    # Prosody is back: tern reconnects by itself (with backoff) and chat flows again.
    prosody.start()
    deadline = time.monotonic() + COMP_WAIT * 2
    while tern.log().count("component stream ready") < 2:
        assert time.monotonic() < deadline, tern.log()[-4000:]
        time.sleep(0.1)
    bob = xmpp_client(prosody, "bob")
    alice.chat("bob@xmpp.test", "back again")
    bob.wait_message(body="back again", timeout=COMP_WAIT)
    bob.send_chat("alice@tern.xmpp.test", "welcome back", receipt=False)
    alice.wait_chat("welcome back", timeout=COMP_WAIT)
