"""Delivery to a peer that is not there yet, or never: stanzas wait in tern's
per-peer queue across failed connection attempts (exponential backoff), go
out when the peer comes up, and bounce to the phone once they have waited
`s2s.send_timeout_secs` (remote-server-not-found when every attempt was
refused, remote-server-timeout when the peer never answered)."""

from __future__ import annotations

import socket
import time

from ternclient import new_id
from xmpp.prosody import ProsodyServer
from xmpp.s2snet import FED_WAIT, XMPP_USERS, closed_port, free_loopback_ip, prosody_ip
from xmpp.s2snet import phones, s2s_tern  # noqa: F401 (fixtures)

# Prosody's defaults plus offline storage, so a message that arrives before
# bob has logged in again is kept for him rather than bounced.
MODULES = ["roster", "saslauth", "tls", "dialback", "disco", "ping", "time", "version", "offline"]


def errors(phone) -> list:
    return [d for d in phone.downs() if d.WhichOneof("body") == "error"]


def test_a_peer_that_comes_up_late_gets_the_queued_messages(prosody_factory, s2s_tern, phones, xmpp_client, pb):
    tern_ip = free_loopback_ip()
    prosody: ProsodyServer = prosody_factory(
        "xmpp.test",
        ip=prosody_ip(), users=XMPP_USERS, hosts={"tern.test": tern_ip}, modules=MODULES, start=False
    )
    tern = s2s_tern(tern_ip, routes={"xmpp.test": f"{prosody.ip}:5269"}, retry_min_secs=1, retry_max_secs=2)
    alice = phones(tern)
    first = f"before prosody {new_id('x')}"
    alice.chat("bob@xmpp.test", first)
    time.sleep(2.5)  # a few refused attempts
    second = f"while backing off {new_id('x')}"
    alice.chat("bob@xmpp.test", second)
    assert tern.log().count("s2s connect failed") >= 2, tern.log_tail()
    prosody.start()
    bob = xmpp_client(prosody, "bob")
    got = [bob.wait_message(body=first, timeout=FED_WAIT), bob.wait_message(body=second, timeout=FED_WAIT)]
    assert all(g.from_ == "alice@tern.test/phone1" for g in got)
    assert not errors(alice), alice.downs()


def test_a_peer_that_never_comes_up_bounces_after_the_send_timeout(s2s_tern, phones, pb):
    dead = f"127.0.0.1:{closed_port()}"
    tern = s2s_tern(free_loopback_ip(), routes={"xmpp.test": dead}, send_timeout_secs=3, retry_min_secs=1)
    alice = phones(tern)
    mid = alice.chat("bob@xmpp.test", "into the void")
    time.sleep(1.0)
    assert not errors(alice), "it waits for the send timeout, not for the first refusal"
    err = alice.wait_error(pb.Error.REMOTE_SERVER_NOT_FOUND, timeout=FED_WAIT)
    assert err.id == mid and err.seq > 0
    # The peer stays in backoff: a new message is queued again, and bounced again.
    mid2 = alice.chat("bob@xmpp.test", "and again")
    err = alice.wait_down(lambda d: d.WhichOneof("body") == "error" and d.id == mid2, "second bounce", FED_WAIT)
    assert err.error.code == pb.Error.REMOTE_SERVER_NOT_FOUND
    assert tern.log().count("s2s connect failed") >= 2


def test_a_peer_that_accepts_but_never_answers_bounces_as_a_timeout(s2s_tern, phones, pb):
    """TCP connects, then silence: the stream is still negotiating when the
    send timeout passes, so the bounce says remote-server-timeout."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        addr = "127.0.0.1:%d" % silent.getsockname()[1]
        tern = s2s_tern(free_loopback_ip(), routes={"xmpp.test": addr}, send_timeout_secs=2)
        alice = phones(tern)
        mid = alice.chat("bob@xmpp.test", "hello?")
        err = alice.wait_error(pb.Error.REMOTE_SERVER_TIMEOUT, timeout=FED_WAIT)
        assert err.id == mid
    finally:
        silent.close()
