"""Smoke tests of the Prosody rig itself (no tern involved)."""

from __future__ import annotations

import socket
import time

import pytest

from xmpp.client import XmppComponent, mutual_subscribe


def test_prosody_starts_and_stops_cleanly(prosody_factory):
    srv = prosody_factory("xmpp.test", users={"alice": "pw-a"}, hosts={"tern.test": "127.0.0.1"})
    assert srv.running
    assert srv.ip.startswith("127.0.0.")
    for addr in (srv.c2s, srv.s2s, srv.component):
        socket.create_connection(addr, timeout=2).close()
    # the pidfile Prosody wrote names the process we started
    deadline = time.monotonic() + 5
    while not srv.pid_path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert int(srv.pid_path.read_text().strip()) == srv.pid
    assert "127.0.0.1 tern.test" in srv.hosts_path.read_text()
    # registration works against a running server too
    srv.register("dave", "pw-d")
    # the hosts file is read at start only: a late add_host must say so
    with pytest.raises(RuntimeError, match="restart"):
        srv.add_host("late.test", "127.0.0.1")

    rc = srv.stop()
    assert rc == 0, srv.log_tail()
    assert not srv.running
    assert srv.log_lines("Shutdown complete"), srv.log_tail()
    assert srv.errors() == []
    for addr in (srv.c2s, srv.s2s):
        try:
            socket.create_connection(addr, timeout=1).close()
        except OSError:
            pass
        else:
            raise AssertionError(f"{addr} still listening after stop")


def test_two_clients_subscribe_and_chat_with_receipts(prosody, xmpp_client):
    alice = xmpp_client(prosody, "alice")
    bob = xmpp_client(prosody, "bob")

    alice.roster_add("carol@xmpp.test", name="Carol")
    assert alice.roster()["carol@xmpp.test"] == {
        "subscription": "none", "ask": "", "name": "Carol", "groups": []
    }

    mutual_subscribe(alice, bob)
    # with subscription=both each sees the other's presence
    alice.wait_presence(bob.jid)
    bob.wait_presence(alice.jid)

    mid = alice.send_chat(bob.bare, "hello bob")
    got = bob.wait_message(alice.bare, "hello bob")
    assert got.type == "chat" and got.id == mid and got.receipt_requested
    alice.wait_receipt(mid, from_=bob.jid)

    mid = bob.send_chat(alice.jid, "hello alice")
    got = alice.wait_message(bob.bare, "hello alice")
    assert got.from_ == bob.jid and got.receipt_requested
    bob.wait_receipt(mid, from_=alice.jid)

    assert prosody.errors() == []


def test_muc_join_and_groupchat(prosody, xmpp_client):
    room = f"lobby@{prosody.muc_domain}"
    alice = xmpp_client(prosody, "alice")
    bob = xmpp_client(prosody, "bob")
    assert "http://jabber.org/protocol/muc" in alice.disco_info(prosody.muc_domain)

    alice.join_muc(room, "Alice")
    bob.join_muc(room, "Bob")
    alice.wait_presence(f"{room}/Bob")

    alice.send_groupchat(room, "hi room")
    for c in (alice, bob):  # the sender gets its own message reflected
        got = c.wait_groupchat(room, "hi room", nick="Alice")
        assert got.from_ == f"{room}/Alice"

    bob.send_groupchat(room, "hi alice")
    alice.wait_groupchat(room, "hi alice", nick="Bob")
    bob.leave_muc(room, "Bob")
    alice.wait_presence(f"{room}/Bob", "unavailable")
    assert prosody.errors() == []


def test_two_prosodys_federate(prosody_factory, xmpp_client):
    """The rig's s2s plumbing: two servers find each other through their own
    hosts files (add_host), STARTTLS + dialback with self-signed certs."""
    one = prosody_factory("xmpp.test", users={"alice": "pw-a"}, start=False)
    two = prosody_factory("other.test", users={"bob": "pw-b"}, start=False)
    one.add_host("other.test", two.ip)
    two.add_host("xmpp.test", one.ip)
    one.start()
    two.start()

    alice = xmpp_client(one, "alice")
    bob = xmpp_client(two, "bob")
    assert alice.ping("other.test") < 5
    mutual_subscribe(alice, bob)
    mid = alice.send_chat(bob.bare, "over s2s")
    bob.wait_message(alice.bare, "over s2s")
    alice.wait_receipt(mid, from_=bob.jid)

    assert one.log_lines("Outgoing s2s connection xmpp.test->other.test complete")
    assert two.log_lines("Incoming s2s connection xmpp.test->other.test complete")
    assert one.errors() == [] and two.errors() == []


def test_external_component(prosody, xmpp_client, xmpp_component):
    """XEP-0114: the configured component JID and secret are accepted on the
    component port, a wrong secret is not, and stanzas flow both ways."""
    bad = XmppComponent(f"tern.{prosody.domain}", "wrong-secret", prosody.component)
    with pytest.raises(AssertionError):
        bad.connect(timeout=5)
    bad.close()

    comp = xmpp_component(prosody)  # tern.xmpp.test with its component_secret
    assert comp.jid == f"tern.{prosody.domain}"
    alice = xmpp_client(prosody, "alice")

    mid = alice.send_chat(f"phone@{comp.jid}", "to the component")
    got = comp.wait_message(alice.jid, "to the component")
    assert got.id == mid and got.to == f"phone@{comp.jid}"
    assert "urn:xmpp:receipts" in got.xml

    comp.send_chat(alice.jid, "from the component", mfrom=f"phone@{comp.jid}", receipt=False)
    alice.wait_message(f"phone@{comp.jid}", "from the component")
