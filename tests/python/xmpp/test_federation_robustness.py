"""Federation robustness, end to end: tern (tern.test) and a real Prosody (xmpp.test).

* Prosody restarted (SIGTERM / SIGKILL) or frozen (SIGSTOP/SIGCONT) in the
  middle of a conversation.
* A hostile peer on tern's s2s port (raw sockets, loopback): entity bombs,
  an oversized stanza, stanzas before authentication, deep nesting, too many
  attributes, non-XML, a wrong host; one at a time, back to back and many at
  once. The phone <-> bob conversation through Prosody must keep working.
* A raw peer claiming to be xmpp.test through dialback: tern checks the key
  with the real authoritative server (Prosody), which refuses it; a claim for
  an unreachable domain is invalid; a forged db:verify put to tern is invalid.

Uses the rig of test_federation.py (imported, nothing moved), except that
tern's s2s gets its own 127.0.1.x address (see `federation` below).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time

import pytest

import xmpp.test_federation as fed
from ternclient import new_id
from xmpp.prosody import _port_open
from xmpp.test_federation import (  # noqa: F401  (fixtures are used by name)
    FED_WAIT,
    TERN_DOMAIN,
    XMPP_USERS,
    _start_tern,
    fed_phones,
)

# bridge/src/stream/mod.rs: Limits::default().max_stanza_bytes; the daemon does
# not override it (src/s2s/mod.rs builds MachineConfig::new with the defaults).
MAX_STANZA_BYTES = 256 * 1024
RAW_WAIT = 5.0

STREAM_HEADER = (
    "<?xml version='1.0'?>"
    "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
    "xmlns:db='jabber:server:dialback' from='{frm}' to='{to}' version='1.0'>"
)
BOMB_DTD = (
    '<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
    '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">'
    '<!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>'
)


# test_federation.py puts tern's s2s on 127.0.0.1:5269, so two runs at once
# (another engineer's, CI's) collide there. These tests give tern its own
# loopback address instead (Prosody finds tern.test through its hosts file,
# always on port 5269), picked from a range the Prosody rig does not use.
TERN_IPS = [f"127.0.1.{n}" for n in range(1, 64)]


@pytest.fixture
def federation(monkeypatch, prosody_factory, user_template, tmp_path):
    """(tern, prosody) like test_federation.py's, with tern's s2s on a free
    127.0.1.x:5269 (tern.s2s_addr)."""
    ip = next((ip for ip in TERN_IPS if not _port_open(ip, 5269, timeout=0.2)), None)
    if ip is None:
        pytest.fail("no free 127.0.1.x:5269 for tern")
    addr = (ip, 5269)
    monkeypatch.setattr(fed, "S2S_ADDR", addr)  # read by _start_tern at call time
    prosody = prosody_factory("xmpp.test", users=XMPP_USERS, hosts={TERN_DOMAIN: ip})
    tern = _start_tern(tmp_path, user_template, {"xmpp.test": f"{prosody.s2s[0]}:{prosody.s2s[1]}"})
    tern.s2s_addr = addr
    RawPeer.addr = addr
    yield tern, prosody
    print(f"--- tern log (tail) ---\n{tern.log_tail()}")
    if tern.proc.poll() is None:
        tern.proc.send_signal(signal.SIGTERM)
        try:
            tern.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            tern.proc.kill()
            tern.proc.wait(timeout=5)


def header(frm: str = "evil.test", to: str = TERN_DOMAIN) -> bytes:
    return STREAM_HEADER.format(frm=frm, to=to).encode()


class RawPeer:
    """A plain-TCP s2s peer (tern's s2s tls is "preferred": dialback is offered
    without STARTTLS). A reader thread collects everything tern sends, so a
    stream error is captured even if the connection ends with a reset."""

    addr: tuple[str, int] = ("127.0.0.1", 5269)  # set by the federation fixture

    def __init__(self):
        self.sock = socket.create_connection(self.addr, timeout=RAW_WAIT)
        self.sock.settimeout(None)
        self._buf = b""
        self._cond = threading.Condition()
        self.closed = False
        self.reset = False
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
                self.reset = True
            with self._cond:
                if not chunk:
                    self.closed = True
                    self._cond.notify_all()
                    return
                self._buf += chunk
                self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return self._buf.decode(errors="replace")

    def send(self, data: bytes) -> bool:
        """sendall; False if tern already hung up on us."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def wait_for(self, needle: str, timeout: float = RAW_WAIT) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while needle not in self._buf.decode(errors="replace"):
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise AssertionError(f"no {needle!r} from tern within {timeout}s; got {self.text!r}")
                self._cond.wait(left)
        return self.text

    def wait_closed(self, timeout: float = RAW_WAIT) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"tern did not close the stream within {timeout}s; got {self.text!r}")
                self._cond.wait(left)
        return self.text

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
        self._t.join(timeout=2)


