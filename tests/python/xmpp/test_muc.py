"""Group chat (XEP-0045) end to end: phones on tern in a room of a REAL Prosody.

tern.test federates with xmpp.test; the room service is Prosody's `muc`
component at muc.xmpp.test, reached over the same s2s port. A slixmpp client
(bob@xmpp.test) sits in the same room. tern holds the membership for the
user: phones come and go, tern stays in the room, and what the room says
lands in the user's inbox.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from ternclient import phone_factory
from xmpp.test_component import COMP_WAIT, _wait_log, comp_phones, component  # noqa: F401 (fixtures)
from xmpp.test_federation import FED_WAIT, S2S_ADDR, TERN_DOMAIN, XMPP_USERS, _start_tern
from xmpp.ternproc import tern_binary

ROOM = "lounge@muc.xmpp.test"


@pytest.fixture
def muc(prosody_factory, user_template, tmp_path):
    """(tern, prosody, restart): tern.test ⇄ xmpp.test with muc.xmpp.test.
    restart(while_down) stops tern, calls while_down(), and starts tern again on a
    copy of its data dir."""
    prosody = prosody_factory("xmpp.test", users=XMPP_USERS, hosts={TERN_DOMAIN: S2S_ADDR[0]})
    s2s = f"{prosody.s2s[0]}:{prosody.s2s[1]}"
    routes = {"xmpp.test": s2s, "muc.xmpp.test": s2s}
    state = {"tern": _start_tern(tmp_path, user_template, routes), "n": 0}

    def restart(while_down=lambda: None):
        old = state["tern"]
        old.stop()
        while_down()
        # A socket file cannot be copied; the stopped tern left its admin socket behind.
        (old.data_dir / "admin.sock").unlink(missing_ok=True)
        state["n"] += 1
        # The stopped tern's data dir is the template of the new one: same users, inbox, rooms.
        state["tern"] = _start_tern(tmp_path / f"restart{state['n']}", old.data_dir, routes)
        return state["tern"]

    yield state["tern"], prosody, restart
    state["tern"].stop()


@pytest.fixture
def phones(pb, muc):
    with phone_factory(pb, muc[0], connect=True) as make:
        yield make


def _bob_in_room(xmpp_client, prosody):
    bob = xmpp_client(prosody, "bob")
    bob.join_muc(ROOM, "bob")
    return bob


def _join(alice, pb, nick="Alice", history=0):
    """Joins and returns (join id, own Occupant Down)."""
    jid = alice.join_room(ROOM, nick, history=history)
    own = alice.wait_occupant(ROOM, me=True, timeout=FED_WAIT)
    assert own.id == jid and own.seq > 0
    return jid, own


def test_phone_joins_and_chats_with_a_prosody_client(muc, phones, xmpp_client, pb):
    tern, prosody, _ = muc
    bob = _bob_in_room(xmpp_client, prosody)
    bob.set_subject(ROOM, "Plans for Friday")
    bob.send_groupchat(ROOM, "said before alice came")
    time.sleep(1)  # history stamps have a one-second resolution

    alice = phones("alice", "phone1")
    started = time.time()
    _, own = _join(alice, pb, history=10)
    assert own.occupant.nick == "Alice" and own.occupant.jid == "alice@tern.test/phone1"
    # The room's join burst: the occupants, the history with its stamp, the subject.
    b = alice.wait_occupant(ROOM, "bob", FED_WAIT)
    assert b.seq > 0 and b.occupant.affiliation == pb.Occupant.OWNER  # bob made the room
    hist = alice.wait_chat("said before alice came", FED_WAIT)
    assert hist.chat.type == pb.GROUPCHAT and hist.chat.peer == f"{ROOM}/bob"
    assert 0 < hist.chat.ts <= started * 1000 and hist.seq > 0
    subj = alice.wait_subject(ROOM, "Plans for Friday", FED_WAIT)
    assert subj.seq > 0

    # bob sees alice's occupant presence.
    bob.wait_for(lambda s: s.name == "presence" and s.from_ == f"{ROOM}/Alice", FED_WAIT, "alice joining")

    # Room → phone.
    bob.send_groupchat(ROOM, "welcome alice")
    got = alice.wait_chat("welcome alice", FED_WAIT)
    assert got.chat.peer == f"{ROOM}/bob" and got.chat.type == pb.GROUPCHAT and not got.chat.outgoing

    # Phone → room; the room's reflection is the copy for alice's other device.
    phone2 = phones("alice", "phone2")
    mid = alice.groupchat(ROOM, "thanks bob")
    seen = bob.wait_groupchat(ROOM, "thanks bob", nick="Alice", timeout=FED_WAIT)
    assert seen.id == mid
    copy = phone2.wait_chat("thanks bob", FED_WAIT)
    assert copy.chat.outgoing and copy.chat.peer == f"{ROOM}/Alice" and copy.id == mid
    # A resend with the same id (a lost PUBACK) is not posted twice.
    alice.groupchat(ROOM, "thanks bob", msg_id=mid)
    bob.assert_nothing(lambda s: s.name == "message" and s.body == "thanks bob", within=2)

    # A second device joining gets the room from tern's state: no second occupant.
    jid2 = phone2.join_room(ROOM, "Alice2")
    again = phone2.wait_down(lambda d: d.id == jid2 and d.WhichOneof("body") == "occupant", "join answer", FED_WAIT)
    assert again.occupant.is_self and again.occupant.nick == "Alice" and again.seq == 0
    bob.assert_nothing(lambda s: s.name == "presence" and "Alice2" in s.from_, within=1)

    # Subject changes and occupant show changes reach the phone.
    bob.set_subject(ROOM, "Plans for Saturday")
    alice.wait_subject(ROOM, "Plans for Saturday", FED_WAIT)
    bob.send_presence(to=f"{ROOM}/bob", pshow="away", pstatus="lunch")
    away = alice.wait_occupant(ROOM, "bob", FED_WAIT)
    assert away.occupant.show == pb.Presence.AWAY and away.occupant.status == "lunch" and away.seq == 0

    # The phone's show and status in the room (directed presence), as the one occupant.
    alice.send(pb.Up(id="p1", presence=pb.Presence(peer=ROOM, show=pb.Presence.AWAY, status="on the bus")))
    got = bob.wait_for(
        lambda s: s.name == "presence" and s.from_ == f"{ROOM}/Alice" and "on the bus" in s.xml,
        FED_WAIT,
        "alice away in the room",
    )
    assert "<show>away</show>" in got.xml
    mine = alice.wait_occupant(ROOM, "Alice", FED_WAIT, me=True)
    assert mine.occupant.show == pb.Presence.AWAY and mine.seq == 0

    # bob leaves: stored for the phone.
    bob.leave_muc(ROOM, "bob")
    gone = alice.wait_occupant(ROOM, "bob", FED_WAIT, left=True)
    assert gone.seq > 0
    assert prosody.errors() == []


def test_offline_phone_gets_room_messages_on_sync(muc, phones, xmpp_client, pb):
    tern, prosody, _ = muc
    bob = _bob_in_room(xmpp_client, prosody)
    alice = phones("alice", "phone1")
    _join(alice, pb)
    alice.close()
    # tern stays in the room while no device is online.
    bob.send_groupchat(ROOM, "are you there?")
    bob.assert_nothing(lambda s: s.name == "presence" and s.from_ == f"{ROOM}/Alice" and s.type == "unavailable", 2)
    time.sleep(1)
    alice = phones("alice", "phone1")
    got = alice.wait_chat("are you there?", FED_WAIT)
    assert got.chat.peer == f"{ROOM}/bob" and got.seq > 0


def test_leave_is_seen_by_the_room_and_the_other_devices(muc, phones, xmpp_client, pb):
    tern, prosody, _ = muc
    bob = _bob_in_room(xmpp_client, prosody)
    alice, phone2 = phones("alice", "phone1"), phones("alice", "phone2")
    _join(alice, pb)
    lid = alice.leave_room(ROOM, "bye all")
    bob.wait_for(
        lambda s: s.name == "presence" and s.from_ == f"{ROOM}/Alice" and s.type == "unavailable" and "bye all" in s.xml,
        FED_WAIT,
        "alice leaving",
    )
    left = phone2.wait_occupant(ROOM, "Alice", FED_WAIT, left=True, me=True)
    assert left.id == lid and left.seq > 0
    # Out of the room: no more room messages, and sending is refused.
    bob.send_groupchat(ROOM, "after alice left")
    mid = alice.groupchat(ROOM, "still here?")
    err = alice.wait_error(pb.Error.NOT_ALLOWED, FED_WAIT)
    assert err.id == mid
    time.sleep(1)
    assert not [d for d in alice.chats() if d.chat.body == "after alice left"]


def test_nick_in_use_is_a_conflict(muc, phones, xmpp_client, pb):
    tern, prosody, _ = muc
    _bob_in_room(xmpp_client, prosody)
    alice = phones("alice", "phone1")
    jid = alice.join_room(ROOM, "bob")
    err = alice.wait_error(pb.Error.CONFLICT, FED_WAIT)
    assert err.id == jid and err.seq > 0 and "conflict" in err.error.text
    # The failed join is forgotten: joining with another nick works.
    _join(alice, pb, nick="Alice")


def test_a_room_on_an_unreachable_server_is_not_joined(muc, phones, pb):
    alice = phones("alice", "phone1")
    room = "lounge@muc.nowhere.invalid"
    jid = alice.join_room(room, "Alice")
    err = alice.wait_error(pb.Error.REMOTE_SERVER_NOT_FOUND, FED_WAIT)
    assert err.id == jid and err.seq > 0
    # Forgotten: posting there is refused at once.
    mid = alice.groupchat(room, "hello?")
    assert alice.wait_error(pb.Error.NOT_ALLOWED, FED_WAIT).id == mid


def test_tern_restart_rejoins_the_room(muc, phones, xmpp_client, pb):
    tern, prosody, restart = muc
    bob = _bob_in_room(xmpp_client, prosody)
    bob.set_subject(ROOM, "Plans for Friday")
    alice = phones("alice", "phone1")
    _join(alice, pb)
    alice.wait_subject(ROOM, "Plans for Friday", FED_WAIT)
    bob.send_groupchat(ROOM, "before the restart")
    alice.wait_chat("before the restart", FED_WAIT)
    alice.close()
    # Posted while tern is down: Prosody cannot deliver it (and may drop alice's occupant).
    tern2 = restart(lambda: (bob.send_groupchat(ROOM, "while tern was down"), time.sleep(2)))
    # tern rejoins on its own: bob sees alice's occupant (again), nobody had to connect.
    bob.wait_for(
        lambda s: s.name == "presence" and s.from_ == f"{ROOM}/Alice" and s.type == "available",
        FED_WAIT,
        "alice rejoining",
    )
    bob.send_groupchat(ROOM, "after the restart")
    time.sleep(1)
    before = alice.downs()
    alice = phones("alice", "phone1", server=tern2)
    # The rejoin asked for the history since the last message tern had stored.
    missed = alice.wait_chat("while tern was down", FED_WAIT)
    assert missed.chat.peer == f"{ROOM}/bob" and missed.chat.ts > 0
    alice.wait_chat("after the restart", FED_WAIT)
    # The phone can post again through the rejoined membership.
    alice.groupchat(ROOM, "back again")
    bob.wait_groupchat(ROOM, "back again", nick="Alice", timeout=FED_WAIT)
    # History is asked for a little before the last message stored, and what comes again is
    # recognised by its id: every message is stored once (an entry delivered twice keeps its
    # seq, and the phone drops the repeat).
    stored = {}
    for d in alice.chats():
        stored.setdefault(d.chat.body, set()).add(d.seq)
    assert all(len(seqs) == 1 for seqs in stored.values()), [(d.seq, d.chat.body, d.chat.ts) for d in alice.chats()]
    # The rejoin met bob and the subject again: neither is news, so each is stored once.
    downs = before + alice.downs()
    bob_joins = {d.seq for d in downs if d.WhichOneof("body") == "occupant" and d.occupant.nick == "bob"}
    subjects = {d.seq for d in downs if d.WhichOneof("body") == "subject"}
    assert len(bob_joins) == 1 and len(subjects) == 1, [str(d) for d in downs if d.WhichOneof("body") != "chat"]
    # Nor is our own occupant: one entry, the answer to the join.
    own = {d.seq for d in downs if d.WhichOneof("body") == "occupant" and d.occupant.is_self}
    assert len(own) == 1, own


def _alice_seen_in_room(bob):
    bob.wait_for(
        lambda s: s.name == "presence" and s.from_ == f"{ROOM}/Alice" and s.type == "available",
        FED_WAIT,
        "alice in the room",
    )


def _room_server_killed(prosody, bob, xmpp_client):
    """SIGKILL Prosody (our own child, by PID), start it again; bob makes the room anew."""
    _kill_room_server(prosody, bob)
    return _bob_in_room(xmpp_client, prosody)


def test_room_server_restart_tern_joins_again(muc, phones, xmpp_client, pb):
    """Prosody is killed (a clean stop would save the room with its occupants)
    and bob makes the room again: it does not know alice. A message the phone
    posts then is refused by the room, held until tern has rejoined, and sent;
    a device coming online makes tern check (XEP-0410 self-ping) and rejoin too."""
    tern, prosody, _ = muc
    bob = _bob_in_room(xmpp_client, prosody)
    alice = phones("alice", "phone1")
    _join(alice, pb)

    bob = _room_server_killed(prosody, bob, xmpp_client)
    alice.groupchat(ROOM, "anyone after the restart?")
    _alice_seen_in_room(bob)
    bob.wait_groupchat(ROOM, "anyone after the restart?", nick="Alice", timeout=FED_WAIT)
    bob.send_groupchat(ROOM, "yes, me")
    alice.wait_chat("yes, me", FED_WAIT)

    bob = _room_server_killed(prosody, bob, xmpp_client)
    phones("alice", "phone2")
    _alice_seen_in_room(bob)
    bob.send_groupchat(ROOM, "welcome back")
    alice.wait_chat("welcome back", FED_WAIT)
    assert not [d for d in alice.downs() if d.WhichOneof("body") == "error"]


def _kill_room_server(prosody, bob):
    prosody.proc.kill()
    prosody.proc.wait(timeout=5)
    bob.abort()
    prosody.proc = None
    prosody.start()


def test_a_room_that_vanished_is_not_created_again_by_a_rejoin(muc, phones, xmpp_client, pb):
    """The room server dies while tern is down and nobody makes the room again: tern's
    rejoin would create it (status 201), locked and owned by tern. tern leaves it instead,
    forgets the membership and tells the user's devices."""
    tern, prosody, restart = muc
    bob = _bob_in_room(xmpp_client, prosody)
    alice = phones("alice", "phone1")
    _join(alice, pb)
    alice.close()
    tern2 = restart(lambda: _kill_room_server(prosody, bob))
    alice = phones("alice", "phone1", server=tern2)
    gone = alice.wait_occupant(ROOM, "Alice", FED_WAIT, left=True, me=True)
    assert gone.id == "" and gone.occupant.status == "the room no longer exists" and 201 in gone.occupant.codes
    mid = alice.groupchat(ROOM, "anyone?")
    assert alice.wait_error(pb.Error.NOT_ALLOWED, FED_WAIT).id == mid
    # The room tern briefly made is gone again (a locked room would refuse bob): bob makes it
    # anew.
    _bob_in_room(xmpp_client, prosody)


