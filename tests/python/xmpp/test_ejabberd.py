"""Federation end to end: tern (tern.test) and a real ejabberd (ejabberd.test).

The chat test of test_federation.py (roster adds, subscriptions both ways,
presence, chats both ways with receipts, the phone offline for a while and
synced after) against ejabberd 23.01 (Debian `ejabberd`), run by ejabberd.py.

tern listens for s2s on 127.0.0.1:5269 and reaches ejabberd.test through a
fixed route. ejabberd finds tern.test through an SRV record served by the
rig's DNS responder: a hosts file handed to the Erlang resolver (ERL_INETRC)
does not work, because ejabberd resolves the final name with libc
getaddrinfo and fails with `DNS lookup failed: enoname` (see ejabberd.py).
STARTTLS is optional on ejabberd's side and offered by tern; ejabberd first
tries SASL EXTERNAL (tern offers no SASL), then dialback (mod_s2s_dialback)
authenticates both streams.
"""

from __future__ import annotations

import pytest

from ternclient import new_id
from xmpp.conftest import _free_ip
from xmpp.ejabberd import DEFAULT_DIST_PORT, EjabberdServer, have_ejabberd, terminate
from xmpp.test_federation import (  # noqa: F401  (fed_phones is a fixture used here)
    FED_WAIT,
    S2S_ADDR,
    TERN_DOMAIN,
    _roster_item,
    _start_tern,
    fed_phones,
)

EJ_DOMAIN = "ejabberd.test"
EJ_USERS = {"bob": "bob-ejabberd-2"}


@pytest.fixture
def ejabberd(request, tmp_path):
    """A running ejabberd for ejabberd.test with bob, resolving tern.test to
    tern's s2s address; stopped by PID at teardown. Its s2s_use_starttls is
    "optional" unless parametrized (indirect) with another value."""
    if not have_ejabberd():
        pytest.fail("ejabberd (erl + ejabberd's code) not found: run scripts/install-test-deps")
    # Prosody rigs take the first free 127.0.0.x from .2 up; starting higher
    # keeps a Prosody test running beside this one from racing it for an IP.
    ip = _free_ip([5222, 5269, DEFAULT_DIST_PORT], {f"127.0.0.{n}" for n in range(2, 32)})
    starttls = getattr(request, "param", "optional")
    srv = EjabberdServer(tmp_path / "ejabberd", EJ_DOMAIN, ip, s2s_use_starttls=starttls)
    srv.add_host(TERN_DOMAIN, S2S_ADDR[0])
    for user, password in EJ_USERS.items():
        srv.register(user, password)
    try:
        yield srv.start()
    finally:
        # Shown by pytest with a failed test's captured output.
        print(f"--- ejabberd log (tail) ---\n{srv.log_tail()}")
        srv.stop()


@pytest.fixture
def federation(ejabberd, user_template, tmp_path):
    """(tern, ejabberd): tern.test ⇄ ejabberd.test, both running. Named like
    test_federation's fixture so that its fed_phones works unchanged."""
    tern = _start_tern(tmp_path, user_template, {EJ_DOMAIN: f"{ejabberd.s2s[0]}:{ejabberd.s2s[1]}"})
    yield tern, ejabberd
    print(f"--- tern log (tail) ---\n{tern.log_tail()}")
    terminate(tern.proc, timeout=5)


def _srv_query(name: str) -> bytes:
    """A DNS query (RFC 1035) for the SRV records of `name`."""
    qname = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    return bytes.fromhex("abcd01000001000000000000") + qname + bytes([0, 33, 0, 1])


def _bob_and_alice(federation, fed_phones, xmpp_client):
    """(ejabberd, bob on it over c2s, alice's phone1 on tern), both connected."""
    _, ej = federation
    bob = xmpp_client(ej.jid("bob"), ej.passwords["bob"], ej.c2s)
    alice = fed_phones("alice", "phone1")
    alice.connect()
    return ej, bob, alice