@pytest.fixture
def raw_peer():
    made: list[RawPeer] = []

    def make() -> RawPeer:
        p = RawPeer()
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def stream_error(text: str) -> str | None:
    """The defined condition of the <stream:error> in what tern sent, if any."""
    m = re.search(r"<(?:stream:)?error\b[^>]*>(.*?)</(?:stream:)?error>", text, re.S)
    if not m:
        return None
    c = re.search(r"<([a-z-]+)\b[^>]*xmlns=['\"]urn:ietf:params:xml:ns:xmpp-streams['\"]", m.group(1))
    return c.group(1) if c else None


def assert_stream_ended(text: str, condition: str):
    assert stream_error(text) == condition, f"expected <{condition}/>, tern sent {text!r}"
    assert "</stream:stream>" in text, f"no closing </stream:stream>: {text!r}"


def converse(alice, bob, tag: str):
    """One message each way between the phone and bob (through Prosody)."""
    body = f"phone->bob {tag} {new_id('x')}"
    alice.chat("bob@xmpp.test", body)
    bob.wait_message(body=body, timeout=FED_WAIT)
    body = f"bob->phone {tag} {new_id('x')}"
    bob.send_chat("alice@tern.test", body, receipt=False)
    down = alice.wait_chat(body, timeout=FED_WAIT)
    assert down.chat.peer == bob.jid


def bodies(phone) -> list[str]:
    return [d.chat.body for d in phone.chats()]


# --------------------------------------------------------------------------
# 1. Prosody restarted mid-conversation
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "how, pause",
    [("sigterm", 0.5), ("sigterm", 0.0), ("sigkill", 0.0)],
    ids=["sigterm-then-send", "sigterm-send-at-once", "sigkill-send-at-once"],
)
def test_prosody_restart_mid_conversation(how, pause, federation, fed_phones, xmpp_client, pb):
    """What tern does (observed): its streams end with Prosody (a SystemShutdown
    stream error, or EOF after SIGKILL); the phone's message sent while
    Prosody is down waits in tern's queue for xmpp.test while connects are
    refused (backing off), and goes out once Prosody is back: bob gets it,
    or, if it beat bob's login (this rig has no offline storage), Prosody
    answers service-unavailable. Never a remote-server-* bounce, since it
    was sent well within the send timeout. Bob's reply comes in on a new
    inbound stream. (A peer that stays down: test_federation_retry.py.)"""
    tern, prosody = federation
    bob = xmpp_client(prosody, "bob")
    alice = fed_phones("alice", "phone1")
    alice.connect()
    converse(alice, bob, "before restart")

    # Prosody goes away: both s2s streams (and bob's c2s) die with it.
    if how == "sigkill":
        prosody.proc.kill()  # our own child, by PID
        prosody.proc.wait(timeout=5)
    else:
        prosody.stop()
    bob.abort()
    time.sleep(pause)
    queued_body = f"sent while prosody is down {new_id('x')}"
    queued_id = alice.chat("bob@xmpp.test", queued_body)

    prosody.proc = None
    prosody.start()
    bob2 = xmpp_client(prosody, "bob")

    def arrived() -> bool:
        if any(s.name == "message" and s.body == queued_body for s in list(bob2.received)):
            return True
        errs = [d for d in alice.downs() if d.WhichOneof("body") == "error" and d.id == queued_id]
        assert all(e.error.code == pb.Error.SERVICE_UNAVAILABLE for e in errs), errs
        return bool(errs)

    deadline = time.monotonic() + FED_WAIT
    while not arrived():
        assert time.monotonic() < deadline, f"{queued_id} neither reached bob nor came back from Prosody"
        time.sleep(0.1)
    converse(alice, bob2, "after restart")
    assert tern.proc.poll() is None


