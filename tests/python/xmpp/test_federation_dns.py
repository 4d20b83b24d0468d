"""tern finds a peer through DNS (RFC 6120 §3.2): the _xmpp-server._tcp SRV
records in priority order, else the domain's A record on port 5269.

A real DNS server (dnsmasq on 127.0.0.1:<port>, tern's `s2s.dns_server`)
holds the records; tern has no fixed route; Prosody (xmpp.test) is the peer.
"""

from __future__ import annotations

from ternclient import new_id
from xmpp.s2snet import FED_WAIT, XMPP_USERS, closed_port, free_loopback_ip, free_udp_port, prosody_ip
from xmpp.s2snet import dnsmasq, phones, s2s_tern  # noqa: F401 (fixtures)


def _chat_reaches_bob(tern, prosody, phones, xmpp_client, text: str):
    """alice's phone sends bob@xmpp.test a chat, which bob gets; returns (alice, bob)."""
    bob = xmpp_client(prosody, "bob")
    alice = phones(tern)
    body = f"{text} {new_id('x')}"
    mid = alice.chat("bob@xmpp.test", body)
    got = bob.wait_message(body=body, timeout=FED_WAIT)
    assert got.id == mid and got.from_ == "alice@tern.test/phone1"
    return alice, bob


def test_a_stanza_reaches_prosody_through_srv_records_only(
    prosody_factory, s2s_tern, dnsmasq, phones, xmpp_client, pb
):
    """xmpp.test has no address record; its SRV records name a dead target at
    the better priority and Prosody's non-standard port at the worse one: tern
    tries them in order and gets through on the second."""
    port = free_udp_port()  # a port number free on Prosody's IP too
    dead_ip = free_loopback_ip()
    tern_ip = free_loopback_ip()
    prosody = prosody_factory(
        "xmpp.test", ip=prosody_ip(), users=XMPP_USERS, hosts={"tern.test": tern_ip}, s2s_port=port
    )
    dns = dnsmasq(
        srv=[
            f"_xmpp-server._tcp.xmpp.test,dead.xmpp.test,{closed_port(dead_ip)},0,10",
            f"_xmpp-server._tcp.xmpp.test,s2s.xmpp.test,{port},10,10",
        ],
        hosts=[f"dead.xmpp.test,{dead_ip}", f"s2s.xmpp.test,{prosody.ip}"],
    )
    tern = s2s_tern(tern_ip, dns_server=dns.addr)
    alice, bob = _chat_reaches_bob(tern, prosody, phones, xmpp_client, "found by SRV")
    # SRV first, then the targets' addresses in priority order; never xmpp.test's own.
    asked = [q.split("query", 1)[1].split(" from ")[0] for q in dns.queries()]
    srv = "[SRV] _xmpp-server._tcp.xmpp.test"
    assert srv in asked and "[A] dead.xmpp.test" in asked and "[A] s2s.xmpp.test" in asked, asked
    assert asked.index(srv) < asked.index("[A] dead.xmpp.test") < asked.index("[A] s2s.xmpp.test"), asked
    assert "[A] xmpp.test" not in asked, asked
    assert "s2s target connected" in tern.log() and "s2s.xmpp.test" in tern.log()
    # And back: bob's reply comes in on the stream Prosody opened to tern.
    bob.send_chat("alice@tern.test", "reply", receipt=False)
    alice.wait_chat("reply", timeout=FED_WAIT)


def test_a_stanza_reaches_prosody_through_the_a_record_fallback(
    prosody_factory, s2s_tern, dnsmasq, phones, xmpp_client, pb
):
    """No SRV records: tern connects to xmpp.test's own address, port 5269."""
    tern_ip = free_loopback_ip()
    prosody = prosody_factory("xmpp.test", ip=prosody_ip(), users=XMPP_USERS, hosts={"tern.test": tern_ip})
    dns = dnsmasq(hosts=[f"xmpp.test,{prosody.ip}"])
    tern = s2s_tern(tern_ip, dns_server=dns.addr)
    _chat_reaches_bob(tern, prosody, phones, xmpp_client, "found by A")
    queries = dns.queries()
    assert any("query[SRV] _xmpp-server._tcp.xmpp.test" in q for q in queries), queries
    assert any("query[A] xmpp.test" in q for q in queries), queries


def test_an_srv_target_of_dot_bounces_at_once_as_not_found(s2s_tern, dnsmasq, phones, pb):
    """A lone SRV record with target "." says the domain has no XMPP service:
    nothing to wait for, so the phone gets remote-server-not-found well
    before the (default, 60 s) send timeout."""
    dns = dnsmasq(srv=["_xmpp-server._tcp.noxmpp.test"])
    tern = s2s_tern(free_loopback_ip(), dns_server=dns.addr)
    alice = phones(tern)
    mid = alice.chat("someone@noxmpp.test", "no service there")
    err = alice.wait_error(pb.Error.REMOTE_SERVER_NOT_FOUND, timeout=FED_WAIT)
    assert err.id == mid


def test_a_domain_without_records_bounces_at_once_as_not_found(s2s_tern, dnsmasq, phones, pb):
    """NXDOMAIN for the SRV name and the domain itself: no server exists."""
    dns = dnsmasq()
    tern = s2s_tern(free_loopback_ip(), dns_server=dns.addr)
    alice = phones(tern)
    mid = alice.chat("someone@nothere.test", "nobody home")
    err = alice.wait_error(pb.Error.REMOTE_SERVER_NOT_FOUND, timeout=FED_WAIT)
    assert err.id == mid
    assert any("query[A] nothere.test" in q for q in dns.queries()), dns.queries()
    # Messages right after are bounced too, not held until the send timeout.
    for _ in range(3):
        mid = alice.chat("someone@nothere.test", "still nobody")
        err = alice.wait_down(lambda d: d.WhichOneof("body") == "error" and d.id == mid, mid, FED_WAIT)
        assert err.error.code == pb.Error.REMOTE_SERVER_NOT_FOUND
