"""End-to-end tests of tern with paho-mqtt, a client nobody on this project wrote.

Each test gets a fresh `tern serve` (see conftest.py) with users alice, bob and
carol, and speaks the protocol of docs/PROTOCOL.md: `Up` envelopes on topic
`u`, `Down` envelopes on topic `d`, no SUBSCRIBE needed for `d`.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
from google.protobuf.message import DecodeError

from ternclient import WAIT, MQTTv5, MQTTv311, Phone, new_id


def assert_fresh_ts(ts_ms: int) -> None:
    now = time.time() * 1000
    assert ts_ms > 0, "chat without ts"
    assert abs(now - ts_ms) < 120_000, f"ts {ts_ms} is not close to now ({now:.0f})"


def chat_both_ways(pb, tern, alice: Phone, bob: Phone) -> None:
    """alice -> bob chat, bob -> alice receipt, bob -> alice chat."""
    body = f"hello bob {new_id('b')}"
    msg_id = alice.chat(tern.jid("bob"), body)

    got = bob.wait_chat(body)
    assert bob.last_qos == 1, "inbox entries come at QoS 1 unless the device chose 0"
    assert got.id == msg_id
    assert got.chat.peer == alice.jid
    assert got.seq > 0
    assert_fresh_ts(got.chat.ts)
    assert not got.chat.outgoing

    receipt = pb.Up(id=new_id("r"))
    receipt.receipt.peer = tern.jid("alice")
    receipt.receipt.id = msg_id
    receipt.receipt.kind = pb.Receipt.DELIVERED
    bob.send(receipt)
    r = alice.wait_down(
        lambda d: d.WhichOneof("body") == "receipt" and d.receipt.id == msg_id,
        f"receipt for {msg_id}",
    )
    assert r.receipt.peer == bob.jid
    assert r.receipt.kind == pb.Receipt.DELIVERED
    assert r.seq > 0

    back = f"hi alice {new_id('b')}"
    back_id = bob.chat(tern.jid("alice"), back)
    got = alice.wait_chat(back)
    assert got.id == back_id
    assert got.chat.peer == bob.jid
    assert got.seq > r.seq, "alice's inbox seq must increase"
    assert_fresh_ts(got.chat.ts)


# --------------------------------------------------------------------------
# 1. chat both ways
# --------------------------------------------------------------------------


def test_chat_both_ways(pb, tern, phones):
    alice = phones("alice", "alice-phone")
    bob = phones("bob", "bob-phone")
    alice.connect()
    bob.connect()
    chat_both_ways(pb, tern, alice, bob)
    # Neither side subscribed to anything: everything came on `d`.
    for p in (alice, bob):
        assert {t for t, _, _ in p.messages} == {"d"}
        assert p.subacks == {}


def test_numeric_ids_stand_for_short_string_ids(pb, tern, phones):
    """Up.num_id is the id its base64url rendering spells; Hello{numeric_ids} sends such ids
    down as numbers, and everyone else sees the string."""
    alice = phones("alice", "alice-phone")
    bob = phones("bob", "bob-phone")
    alice.connect()
    bob.connect()
    alice.hello(peer_refs=False, numeric_ids=True)
    up = pb.Up(num_id=1000)
    up.chat.peer, up.chat.body = tern.jid("alice"), "by number"
    bob.send(up)
    got = alice.wait_chat("by number")
    assert (got.id, got.num_id) == ("", 1000)
    # A string id that is no number's rendering stays a string.
    bob.chat(tern.jid("alice"), "by string", msg_id="m.1")
    got = alice.wait_chat("by string")
    assert (got.id, got.num_id) == ("m.1", 0)
    # alice's receipt names the message by number; bob, without the option, sees "Po".
    receipt = pb.Up(num_id=7)
    receipt.receipt.peer, receipt.receipt.num_id = bob.jid, 1000
    alice.send(receipt)
    back = bob.wait_down(lambda d: d.WhichOneof("body") == "receipt", "receipt")
    assert (back.receipt.id, back.receipt.num_id) == ("Po", 0)
    # Both forms of one id are refused, with the reason.
    both = pb.Up(id="Po", num_id=1000)
    both.chat.peer, both.chat.body = tern.jid("alice"), "twice"
    bob.send(both)
    err = bob.wait_error(pb.Error.BAD_ENVELOPE)
    assert err.error.text == "both id and num_id"


def test_peer_refs_name_contacts_by_number_both_ways(pb, tern, phones):
    """Hello{peer_refs}: a listed contact travels as a small ref instead of its JID."""
    alice = phones("alice", "alice-phone")
    bob = phones("bob", "bob-phone")
    alice.connect()
    bob.connect()
    alice.hello(qos=0)
    bob_jid = tern.jid("bob")
    push = alice.roster_set(bob_jid, "Bob")
    (item,) = [i for i in push.roster.items if i.jid == bob_jid]
    assert item.peer_ref > 0
    # Down: bob's message names him by ref and resource, without his JID.
    bob.chat(tern.jid("alice"), "by ref, please")
    got = alice.wait_chat("by ref, please")
    assert (got.chat.peer, got.chat.peer_ref, got.chat.resource) == ("", item.peer_ref, "bob-phone")
    # Up: alice names bob by ref; bob (no Hello) sees her full JID as always.
    up = pb.Up(id=new_id())
    up.chat.peer_ref, up.chat.body = item.peer_ref, "to your ref"
    alice.send(up)
    assert bob.wait_chat("to your ref").chat.peer == alice.jid
    # A ref that is not one of alice's is refused with its reason; the session goes on.
    bad = pb.Up(id=new_id())
    bad.chat.peer_ref, bad.chat.body = 999, "nobody"
    alice.send(bad)
    err = alice.wait_error(pb.Error.BAD_JID)
    assert (err.id, err.error.text) == (bad.id, "unknown peer_ref 999")
    # Back after a reconnect, with the roster version it stored: refs again, and a resync
    # (entries sent before the Hello was read came by JID) resends them by ref.
    alice.close()
    bob.chat(tern.jid("alice"), "while you were away")
    alice2 = phones("alice", "alice-phone")
    alice2.connect()
    alice2.wait_chat("while you were away")
    alice2.hello(roster_ver=push.roster.ver)
    sync = pb.Up(id=new_id("s"))
    sync.sync.after = 0
    alice2.send(sync)
    again = alice2.wait_chat("while you were away")
    assert (again.chat.peer, again.chat.peer_ref) == ("", item.peer_ref)
    # A device that announces an older roster version is not sent a ref it has not seen.
    alice2.hello(roster_ver=push.roster.ver - 1)
    bob.chat(tern.jid("alice"), "old roster")
    later = alice2.wait_chat("old roster")
    assert (later.chat.peer, later.chat.peer_ref) == (f"{bob_jid}/bob-phone", 0)


# --------------------------------------------------------------------------
# 2. login: token, reconnect with token, wrong password
# --------------------------------------------------------------------------


def test_password_login_yields_token_that_logs_in(pb, tern, phones):
    alice = phones("alice", "alice-tab")
    alice.connect()
    tok = alice.wait_down(lambda d: d.WhichOneof("body") == "token", "token")
    assert tok.token.token, "empty token"
    assert tok.seq == 0, "a token is not an inbox entry"
    assert tok.token.expires > time.time(), "token already expired"
    assert tok.token.token != tern.passwords["alice"]
    alice.close()

    again = phones("alice", "alice-tab", password=tok.token.token)
    reason, _ = again.connect()
    assert not reason.is_failure
    # The token session really works: it can chat.
    bob = phones("bob", "bob-phone")
    bob.connect()
    body = "sent from a token session"
    again.chat(tern.jid("bob"), body)
    assert bob.wait_chat(body).chat.peer == again.jid


def test_wrong_password_is_not_authorized(pb, tern, phones):
    bad = phones("alice", "alice-phone", password="not-the-password")
    reason, _ = bad.connect(expect_ok=False)
    assert reason.is_failure
    assert reason == "Not authorized", f"got {reason}"

    bad_token = phones("alice", "alice-phone2", password="AAAA.bogus.token")
    reason, _ = bad_token.connect(expect_ok=False)
    assert reason == "Not authorized", f"got {reason}"

    nobody = phones("mallory", "m-phone", password="whatever")
    reason, _ = nobody.connect(expect_ok=False)
    assert reason == "Not authorized", f"got {reason}"


def _mqtt_str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_wrong_password_raw_connack_rc5(tern):
    """The exact bytes on 3.1.1: CONNACK return code 5, then the socket closes."""
    var = _mqtt_str("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 30)
    payload = _mqtt_str("alice-raw") + _mqtt_str("alice") + _mqtt_str("wrong")
    body = var + payload
    pkt = bytes([0x10]) + _remaining_length(len(body)) + body
    with socket.create_connection(tern.tcp, timeout=WAIT) as s:
        s.sendall(pkt)
        data = b""
        while len(data) < 4:
            chunk = s.recv(4 - len(data))
            if not chunk:
                break
            data += chunk
        assert data == bytes([0x20, 0x02, 0x00, 0x05]), f"CONNACK bytes {data.hex()}"
        assert s.recv(16) == b"", "server should close after a refused CONNECT"


# --------------------------------------------------------------------------
# 3. MQTT 5
# --------------------------------------------------------------------------


def test_mqtt5_chat(pb, tern, phones):
    alice = phones("alice", "alice-v5", protocol=MQTTv5)
    bob = phones("bob", "bob-v5", protocol=MQTTv5)
    alice.connect()
    bob.connect()
    chat_both_ways(pb, tern, alice, bob)


def test_mqtt5_talks_to_mqtt311(pb, tern, phones):
    alice = phones("alice", "alice-v5", protocol=MQTTv5)
    bob = phones("bob", "bob-v3", protocol=MQTTv311)
    alice.connect()
    bob.connect()
    chat_both_ways(pb, tern, alice, bob)


# --------------------------------------------------------------------------
# 4. TLS and WebSocket listeners
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "transport",
    [
        "tls",
        "ws",
    ],
)
def test_listener_carries_chat(pb, tern, phones, transport):
    assert tern.cert.exists(), "self-signed cert not written"
    alice = phones("alice", f"alice-{transport}", transport=transport)
    bob = phones("bob", "bob-tcp")
    alice.connect()
    bob.connect()
    chat_both_ways(pb, tern, alice, bob)
    # and the other way round: the receiver on the special transport
    alice2 = phones("alice", "alice-tcp")
    bob2 = phones("bob", f"bob-{transport}", transport=transport, protocol=MQTTv5)
    alice2.connect()
    bob2.connect()
    body = f"over {transport}"
    alice2.chat(tern.jid("bob"), body)
    assert bob2.wait_chat(body).chat.peer == alice2.jid


# --------------------------------------------------------------------------
# 5. offline sync
# --------------------------------------------------------------------------


def test_offline_sync_resumes_without_subscribe(pb, tern, phones):
    bob = phones("bob", "bob-phone", clean=False)
    bob.connect()
    bob.wait_down(lambda d: d.WhichOneof("body") == "token", "token")
    bob.close()
    time.sleep(0.3)  # let the server see the DISCONNECT

    alice = phones("alice", "alice-phone")
    alice.connect()
    sent = []
    for i in range(5):
        body = f"while you were away #{i}"
        sent.append((alice.chat(tern.jid("bob"), body), body))

    bob2 = phones("bob", "bob-phone", clean=False)
    bob2.connect()
    for _, body in sent:
        bob2.wait_chat(body)
    time.sleep(0.5)  # anything extra would show up now
    chats = bob2.chats()
    assert [(c.id, c.chat.body) for c in chats] == sent, "exactly the 5 messages, in order"
    seqs = [c.seq for c in chats]
    assert all(s > 0 for s in seqs)
    assert seqs == sorted(seqs) and len(set(seqs)) == 5, f"seqs not increasing: {seqs}"
    assert all(c.chat.peer == alice.jid for c in chats)
    assert bob2.subacks == {}, "no SUBSCRIBE was sent"


def test_resume_reports_session_present(pb, tern, phones):
    """A device that has acknowledged inbox entries is known: session present = 1."""
    alice = phones("alice", "alice-phone")
    alice.connect()
    bob = phones("bob", "bob-phone", clean=False)
    _, present = bob.connect()
    assert not present, "a never-seen device cannot have a session"
    alice.chat(tern.jid("bob"), "ack me")
    bob.wait_chat("ack me")
    time.sleep(0.3)  # paho PUBACKs after on_message returns
    bob.close()

    bob2 = phones("bob", "bob-phone", clean=False)
    _, present = bob2.connect()
    assert present, "CONNACK session present should be 1 for a known device with clean session 0"
    bob2.close()

    bob3 = phones("bob", "bob-phone", clean=True)
    _, present = bob3.connect()
    assert not present, "MQTT: clean session 1 must get session present 0"


def test_session_present_for_device_that_only_connected(pb, tern, phones):
    bob = phones("bob", "bob-phone", clean=False)
    bob.connect()
    bob.close()
    bob2 = phones("bob", "bob-phone", clean=False)
    _, present = bob2.connect()
    assert present, "CONNACK session present should be 1 for a device that connected before"


def test_acknowledged_entries_are_not_resent(pb, tern, phones):
    """PUBACKed entries move the device cursor: a reconnect does not repeat them."""
    bob = phones("bob", "bob-phone", clean=False)
    alice = phones("alice", "alice-phone")
    bob.connect()
    alice.connect()
    alice.chat(tern.jid("bob"), "first")
    bob.wait_chat("first")
    time.sleep(0.3)  # paho PUBACKs after on_message returns
    bob.close()
    alice.chat(tern.jid("bob"), "second")
    bob2 = phones("bob", "bob-phone", clean=False)
    bob2.connect()
    bob2.wait_chat("second")
    time.sleep(0.5)
    assert [c.chat.body for c in bob2.chats()] == ["second"]


# --------------------------------------------------------------------------
# 6. a hostile client
# --------------------------------------------------------------------------


def test_hostile_client_sees_nothing_and_is_refused(pb, tern, phones):
    carol = phones("carol", "carol-evil")
    carol.connect()
    carol.subscribe(["#", "+/#", "$share/g/#", "$SYS/#"])

    alice = phones("alice", "alice-phone")
    bob = phones("bob", "bob-phone")
    alice.connect()
    bob.connect()
    # alice also chats on a plain topic of her own
    alice_plain = phones("alice", "alice-sensor")
    alice_plain.connect()
    secret = "top secret between alice and bob"
    alice.chat(tern.jid("bob"), secret)
    bob.wait_chat(secret)
    bob.chat(tern.jid("alice"), secret + " (reply)")
    alice.wait_chat(secret + " (reply)")
    alice_plain.publish("sensors/temp", b"alice-private-plain", qos=0)
    time.sleep(0.5)

    for topic, payload, _ in carol.messages:
        assert secret.encode() not in payload, f"carol saw a secret on {topic!r}"
        assert b"alice-private-plain" not in payload, f"carol saw alice's plain topic on {topic!r}"
        assert b"alice@" not in payload and b"bob@" not in payload, (
            f"carol saw alice/bob traffic on {topic!r}: {payload!r}"
        )

    # Publishing on `d` is refused with NOT_ALLOWED, and bob gets nothing.
    evil = pb.Up(id="evil1")
    evil.chat.peer = tern.jid("bob")
    evil.chat.body = "forged down"
    carol.publish("d", evil.SerializeToString(), qos=1)
    carol.wait_error(pb.Error.NOT_ALLOWED)

    # Garbage on `u`: BAD_ENVELOPE, and the session goes on.
    garbage = b"\x0a\x10garbage"
    with pytest.raises(DecodeError):
        pb.Up.FromString(garbage)
    carol.publish("u", garbage, qos=1)
    carol.wait_error(pb.Error.BAD_ENVELOPE)
    assert not carol.disconnected.is_set(), "garbage closed the session"

    later = "carol still works"
    carol.chat(tern.jid("alice"), later)
    got = alice.wait_chat(later)
    assert got.chat.peer == carol.jid
    time.sleep(0.3)
    assert all(c.chat.body != "forged down" for c in bob.chats())
    assert not carol.disconnected.is_set()


def test_dollar_subscriptions_are_refused(pb, tern, phones):
    carol = phones("carol", "carol-evil")
    carol.connect()
    codes = carol.subscribe(["$share/g/#", "$SYS/#"])
    assert all(c.is_failure for c in codes), f"SUBACK {codes}"
    codes = carol.subscribe(["u"])
    assert all(c.is_failure for c in codes), f"subscribing to u must be refused: {codes}"


def test_plain_topics_are_private_to_the_user(pb, tern, phones):
    alice_a = phones("alice", "alice-a")
    alice_b = phones("alice", "alice-b")
    carol = phones("carol", "carol-c")
    for p in (alice_a, alice_b, carol):
        p.connect()
    alice_b.subscribe(["sensors/#"])
    carol.subscribe(["sensors/#"])
    alice_a.publish("sensors/temp", b"21.5", qos=0)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if any(t == "sensors/temp" for t, _, _ in alice_b.messages):
            break
        time.sleep(0.05)
    assert any(
        t == "sensors/temp" and p == b"21.5" for t, p, _ in alice_b.messages
    ), f"alice's other device did not get her plain topic: {alice_b.messages}"
    # and the other way round: carol's topic of the same name stays hers
    carol.publish("sensors/temp", b"carol-plain", qos=0)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if any(p == b"carol-plain" for _, p, _ in carol.messages):
            break
        time.sleep(0.05)
    time.sleep(0.3)
    assert {p for t, p, _ in carol.messages if t.startswith("sensors")} == {b"carol-plain"}
    assert not any(p == b"carol-plain" for _, p, _ in alice_b.messages), "carol reached alice"
    assert not any(p == b"21.5" for _, p, _ in carol.messages), "alice reached carol"


def test_mqtt5_publish_on_d_gets_puback_0x87(pb, tern, phones):
    carol = phones("carol", "carol-v5", protocol=MQTTv5)
    carol.connect()
    info = carol.publish("d", b"\x0a\x01x", qos=1)
    carol.wait_error(pb.Error.NOT_ALLOWED)
    rc = carol.pubacks.get(info.mid)
    assert rc is not None and rc.value == 0x87, f"PUBACK reason {rc}"


# --------------------------------------------------------------------------
# the process contract scripts rely on
# --------------------------------------------------------------------------


def test_stdout_is_only_the_ready_line(tern):
    time.sleep(0.2)
    text = tern.stdout_path.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tern ready "), (
        f"stdout should hold only the ready line; got {len(lines)} lines, e.g. {lines[:3]}"
    )


def test_user_added_while_running_can_log_in(pb, tern, phones):
    """`tern user add` talks to the running daemon over its admin socket."""
    tern.add_user("dave", "dave-secret-4")
    dave = phones("dave", "dave-phone")
    dave.connect()
    alice = phones("alice", "alice-phone")
    alice.connect()
    alice.chat(tern.jid("dave"), "welcome dave")
    assert dave.wait_chat("welcome dave").chat.peer == alice.jid