def test_prosody_frozen_then_resumed_gets_the_message_sent_meanwhile(federation, fed_phones, xmpp_client, pb):
    """Prosody hangs (SIGSTOP) rather than dies: tern cannot tell, writes the
    phone's message into the live TCP stream, and it is delivered once Prosody
    runs again (SIGCONT); no error comes back to the phone."""
    tern, prosody = federation
    bob = xmpp_client(prosody, "bob")
    alice = fed_phones("alice", "phone1")
    alice.connect()
    converse(alice, bob, "before the freeze")
    body = f"sent while prosody is frozen {new_id('x')}"
    os.kill(prosody.pid, signal.SIGSTOP)  # our own child, by PID
    try:
        mid = alice.chat("bob@xmpp.test", body)
        time.sleep(2.0)
    finally:
        os.kill(prosody.pid, signal.SIGCONT)
    got = bob.wait_message(body=body, timeout=FED_WAIT)
    assert got.id == mid
    converse(alice, bob, "after the freeze")
    assert not [d for d in alice.downs() if d.WhichOneof("body") == "error"], alice.downs()


# --------------------------------------------------------------------------
# 2. Hostile peer on tern's s2s port
# --------------------------------------------------------------------------


def _attack_entity_bomb_before_header(raw_peer):
    p = raw_peer()
    p.send(b"<?xml version='1.0'?>" + BOMB_DTD.encode() + header()[len("<?xml version='1.0'?>"):])
    return p.wait_closed(), "restricted-xml"


def _attack_entity_bomb_in_stream(raw_peer):
    p = raw_peer()
    p.send(header())
    p.wait_for("</stream:features>")
    p.send(BOMB_DTD.encode() + b"<message from='x@evil.test' to='alice@tern.test'><body>&d;</body></message>")
    return p.wait_closed(), "restricted-xml"


def _attack_entity_reference_in_stanza(raw_peer):
    p = raw_peer()
    p.send(header())
    p.wait_for("</stream:features>")
    p.send(b"<message from='x@evil.test' to='alice@tern.test'><body>&lol;</body></message>")
    return p.wait_closed(), "restricted-xml"


def _attack_oversized_stanza(raw_peer):
    p = raw_peer()
    p.send(header())
    p.wait_for("</stream:features>")
    head = b"<message from='x@evil.test' to='alice@tern.test' type='chat'><body>"
    # One stanza a little over the limit, and nothing after it: tern reads all
    # of it, so its close is a FIN, not a reset that could eat the error.
    p.send(head + b"A" * (MAX_STANZA_BYTES + 1024 - len(head)))
    return p.wait_closed(), "policy-violation"


def _attack_stanza_before_auth(raw_peer):
    p = raw_peer()
    p.send(header(frm="xmpp.test"))
    p.wait_for("</stream:features>")
    p.send(
        b"<message from='bob@xmpp.test' to='alice@tern.test' type='chat' id='unauth'>"
        b"<body>unauthenticated hello</body></message>"
    )
    return p.wait_closed(), "not-authorized"


def _attack_stanza_at_exactly_the_limit(raw_peer):
    # The limit is not off by one: a stanza of exactly MAX_STANZA_BYTES is
    # decoded, and then refused for what it is (unauthenticated).
    p = raw_peer()
    p.send(header(frm="xmpp.test"))
    p.wait_for("</stream:features>")
    head = b"<message from='bob@xmpp.test' to='alice@tern.test' type='chat'><body>unauthenticated "
    tail = b"</body></message>"
    p.send(head + b"A" * (MAX_STANZA_BYTES - len(head) - len(tail)) + tail)
    return p.wait_closed(), "not-authorized"


def _attack_deep_nesting(raw_peer):
    p = raw_peer()
    p.send(header())
    p.wait_for("</stream:features>")
    p.send(b"<message>" + b"<a>" * 200)
    return p.wait_closed(), "policy-violation"