def _assert_tls_and_dialback_both_ways(ej: EjabberdServer) -> None:
    """Both streams ran over TLS and were authenticated by dialback, as
    ejabberd saw them (tern has no SASL EXTERNAL: ejabberd tries it first)."""
    for direction in (f"outbound s2s dialback authentication {EJ_DOMAIN} -> {TERN_DOMAIN}",
                      f"inbound s2s dialback authentication {TERN_DOMAIN} -> {EJ_DOMAIN}"):
        accepted = ej.wait_log(f"Accepted {direction}")
        assert all("(tls|" in l for l in accepted), accepted


def test_ejabberd_rig_starts_registers_and_stops_cleanly(ejabberd, xmpp_client):
    assert ejabberd.running and ejabberd.ip.startswith("127.0.0.")
    assert "bob" in ejabberd.ctl("registered_users", EJ_DOMAIN).split()
    ejabberd.register("dave", "pw-d")  # on a running server too
    dave = xmpp_client(ejabberd.jid("dave"), "pw-d", ejabberd.c2s)
    assert dave.ping(EJ_DOMAIN) >= 0
    dave.close()
    # the rig's DNS: tern.test's s2s SRV record points at an IP literal
    assert ejabberd.dns.answer(_srv_query(f"_xmpp-server._tcp.{TERN_DOMAIN}")).endswith(
        bytes([0, 0, 0, 0, 0x14, 0x95, 3]) + b"127\x010\x010\x011\x00"
    )

    rc = ejabberd.stop()
    assert rc == 0, ejabberd.log_tail()
    assert ejabberd.log_lines("is stopped in the node"), ejabberd.log_tail()
    assert ejabberd.errors() == []


def test_phone_and_ejabberd_user_subscribe_chat_and_sync(federation, fed_phones, xmpp_client, pb):
    ej, bob, alice = _bob_and_alice(federation, fed_phones, xmpp_client)
    S = pb.Subscription

    # Roster adds on both sides, then the subscription handshake both ways.
    alice.send(pb.Up(id=new_id("ra"), roster_set=pb.RosterItem(jid=bob.bare, name="Bob")))
    _roster_item(alice, pb, bob.bare, lambda i: i.name == "Bob", "bob in alice's roster")
    bob.roster_add("alice@tern.test", name="Alice")
    assert bob.roster()["alice@tern.test"]["subscription"] == "none"

    bob.subscribe("alice@tern.test")
    req = alice.wait_down(
        lambda d: d.WhichOneof("body") == "subscription" and d.subscription.kind == S.SUBSCRIBE,
        "subscribe from bob",
        FED_WAIT,
    )
    assert req.subscription.peer == bob.bare and req.seq > 0
    alice.send(pb.Up(id=new_id("s"), subscription=S(peer=bob.bare, kind=S.SUBSCRIBED)))
    alice.send(pb.Up(id=new_id("s"), subscription=S(peer=bob.bare, kind=S.SUBSCRIBE)))
    bob.wait_subscribe(from_="alice@tern.test", timeout=FED_WAIT)
    bob.approve("alice@tern.test")
    bob.wait_subscription("alice@tern.test", "both", timeout=FED_WAIT)
    _roster_item(alice, pb, bob.bare, lambda i: i.sub == pb.RosterItem.BOTH, "bob: both")

    # Presence both ways now that both are subscribed.
    bob.send_presence(pstatus="at the desk")
    p = alice.wait_down(
        lambda d: d.WhichOneof("body") == "presence" and d.presence.status == "at the desk",
        "bob's presence",
        FED_WAIT,
    )
    assert p.presence.peer == bob.jid
    alice.send(pb.Up(id=new_id("p"), presence=pb.Presence(show=pb.Presence.AWAY, status="on the train")))
    bob.wait_for(
        lambda s: s.name == "presence" and s.from_ == "alice@tern.test/phone1" and "on the train" in s.xml,
        FED_WAIT,
        "alice's presence",
    )

    # Chat both ways, each acknowledged by a delivery receipt.
    mid = alice.chat(bob.bare, "hello from tern")
    got = bob.wait_message(body="hello from tern", timeout=FED_WAIT)
    assert got.from_ == "alice@tern.test/phone1" and got.id == mid and got.type == "chat"
    bob.send_raw(
        f"<message to='alice@tern.test/phone1' from='{bob.jid}' id='{new_id('rr')}'>"
        f"<received xmlns='urn:xmpp:receipts' id='{mid}'/></message>"
    )
    r = alice.wait_down(
        lambda d: d.WhichOneof("body") == "receipt" and d.receipt.id == mid, f"receipt for {mid}", FED_WAIT
    )
    assert r.receipt.peer == bob.jid

    mid = bob.send_chat("alice@tern.test", "hello from ejabberd")
    down = alice.wait_chat("hello from ejabberd", timeout=FED_WAIT)
    assert down.chat.peer == bob.jid and not down.chat.outgoing and down.seq > 0
    alice.send(pb.Up(id=new_id("r"), receipt=pb.Receipt(peer=bob.jid, id=mid, kind=pb.Receipt.DELIVERED)))
    bob.wait_receipt(mid, from_="alice@tern.test/phone1", timeout=FED_WAIT)

    # The phone goes away: bob sees it leave, and what he sends meanwhile
    # waits in its inbox. The ping after the chat comes back over the same
    # streams only once tern has taken the chat, so it is stored by then.
    alice.close()
    bob.wait_presence(from_="alice@tern.test/phone1", ptype="unavailable", timeout=FED_WAIT)
    away = bob.send_chat("alice@tern.test", "while you were away")
    assert bob.ping(TERN_DOMAIN) >= 0

    alice = fed_phones("alice", "phone1")
    alice.connect()
    down = alice.wait_chat("while you were away", timeout=FED_WAIT)
    assert down.chat.peer == bob.jid and down.seq > 0
    alice.send(pb.Up(id=new_id("r"), receipt=pb.Receipt(peer=bob.jid, id=away, kind=pb.Receipt.DELIVERED)))
    bob.wait_receipt(away, from_="alice@tern.test/phone1", timeout=FED_WAIT)

    _assert_tls_and_dialback_both_ways(ej)
    assert ej.errors() == []


