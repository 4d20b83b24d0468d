"""Federation end to end: tern (tern.test) and a real Prosody (xmpp.test).

tern listens for s2s on 127.0.0.1:5269, where Prosody's hosts file sends
tern.test; tern reaches xmpp.test through a fixed route in its config file.
STARTTLS is negotiated both ways (self-signed certs, dialback authenticates).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ternclient import new_id, phone_factory
from xmpp.ternproc import TernProc, start_tern

TERN_DOMAIN = "tern.test"
S2S_ADDR = ("127.0.0.1", 5269)
PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-2", "carol": "carol-secret-3"}
XMPP_USERS = {"bob": "bob-xmpp-2", "carol": "carol-xmpp-3"}
# Federation sets up two streams with dialback (each a callback to the other
# server) before the first stanza moves: allow more than a local round trip.
FED_WAIT = 20.0


FedTern = TernProc


def _start_tern(tmp_path: Path, user_template: Path, routes: dict[str, str]) -> FedTern:
    route_lines = "\n".join(f'"{d}" = "{a}"' for d, a in routes.items())

    def config(data_dir: Path) -> str:
        return (
            f'domain = "{TERN_DOMAIN}"\n'
            f'data_dir = "{data_dir}"\n'
            "[mqtt]\n"
            'tcp = "127.0.0.1:0"\ntls = "off"\nws = "off"\n'
            "[metrics]\n"
            'listen = "off"\n'
            "[s2s]\n"
            f'listen = "{S2S_ADDR[0]}:{S2S_ADDR[1]}"\n'
            'tls = "preferred"\n'
            "[s2s.routes]\n"
            f"{route_lines}\n"
        )

    proc, addrs, log_path, data_dir = start_tern(tmp_path, user_template, config)
    assert addrs.get("s2s") == S2S_ADDR, addrs
    return FedTern(data_dir, proc, addrs["tcp"], log_path, TERN_DOMAIN, dict(PASSWORDS))


@pytest.fixture
def federation(request, prosody_factory, user_template, tmp_path):
    """(tern, prosody): tern.test ⇄ xmpp.test, both running."""
    prosody = prosody_factory("xmpp.test", users=XMPP_USERS, hosts={TERN_DOMAIN: S2S_ADDR[0]})
    tern = _start_tern(tmp_path, user_template, {"xmpp.test": f"{prosody.s2s[0]}:{prosody.s2s[1]}"})
    yield tern, prosody
    tern.stop()


@pytest.fixture
def fed_phones(pb, federation):
    with phone_factory(pb, federation[0]) as make:
        yield make


def test_phone_chats_with_a_prosody_user_both_ways(federation, fed_phones, xmpp_client, pb):
    tern, prosody = federation
    bob = xmpp_client(prosody, "bob")
    alice = fed_phones("alice", "phone1")
    alice.connect()

    # (a) phone → Prosody
    mid = alice.chat("bob@xmpp.test", "hello from tern")
    got = bob.wait_message(body="hello from tern", timeout=FED_WAIT)
    assert got.from_ == "alice@tern.test/phone1"
    assert got.id == mid and got.type == "chat"

    # (b) Prosody → phone
    bob.send_chat("alice@tern.test", "hello from prosody", receipt=False)
    down = alice.wait_chat("hello from prosody", timeout=FED_WAIT)
    assert down.chat.peer == bob.jid
    assert not down.chat.outgoing
    assert down.chat.ts > 0 and down.seq > 0

    # Both streams were encrypted and dialback-authenticated, as Prosody saw them.
    assert prosody.log_lines("s2sout") and prosody.log_lines("s2sin")
    encrypted = prosody.log_lines("Stream encrypted")
    assert any("s2sout" in l for l in encrypted) and any("s2sin" in l for l in encrypted), encrypted
    assert prosody.log_lines("connection xmpp.test->tern.test is now authenticated for tern.test")
    assert prosody.log_lines("connection tern.test->xmpp.test is now authenticated for tern.test")
    assert prosody.errors() == []


def test_receipts_cross_both_ways(federation, fed_phones, xmpp_client, pb):
    tern, prosody = federation
    bob = xmpp_client(prosody, "bob")
    alice = fed_phones("alice", "phone1")
    alice.connect()

    # bob asks for a receipt; the phone answers with a Receipt envelope.
    mid = bob.send_chat("alice@tern.test", "please ack")
    alice.wait_chat("please ack", timeout=FED_WAIT)
    alice.send(pb.Up(id=new_id("r"), receipt=pb.Receipt(peer=bob.jid, id=mid, kind=pb.Receipt.DELIVERED)))
    bob.wait_receipt(mid, from_="alice@tern.test/phone1", timeout=FED_WAIT)

    # bob's client auto-acks (XEP-0184); tern's phone sees a Receipt.
    mid2 = alice.chat("bob@xmpp.test", "ack me")
    bob.wait_message(body="ack me", timeout=FED_WAIT)
    bob.send_raw(
        f"<message to='alice@tern.test/phone1' from='{bob.jid}' id='{new_id('rr')}'>"
        f"<received xmlns='urn:xmpp:receipts' id='{mid2}'/></message>"
    )
    r = alice.wait_down(
        lambda d: d.WhichOneof("body") == "receipt" and d.receipt.id == mid2,
        f"receipt for {mid2}",
        FED_WAIT,
    )
    assert r.receipt.peer == bob.jid


def test_message_to_an_offline_phone_is_synced_later(federation, fed_phones, xmpp_client, pb):
    tern, prosody = federation
    bob = xmpp_client(prosody, "bob")
    bob.send_chat("alice@tern.test", "while you were away", receipt=False)
    # Nobody of alice's is online: it must wait in her inbox.
    time.sleep(3)
    alice = fed_phones("alice", "phone1")
    alice.connect()
    down = alice.wait_chat("while you were away", timeout=FED_WAIT)
    assert down.chat.peer == bob.jid


def test_unreachable_domain_bounces_to_the_sender(federation, fed_phones, pb):
    tern, _ = federation
    alice = fed_phones("alice", "phone1")
    alice.connect()
    mid = alice.chat("someone@nowhere.invalid", "into the void")
    err = alice.wait_error(pb.Error.REMOTE_SERVER_NOT_FOUND, timeout=FED_WAIT)
    assert err.id == mid


def test_prosody_users_can_disco_and_ping_tern(federation, xmpp_client):
    tern, prosody = federation
    bob = xmpp_client(prosody, "bob")
    features = bob.disco_info("tern.test")
    assert "urn:xmpp:receipts" in features and "urn:xmpp:ping" in features
    assert "urn:xmpp:receipts" in bob.disco_info("alice@tern.test")
    assert bob.ping("tern.test") >= 0


def test_chat_states_cross_to_an_online_phone(federation, fed_phones, xmpp_client, pb):
    tern, prosody = federation
    bob = xmpp_client(prosody, "bob")
    alice = fed_phones("alice", "phone1")
    alice.connect()
    # Set the streams up first, so the ephemeral state is not racing dialback.
    bob.send_chat("alice@tern.test", "warming up", receipt=False)
    alice.wait_chat("warming up", timeout=FED_WAIT)
    bob.send_raw(
        f"<message to='alice@tern.test' from='{bob.jid}' type='chat'>"
        "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
    )
    cs = alice.wait_down(lambda d: d.WhichOneof("body") == "chat_state", "chat state", FED_WAIT)
    assert cs.chat_state.peer == bob.jid and cs.chat_state.state == pb.ChatState.COMPOSING
    assert not cs.seq

    # and the other way: the phone types, bob's client sees <composing/>.
    alice.send(pb.Up(id=new_id("cs"), chat_state=pb.ChatState(peer="bob@xmpp.test", state=pb.ChatState.COMPOSING)))
    got = bob.wait_for(
        lambda s: s.name == "message" and "composing" in s.xml and s.from_ == "alice@tern.test/phone1",
        FED_WAIT,
        "composing from alice",
    )
    assert not got.body


def test_message_to_an_unknown_tern_user_gets_service_unavailable(federation, xmpp_client):
    tern, prosody = federation
    bob = xmpp_client(prosody, "bob")
    mid = bob.send_chat("nobody@tern.test", "anyone there?", receipt=False)
    err = bob.wait_error(from_="nobody@tern.test", timeout=FED_WAIT)
    assert err.id == mid and "service-unavailable" in err.xml


def test_message_to_an_unknown_prosody_user_comes_back_as_an_error(federation, fed_phones, pb):
    tern, prosody = federation
    alice = fed_phones("alice", "phone1")
    alice.connect()
    mid = alice.chat("nobody@xmpp.test", "hello?")
    err = alice.wait_error(pb.Error.SERVICE_UNAVAILABLE, timeout=FED_WAIT)
    assert err.id == mid and err.seq > 0
    assert "service-unavailable" in err.error.text


def _roster_item(phone, pb, jid, pred, what):
    """The latest roster push for `jid` that satisfies pred."""
    return phone.wait_down(
        lambda d: d.WhichOneof("body") == "roster" and any(i.jid == jid and pred(i) for i in d.roster.items),
        what,
        FED_WAIT,
    )


def test_mutual_subscription_and_presence_across_domains(federation, fed_phones, xmpp_client, pb):
    tern, prosody = federation
    bob = xmpp_client(prosody, "bob")
    alice = fed_phones("alice", "phone1")
    alice.connect()
    S = pb.Subscription

    # bob asks; the phone sees the request and approves, and asks back.
    bob.subscribe("alice@tern.test")
    req = alice.wait_down(
        lambda d: d.WhichOneof("body") == "subscription" and d.subscription.kind == S.SUBSCRIBE,
        "subscribe from bob",
        FED_WAIT,
    )
    assert req.subscription.peer == "bob@xmpp.test" and req.seq > 0
    alice.send(pb.Up(id=new_id("s"), subscription=S(peer="bob@xmpp.test", kind=S.SUBSCRIBED)))
    alice.send(pb.Up(id=new_id("s"), subscription=S(peer="bob@xmpp.test", kind=S.SUBSCRIBE)))
    bob.wait_subscribe(from_="alice@tern.test", timeout=FED_WAIT)
    bob.approve("alice@tern.test")

    # Both rosters say both.
    bob.wait_subscription("alice@tern.test", "both", timeout=FED_WAIT)
    _roster_item(alice, pb, "bob@xmpp.test", lambda i: i.sub == pb.RosterItem.BOTH, "bob: both")

    # Presence: the phone hears bob's, bob hears the phone's.
    bob.send_presence(pstatus="at the desk")
    p = alice.wait_down(
        lambda d: d.WhichOneof("body") == "presence" and d.presence.status == "at the desk",
        "bob's presence",
        FED_WAIT,
    )
    assert p.presence.peer == bob.jid
    alice.send(pb.Up(id=new_id("p"), presence=pb.Presence(show=pb.Presence.AWAY, status="on the train")))
    got = bob.wait_for(
        lambda s: s.name == "presence" and s.from_ == "alice@tern.test/phone1" and "on the train" in s.xml,
        FED_WAIT,
        "alice's presence",
    )
    assert "<show>away</show>" in got.xml

    # A second device coming online learns bob's presence through a probe.
    alice2 = fed_phones("alice", "phone2")
    alice2.connect()
    alice2.wait_down(
        lambda d: d.WhichOneof("body") == "presence" and d.presence.peer == bob.jid,
        "bob's presence after a probe",
        FED_WAIT,
    )
    # and the phone going offline is seen by bob.
    alice.close()
    bob.wait_presence(from_="alice@tern.test/phone1", ptype="unavailable", timeout=FED_WAIT)