def _attack_many_attributes(raw_peer):
    p = raw_peer()
    p.send(header())
    p.wait_for("</stream:features>")
    p.send(b"<message " + b" ".join(b"a%d='x'" % i for i in range(500)) + b"/>")
    return p.wait_closed(), "policy-violation"


def _attack_not_xml(raw_peer):
    p = raw_peer()
    p.send(b"GET / HTTP/1.1\r\nHost: tern.test\r\n\r\n")
    return p.wait_closed(), "not-well-formed"


def _attack_wrong_host(raw_peer):
    p = raw_peer()
    p.send(header(to="somewhere-else.test"))
    return p.wait_closed(), "host-unknown"


ATTACKS = {
    "entity-bomb-before-header": _attack_entity_bomb_before_header,
    "entity-bomb-inside-stream": _attack_entity_bomb_in_stream,
    "undeclared-entity-in-stanza": _attack_entity_reference_in_stanza,
    "oversized-stanza": _attack_oversized_stanza,
    "stanza-before-auth": _attack_stanza_before_auth,
    "stanza-at-exactly-the-limit": _attack_stanza_at_exactly_the_limit,
    "deep-nesting": _attack_deep_nesting,
    "many-attributes": _attack_many_attributes,
    "not-xml": _attack_not_xml,
    "wrong-host": _attack_wrong_host,
}
# The brief's three, used by the back-to-back and concurrent tests.
CORE_ATTACKS = ("entity-bomb-before-header", "entity-bomb-inside-stream", "oversized-stanza", "stanza-before-auth")


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_hostile_peer_is_cut_off_and_federation_keeps_working(
    attack, federation, fed_phones, xmpp_client, raw_peer
):
    tern, prosody = federation
    bob = xmpp_client(prosody, "bob")
    alice = fed_phones("alice", "phone1")
    alice.connect()
    converse(alice, bob, "before the attack")

    text, condition = ATTACKS[attack](raw_peer)
    assert_stream_ended(text, condition)
    assert tern.proc.poll() is None, "tern died"

    converse(alice, bob, f"after {attack}")
    # Nothing of the attacker's reached the phone.
    assert not [b for b in bodies(alice) if "unauthenticated" in b or b.startswith("A")], bodies(alice)


def test_hostile_peers_back_to_back_do_not_disturb_the_conversation(
    federation, fed_phones, xmpp_client, raw_peer
):
    """(a)-(c) one after the other on the same tern, one message each way after each."""
    tern, prosody = federation
    bob = xmpp_client(prosody, "bob")
    alice = fed_phones("alice", "phone1")
    alice.connect()
    converse(alice, bob, "start")
    for name in ("entity-bomb-inside-stream", "oversized-stanza", "stanza-before-auth"):
        text, condition = ATTACKS[name](raw_peer)
        assert_stream_ended(text, condition)
        converse(alice, bob, f"after {name}")
    assert tern.proc.poll() is None


def test_many_hostile_peers_at_once_while_chatting(federation, fed_phones, xmpp_client, raw_peer):
    """All the attacks, 4 connections each, in threads, while the phone and bob talk."""
    tern, prosody = federation
    bob = xmpp_client(prosody, "bob")
    alice = fed_phones("alice", "phone1")
    alice.connect()
    converse(alice, bob, "start")
    results: list = []
    lock = threading.Lock()

    def run(name):
        try:
            text, condition = ATTACKS[name](raw_peer)
            out = (name, stream_error(text) == condition and "</stream:stream>" in text, text[-300:])
        except Exception as e:  # noqa: BLE001  reported below
            out = (name, False, repr(e))
        with lock:
            results.append(out)

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in CORE_ATTACKS for _ in range(4)]
    for t in threads:
        t.start()
    converse(alice, bob, "during the attacks")
    for t in threads:
        t.join(timeout=FED_WAIT)
    assert len(results) == len(threads), results
    assert all(ok for _, ok, _ in results), [r for r in results if not r[1]]
    converse(alice, bob, "after the attacks")
    assert tern.proc.poll() is None


# --------------------------------------------------------------------------
# 3. Spoofed from: a raw peer claiming to be xmpp.test through dialback
# --------------------------------------------------------------------------