def test_errors_and_queries_cross_with_ejabberd(federation, fed_phones, xmpp_client, pb):
    ej, bob, alice = _bob_and_alice(federation, fed_phones, xmpp_client)

    # ejabberd's answer for a user it does not have reaches the phone as an error.
    mid = alice.chat(f"nobody@{EJ_DOMAIN}", "hello?")
    err = alice.wait_error(pb.Error.SERVICE_UNAVAILABLE, timeout=FED_WAIT)
    assert err.id == mid and err.seq > 0

    # and tern's for a user it does not have reaches bob.
    mid = bob.send_chat("nobody@tern.test", "anyone there?", receipt=False)
    err = bob.wait_error(from_="nobody@tern.test", timeout=FED_WAIT)
    assert err.id == mid and "service-unavailable" in err.xml

    # disco and ping from an ejabberd user, answered by tern.
    features = bob.disco_info(TERN_DOMAIN)
    assert "urn:xmpp:receipts" in features and "urn:xmpp:ping" in features
    assert "urn:xmpp:receipts" in bob.disco_info("alice@tern.test")
    assert ej.errors() == []


@pytest.mark.parametrize("ejabberd", ["required"], indirect=True)
def test_chat_both_ways_when_ejabberd_requires_starttls(federation, fed_phones, xmpp_client, pb):
    ej, bob, alice = _bob_and_alice(federation, fed_phones, xmpp_client)
    assert "s2s_use_starttls: required" in ej.config_path.read_text()

    alice.chat(bob.bare, "over mandatory TLS")
    bob.wait_message(body="over mandatory TLS", timeout=FED_WAIT)
    bob.send_chat("alice@tern.test", "and back", receipt=False)
    alice.wait_chat("and back", timeout=FED_WAIT)
    _assert_tls_and_dialback_both_ways(ej)
    assert ej.errors() == []
