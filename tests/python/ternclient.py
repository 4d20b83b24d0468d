"""A tern phone client on top of paho-mqtt, for the end-to-end tests.

It speaks docs/PROTOCOL.md as a third party would: `Up` on `u`, `Down` on `d`,
no SUBSCRIBE for `d`. Every wait is bounded by WAIT seconds.
"""

from __future__ import annotations

import contextlib
import itertools
import ssl
import threading
import time

import paho.mqtt.client as mqtt

WAIT = 10.0
# CONNACK on loopback takes milliseconds; do not burn the full WAIT on it.
CONNACK_WAIT = 5.0

MQTTv311 = mqtt.MQTTv311
MQTTv5 = mqtt.MQTTv5

_ids = itertools.count(1)


def new_id(prefix: str = "m") -> str:
    return f"{prefix}{next(_ids)}"


class Phone:
    """One paho client acting as one device of one user."""

    def __init__(
        self,
        pb,
        server,
        user: str,
        device: str,
        *,
        password: str | None = None,
        protocol=MQTTv311,
        transport: str = "tcp",
        clean: bool = True,
        keepalive: int = 30,
    ):
        self.pb = pb
        self.server = server
        self.user = user
        self.device = device
        self.protocol = protocol
        self.transport = transport
        self.clean = clean
        self.keepalive = keepalive
        self.jid = f"{server.jid(user)}/{device}"

        kwargs = {}
        if protocol != MQTTv5:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=device,
            protocol=protocol,
            transport="websockets" if transport == "ws" else "tcp",
            **kwargs,
        )
        self.client.username_pw_set(user, server.passwords[user] if password is None else password)
        if transport == "tls":
            self.client.tls_set(ca_certs=str(server.cert), cert_reqs=ssl.CERT_REQUIRED)
        if transport == "ws":
            self.client.ws_set_options(path="/mqtt")
        # Never let paho retry on its own for long: tests decide what to do.
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)

        self._cond = threading.Condition()
        self.messages: list[tuple[str, bytes, int]] = []  # (topic, payload, qos)
        self._taken: set[int] = set()
        self.connack = None  # (reason_code, session_present)
        self._connack_event = threading.Event()
        self.disconnected = threading.Event()
        self.subacks: dict[int, list] = {}
        self.pubacks: dict[int, object] = {}
        self.last_qos = None  # QoS of the PUBLISH that wait_down returned last

        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish

    # -- paho callbacks ---------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = (reason_code, bool(flags.session_present))
        self._connack_event.set()

    def _on_message(self, client, userdata, msg):
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), msg.qos))
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self.subacks[mid] = list(reason_codes)
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._cond:
            self.pubacks[mid] = reason_code
            self._cond.notify_all()

    # -- connection -------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return {"tcp": self.server.tcp, "tls": self.server.tls, "ws": self.server.ws}[self.transport]

    def connect(self, expect_ok: bool = True):
        """Connect and wait for CONNACK; returns (reason_code, session_present)."""
        self._connack_event.clear()
        self.disconnected.clear()
        host, port = self.address
        kwargs = {}
        if self.protocol == MQTTv5:
            kwargs["clean_start"] = self.clean
        self.client.connect(host, port, keepalive=self.keepalive, **kwargs)
        self.client.loop_start()
        if not self._connack_event.wait(CONNACK_WAIT):
            self.close()
            raise AssertionError(f"{self.jid}: no CONNACK within {CONNACK_WAIT}s")
        reason, _ = self.connack
        if expect_ok:
            assert not reason.is_failure, f"{self.jid}: CONNACK refused: {reason}"
        else:
            # A refused client must not sit in paho's reconnect loop.
            self.close()
        return self.connack

    def close(self) -> None:
        """Clean DISCONNECT, then stop paho's network thread."""
        try:
            self.client.disconnect()
        except Exception:
            pass
        self.client.loop_stop()

    # -- sending ----------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 1):
        info = self.client.publish(topic, payload, qos=qos)
        if qos > 0:
            info.wait_for_publish(timeout=WAIT)
            assert info.is_published(), f"{self.jid}: no PUBACK for {topic!r} within {WAIT}s"
        return info

    def send(self, up, qos: int = 1):
        return self.publish("u", up.SerializeToString(), qos=qos)

    def chat(self, peer: str, body: str, msg_id: str | None = None, qos: int = 1) -> str:
        up = self.pb.Up(id=msg_id or new_id())
        up.chat.peer = peer
        up.chat.body = body
        self.send(up, qos=qos)
        return up.id

    # -- peer refs (docs/PROTOCOL.md "Peer refs") --------------------------

    def hello(self, peer_refs: bool = True, roster_ver: int = 0, qos: int = 1, numeric_ids: bool = False) -> None:
        """Up{hello}: session options for this connection. At QoS 1 its PUBACK says the server
        has read it; at QoS 0 nothing answers it."""
        up = self.pb.Up()
        up.hello.peer_refs, up.hello.roster_ver = peer_refs, roster_ver
        up.hello.numeric_ids = numeric_ids
        self.send(up, qos=qos)

    def roster_set(self, jid: str, name: str = ""):
        """Up{roster_set}; returns the roster push that lists `jid` (it carries its peer_ref)."""
        up = self.pb.Up(id=new_id("rs"))
        up.roster_set.jid, up.roster_set.name = jid, name
        self.send(up)
        return self.wait_down(
            lambda d: d.WhichOneof("body") == "roster" and any(i.jid == jid for i in d.roster.items),
            f"roster push for {jid}",
        )

    # -- group chat (XEP-0045) --------------------------------------------

    def join_room(self, room: str, nick: str, history: int = 0, password: str = "") -> str:
        """Up{room_join}; returns its id (a refusal comes back as Down{id, error})."""
        up = self.pb.Up(id=new_id("j"))
        up.room_join.room, up.room_join.nick = room, nick
        up.room_join.history, up.room_join.password = history, password
        self.send(up)
        return up.id

    def leave_room(self, room: str, status: str = "") -> str:
        up = self.pb.Up(id=new_id("l"))
        up.room_leave.room, up.room_leave.status = room, status
        self.send(up)
        return up.id

    def groupchat(self, room: str, body: str, msg_id: str | None = None) -> str:
        up = self.pb.Up(id=msg_id or new_id("g"))
        up.chat.peer, up.chat.body, up.chat.type = room, body, self.pb.GROUPCHAT
        self.send(up)
        return up.id

    def wait_occupant(self, room: str, nick: str | None = None, timeout: float = WAIT, *, left: bool = False, me: bool | None = None):
        """The next Occupant of `room` (with `nick`) that joined/changed, or left when `left`."""
        gone = self.pb.Presence.UNAVAILABLE
        return self.wait_down(
            lambda d: d.WhichOneof("body") == "occupant"
            and d.occupant.room == room
            and (nick is None or d.occupant.nick == nick)
            and (d.occupant.show == gone) == left
            and (me is None or d.occupant.is_self == me),
            f"occupant {room}/{nick} left={left} self={me}",
            timeout,
        )

    def wait_subject(self, room: str, subject: str, timeout: float = WAIT):
        return self.wait_down(
            lambda d: d.WhichOneof("body") == "subject" and d.subject.room == room and d.subject.subject == subject,
            f"subject {subject!r} of {room}",
            timeout,
        )

    def subscribe(self, topics: list[str]) -> list:
        """SUBSCRIBE at QoS 0 to each topic; returns the SUBACK reason codes."""
        result, mid = self.client.subscribe([(t, 0) for t in topics])
        assert result == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {result}"
        with self._cond:
            ok = self._cond.wait_for(lambda: mid in self.subacks, WAIT)
            assert ok, f"{self.jid}: no SUBACK within {WAIT}s"
            return self.subacks[mid]

    # -- receiving --------------------------------------------------------

    def downs(self) -> list:
        """Every Down received so far on `d` (parsed)."""
        with self._cond:
            msgs = list(self.messages)
        return [self.pb.Down.FromString(p) for t, p, _ in msgs if t == "d"]

    def wait_down(self, pred, what: str, timeout: float = WAIT):
        """The first not yet taken Down on `d` for which pred holds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, (topic, payload, _) in enumerate(self.messages):
                    if i in self._taken or topic != "d":
                        continue
                    down = self.pb.Down.FromString(payload)
                    if pred(down):
                        self._taken.add(i)
                        self.last_qos = self.messages[i][2]
                        return down
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{self.jid}: no Down with {what} within {timeout}s; "
                        f"got {[str(d).replace(chr(10), ' ') for d in self.downs()]}"
                    )
                self._cond.wait(left)

    def wait_chat(self, body: str, timeout: float = WAIT):
        return self.wait_down(
            lambda d: d.WhichOneof("body") == "chat" and d.chat.body == body,
            f"chat body {body!r}",
            timeout,
        )

    def wait_error(self, code: int, timeout: float = WAIT):
        name = self.pb.Error.Code.Name(code)
        return self.wait_down(
            lambda d: d.WhichOneof("body") == "error" and d.error.code == code,
            f"error {name}",
            timeout,
        )

    def chats(self) -> list:
        return [d for d in self.downs() if d.WhichOneof("body") == "chat"]


@contextlib.contextmanager
def phone_factory(pb, server, connect: bool = False):
    """Yields make(user, device, server=None, **kw) -> Phone on `server` (or the one given),
    connected at once when `connect`; every Phone made is closed at the end."""
    made: list[Phone] = []

    def make(user: str, device: str, server=None, **kw) -> Phone:
        p = Phone(pb, server or default, user, device, **kw)
        made.append(p)
        if connect:
            p.connect()
        return p

    default = server
    try:
        yield make
    finally:
        for p in made:
            p.close()