def test_rooms_per_user_are_bounded(muc, phones, pb):
    """A user is in at most 64 rooms; one more join is refused at once with LIMIT_REACHED,
    and leaving one makes room again."""
    alice = phones("alice", "phone1")
    rooms = [f"r{i}@muc.xmpp.test" for i in range(64)]
    for room in rooms:
        alice.join_room(room, "Alice")
    for room in rooms:
        alice.wait_occupant(room, "Alice", FED_WAIT, me=True)
    jid = alice.join_room("one-more@muc.xmpp.test", "Alice")
    assert alice.wait_error(pb.Error.LIMIT_REACHED, FED_WAIT).id == jid
    # A device's envelopes apply in order: the leave is done before the next join.
    alice.leave_room(rooms[0])
    jid = alice.join_room("one-more@muc.xmpp.test", "Alice")
    assert alice.wait_occupant("one-more@muc.xmpp.test", "Alice", FED_WAIT, me=True).id == jid


def test_deleting_a_user_leaves_its_rooms(muc, phones, xmpp_client, pb):
    """`tern user del` on a running tern: the room sees the user leave at once, and an account
    made again under the same name is in no room."""
    tern, prosody, _ = muc
    bob = _bob_in_room(xmpp_client, prosody)
    alice = phones("alice", "phone1")
    _join(alice, pb)
    _alice_seen_in_room(bob)
    cfg = str(tern.data_dir.parent / "tern.toml")
    run = lambda *args, **kw: subprocess.run(  # noqa: E731
        [str(tern_binary()), "--config", cfg, "user", *args], check=True, capture_output=True, timeout=30, **kw
    )
    run("del", "alice")
    bob.wait_for(
        lambda s: s.name == "presence" and s.from_ == f"{ROOM}/Alice" and s.type == "unavailable",
        FED_WAIT,
        "alice leaving",
    )
    run("add", "alice", "--password-stdin", input=b"again-1\n")
    tern.passwords["alice"] = "again-1"
    again = phones("alice", "phone2")
    mid = again.groupchat(ROOM, "am I in?")
    assert again.wait_error(pb.Error.NOT_ALLOWED, FED_WAIT).id == mid


def test_component_mode_phone_joins_a_room_over_the_component_stream(component, comp_phones, xmpp_client, pb):
    """The same membership when tern is the XEP-0114 component tern.xmpp.test."""
    tern, prosody = component
    _wait_log(tern, "component stream ready")
    bob = _bob_in_room(xmpp_client, prosody)
    alice = comp_phones("alice", "phone1")
    alice.connect()
    jid = alice.join_room(ROOM, "Alice")
    own = alice.wait_occupant(ROOM, me=True, timeout=COMP_WAIT)
    assert own.id == jid and own.occupant.jid == "alice@tern.xmpp.test/phone1"
    mid = alice.groupchat(ROOM, "hello over the component")
    assert bob.wait_groupchat(ROOM, "hello over the component", nick="Alice", timeout=COMP_WAIT).id == mid
    bob.send_groupchat(ROOM, "hello component")
    assert alice.wait_chat("hello component", COMP_WAIT).chat.peer == f"{ROOM}/bob"