@pytest.mark.parametrize("warm", [True, False], ids=["streams-up", "no-stream-yet"])
def test_dialback_claim_for_xmpp_test_is_refused_by_the_authoritative_server(
    warm, federation, fed_phones, xmpp_client, raw_peer
):
    """A raw peer says it is xmpp.test and offers a made-up dialback key. tern
    asks Prosody (db:verify, over its outbound stream, opened for the purpose
    if there is none yet); Prosody says invalid; tern answers
    <db:result type='invalid'/>, keeps the stream unauthenticated, and a
    stanza "from bob@xmpp.test" on it gets not-authorized and a close."""
    tern, prosody = federation
    bob = xmpp_client(prosody, "bob")
    alice = fed_phones("alice", "phone1")
    alice.connect()
    if warm:
        converse(alice, bob, "before the spoof")

    p = raw_peer()
    p.send(header(frm="xmpp.test"))
    p.wait_for("</stream:features>")
    assert "<dialback xmlns='urn:xmpp:features:dialback'/>" in p.text, p.text
    p.send(b"<db:result from='xmpp.test' to='tern.test'>0123456789abcdef0123456789abcdef</db:result>")
    text = p.wait_for("<db:result", timeout=FED_WAIT)
    assert "<db:result from='tern.test' to='xmpp.test' type='invalid'/>" in text, text
    assert stream_error(text) is None, text  # the stream stays open, unauthenticated
    # Prosody, the real xmpp.test, was asked and refused.
    assert prosody.log_lines("Asked to verify a dialback key that was incorrect"), prosody.log_tail(30)

    p.send(
        b"<message from='bob@xmpp.test' to='alice@tern.test' type='chat' id='spoof1'>"
        b"<body>spoofed hello</body></message>"
    )
    text = p.wait_closed()
    assert_stream_ended(text, "not-authorized")

    # The phone got nothing from it; the real bob still gets through.
    converse(alice, bob, "after the spoof")
    time.sleep(0.5)
    assert "spoofed hello" not in bodies(alice), bodies(alice)


def test_dialback_claim_for_an_unreachable_domain_is_invalid(federation, fed_phones, xmpp_client, raw_peer):
    """The claimed domain's authoritative server cannot be reached: the key
    cannot be verified, so it is invalid (not left pending, not accepted)."""
    tern, prosody = federation
    bob = xmpp_client(prosody, "bob")
    alice = fed_phones("alice", "phone1")
    alice.connect()
    p = raw_peer()
    p.send(header(frm="nowhere.invalid"))
    p.wait_for("</stream:features>")
    p.send(b"<db:result from='nowhere.invalid' to='tern.test'>0123456789abcdef</db:result>")
    text = p.wait_for("<db:result", timeout=FED_WAIT)
    assert "<db:result from='tern.test' to='nowhere.invalid' type='invalid'/>" in text, text
    # A peer that hangs up with a verification in flight hurts nobody.
    q = raw_peer()
    q.send(header(frm="xmpp.test"))
    q.wait_for("</stream:features>")
    q.send(b"<db:result from='xmpp.test' to='tern.test'>feedfacefeedface</db:result>")
    q.close()
    converse(alice, bob, "after the claims")
    assert tern.proc.poll() is None


def test_tern_as_authoritative_server_refuses_a_forged_key(federation, raw_peer):
    """Someone asks tern (db:verify) whether a key for tern.test is genuine:
    a made-up key is answered type='invalid', never 'valid'."""
    tern, prosody = federation
    p = raw_peer()
    p.send(header(frm="xmpp.test"))
    p.wait_for("</stream:features>")
    p.send(
        b"<db:verify from='xmpp.test' to='tern.test' id='forged-stream-id'>"
        b"0000000000000000000000000000000000000000000000000000000000000000</db:verify>"
    )
    text = p.wait_for("<db:verify", timeout=RAW_WAIT)
    m = re.search(r"<db:verify\b[^>]*/?>", text)
    assert m, text
    assert m.group(0) == "<db:verify from='tern.test' to='xmpp.test' id='forged-stream-id' type='invalid'/>", text
