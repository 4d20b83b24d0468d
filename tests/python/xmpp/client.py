"""A synchronous XMPP test client on top of slixmpp (asyncio).

Every XmppClient lives on one shared asyncio loop that runs in a daemon
thread; the methods here are plain blocking calls, each bounded by a timeout,
so a pytest test reads top to bottom:

    a = XmppClient("alice@xmpp.test", "pw", srv.c2s).connect()
    mid = a.send_chat("bob@xmpp.test", "hi")
    a.wait_receipt(mid)
    a.close()

What arrives (messages, receipts, presence, subscription requests) is kept
in order as `Stanza` records; the wait_* helpers return (and consume) the
first unconsumed one that matches, or raise AssertionError after `timeout`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import slixmpp
from slixmpp import JID
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

WAIT = 10.0
CONNECT_WAIT = 10.0

log = logging.getLogger("xmpp.client")

# ---------------------------------------------------------------------------
# the shared background loop
# ---------------------------------------------------------------------------

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def event_loop() -> asyncio.AbstractEventLoop:
    """The rig's asyncio loop, running forever in a daemon thread."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            started = threading.Event()

            def run():
                asyncio.set_event_loop(loop)
                loop.call_soon(started.set)
                loop.run_forever()

            threading.Thread(target=run, name="xmpp-rig-loop", daemon=True).start()
            if not started.wait(5):
                raise RuntimeError("xmpp rig event loop did not start")
            _loop = loop
        return _loop


def run(coro, timeout: float = WAIT):
    """Run `coro` on the rig loop; wait at most `timeout` s for its result."""
    fut = asyncio.run_coroutine_threadsafe(coro, event_loop())
    try:
        return fut.result(timeout)
    except TimeoutError:
        fut.cancel()
        raise


# ---------------------------------------------------------------------------
# received stanzas
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stanza:
    """A received <message/> or <presence/>, copied out of slixmpp."""

    name: str  # "message" | "presence"
    type: str  # message: chat/normal/groupchat/headline/error;
    #            presence: available/unavailable/subscribe/subscribed/...
    from_: str  # full JID as sent
    to: str
    id: str
    body: str = ""
    receipt: str = ""  # XEP-0184 <received id=.../>: the acked message id
    receipt_requested: bool = False  # XEP-0184 <request/>
    xml: str = ""
    at: float = field(default_factory=time.monotonic)

    @property
    def from_bare(self) -> str:
        return JID(self.from_).bare

    @property
    def nick(self) -> str:
        """The resource of `from` (a MUC occupant's nick)."""
        return JID(self.from_).resource


def _jid_matches(actual: str, wanted: str | None) -> bool:
    """`wanted` bare matches any resource; `wanted` full must match exactly."""
    if wanted is None:
        return True
    w, a = JID(wanted), JID(actual)
    return a.full == w.full if w.resource else a.bare == w.bare


_client_ids = itertools.count(1)


async def _stop_send_loop(x: slixmpp.ClientXMPP) -> None:
    """End slixmpp's outgoing-stanza task (it outlives disconnect() so that a
    reconnect can reuse it; left pending it is reported at exit)."""
    task = getattr(x, "_run_out_filters", None)
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=1)


def _insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Session:
    """What XmppClient and XmppComponent share: the slixmpp object on the rig
    loop, the record of received stanzas, sending, waiting, closing."""

    xmpp: slixmpp.BaseXMPP | None

    def __init__(self) -> None:
        self.xmpp = None
        self.received: list[Stanza] = []
        self._taken: set[int] = set()
        self._cond = threading.Condition()
        self.failures: list[str] = []  # connection failures / stream errors, for messages
        self.plugins: tuple[str, ...] = ()

    def _watch(self, x) -> None:
        """Hook the recording handlers into slixmpp object `x`."""
        ns = x.default_ns
        # Raw stream handlers, not the "message"/"presence" events: slixmpp's
        # MUC plugin sets roster[room].ignore_updates after the first
        # occupant presence, which silences the "presence" event for the room.
        x.register_handler(Callback("rig message", MatchXPath(f"{{{ns}}}message"), self._on_message))
        x.register_handler(Callback("rig presence", MatchXPath(f"{{{ns}}}presence"), self._on_presence))
        x.add_event_handler("connection_failed", lambda e: self.failures.append(f"connection failed: {e}"))
        x.add_event_handler("stream_error", lambda e: self.failures.append(f"stream error: {e}"))
        x.add_event_handler("failed_auth", lambda e: self.failures.append("authentication failed"))

    def _record(self, st: Stanza) -> None:
        with self._cond:
            self.received.append(st)
            self._cond.notify_all()

    def _on_message(self, msg) -> None:
        receipts = "xep_0184" in self.plugins
        self._record(
            Stanza(
                name="message",
                type=msg["type"] or "normal",
                from_=str(msg["from"]),
                to=str(msg["to"]),
                id=msg["id"] or "",
                body=msg["body"] or "",
                receipt=(msg["receipt"] or "") if receipts else "",
                receipt_requested=bool(msg["request_receipt"]) if receipts else False,
                xml=str(msg),
            )
        )

    def _on_presence(self, pres) -> None:
        self._record(
            Stanza(
                name="presence",
                type=pres["type"] or "available",
                from_=str(pres["from"]),
                to=str(pres["to"]),
                id=pres["id"] or "",
                xml=str(pres),
            )
        )

    async def _await_session(self, start_connect: Callable[[], object], timeout: float, who: str) -> None:
        """Call start_connect() on the loop; wait for session_start or a failure."""
        x = self.xmpp
        done: asyncio.Future = asyncio.get_running_loop().create_future()

        def ok(_=None):
            if not done.done():
                done.set_result(True)

        def bad(why):
            if not done.done():
                done.set_exception(AssertionError(f"{who}: {why}"))

        x.add_event_handler("session_start", ok, disposable=True)
        x.add_event_handler("failed_auth", lambda _: bad("authentication failed"), disposable=True)
        x.add_event_handler("stream_error", lambda e: bad(f"stream error: {e}"), disposable=True)
        start_connect()
        try:
            await asyncio.wait_for(done, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"{who}: no session within {timeout}s ({'; '.join(self.failures) or 'no error seen'})"
            ) from None

    def close(self, timeout: float = 3.0) -> None:
        """Send </stream:stream>, wait for the server's; abort after `timeout`."""
        x = self.xmpp
        if x is None:
            return

        async def go():
            x.cancel_connection_attempt()
            if x.transport is not None:
                try:
                    await asyncio.wait_for(x.disconnect(wait=timeout), timeout + 1)
                except (asyncio.TimeoutError, Exception):
                    x.abort()
            await _stop_send_loop(x)

        try:
            run(go(), timeout=timeout + 3)
        except BaseException:
            self.abort()

    def abort(self) -> None:
        """Drop the TCP connection now, and stop any reconnect attempt."""
        x = self.xmpp
        if x is None:
            return

        async def go():
            x.cancel_connection_attempt()
            x.abort()
            await _stop_send_loop(x)

        try:
            run(go(), timeout=3)
        except BaseException:
            pass

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self.xmpp is not None and self.xmpp.transport is not None

    # -- sending ----------------------------------------------------------

    def _send(self, build: Callable) -> str:
        async def go():
            stanza = build(self.xmpp)
            if not stanza["id"]:
                stanza["id"] = self.xmpp.new_id()
            stanza.send()
            return stanza["id"]

        return run(go(), timeout=5)

    def send_chat(
        self, to: str, body: str, *, receipt: bool = True, mtype: str = "chat", mfrom: str | None = None
    ) -> str:
        """Send a chat message (with a XEP-0184 request); returns its id."""

        def build(x):
            m = x.make_message(mto=to, mbody=body, mtype=mtype, mfrom=mfrom)
            m["id"] = x.new_id()
            if receipt:
                m["request_receipt"] = True
            return m

        return self._send(build)

    def send_presence(self, to: str | None = None, ptype: str | None = None, **kw) -> str:
        """Any presence; ptype None = available. kw: pfrom, pstatus, pshow..."""
        return self._send(lambda x: x.make_presence(pto=to, ptype=ptype, **kw))

    def send_raw(self, xml: str) -> None:
        async def go():
            self.xmpp.send_raw(xml)

        run(go(), timeout=5)

    # -- waiting ----------------------------------------------------------

    def wait_for(self, pred: Callable[[Stanza], bool], timeout: float = WAIT, what: str = "a stanza") -> Stanza:
        """The first unconsumed received Stanza with pred(s); consumes it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, st in enumerate(self.received):
                    if i not in self._taken and pred(st):
                        self._taken.add(i)
                        return st
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = "\n  ".join(
                        f"{s.name} type={s.type} from={s.from_} body={s.body!r} receipt={s.receipt!r}"
                        for i, s in enumerate(self.received)
                        if i not in self._taken
                    )
                    raise AssertionError(
                        f"{self.jid}: no {what} within {timeout}s; unconsumed:\n  {seen or '(none)'}"
                    )
                self._cond.wait(left)

    def wait_message(
        self,
        from_: str | None = None,
        body: str | None = None,
        mtype: str | None = None,
        timeout: float = WAIT,
    ) -> Stanza:
        """A message with a body (not groupchat/error unless mtype says so)."""

        def pred(s: Stanza) -> bool:
            if s.name != "message" or not s.body:
                return False
            if mtype is None and s.type in ("groupchat", "error"):
                return False
            if mtype is not None and s.type != mtype:
                return False
            return _jid_matches(s.from_, from_) and (body is None or s.body == body)

        return self.wait_for(pred, timeout, f"message from={from_} body={body!r} type={mtype}")

    def wait_receipt(self, msg_id: str, from_: str | None = None, timeout: float = WAIT) -> Stanza:
        """The XEP-0184 <received id=msg_id/> for a message we sent."""
        return self.wait_for(
            lambda s: s.name == "message" and s.receipt == msg_id and _jid_matches(s.from_, from_),
            timeout,
            f"receipt for {msg_id}",
        )

    def wait_presence(self, from_: str | None = None, ptype: str | None = "available", timeout: float = WAIT) -> Stanza:
        """Presence of type `ptype` (None: any) from `from_` (bare: any resource)."""
        return self.wait_for(
            lambda s: s.name == "presence" and (ptype is None or s.type == ptype) and _jid_matches(s.from_, from_),
            timeout,
            f"presence type={ptype} from={from_}",
        )

    def wait_subscribe(self, from_: str | None = None, timeout: float = WAIT) -> Stanza:
        return self.wait_presence(from_, "subscribe", timeout)

    def wait_subscribed(self, from_: str | None = None, timeout: float = WAIT) -> Stanza:
        return self.wait_presence(from_, "subscribed", timeout)

    def wait_error(self, from_: str | None = None, timeout: float = WAIT) -> Stanza:
        return self.wait_for(
            lambda s: s.type == "error" and _jid_matches(s.from_, from_), timeout, f"error from={from_}"
        )

    def assert_nothing(self, pred: Callable[[Stanza], bool] | None = None, within: float = 1.0) -> None:
        """Nothing (matching pred) unconsumed arrives within `within` s."""
        try:
            st = self.wait_for(pred or (lambda s: True), within, "")
        except AssertionError:
            return
        raise AssertionError(f"{self.jid}: unexpected {st.name} type={st.type} from={st.from_}: {st.xml}")


class XmppClient(_Session):
    """One slixmpp c2s session.

    jid/password   the account (JID may carry a resource)
    address        (host, port) of the c2s port, e.g. ProsodyServer.c2s;
                   always given explicitly, no SRV/DNS lookups
    cafile         verify the server cert against this PEM (and the JID
                   domain); default: accept any cert (the rig's are self-signed)
    initial_presence
                   send available presence after the roster fetch (needed to
                   get messages to the bare JID and subscription requests)
    """

    def __init__(
        self,
        jid: str,
        password: str,
        address: tuple[str, int],
        *,
        resource: str | None = None,
        cafile: str | None = None,
        initial_presence: bool = True,
        plugins: tuple[str, ...] = ("xep_0030", "xep_0045", "xep_0184", "xep_0199"),
    ):
        super().__init__()
        j = JID(jid)
        if resource and not j.resource:
            j = JID(f"{j.bare}/{resource}")
        elif not j.resource:
            j = JID(f"{j.bare}/rig{next(_client_ids)}")
        self.requested_jid = j
        self.password = password
        self.address = (address[0], int(address[1]))
        self.cafile = cafile
        self.initial_presence = initial_presence
        self.plugins = tuple(plugins)

    async def _build(self) -> None:
        x = slixmpp.ClientXMPP(self.requested_jid.full, self.password)
        x.loop = asyncio.get_running_loop()
        if self.cafile:
            ctx = ssl.create_default_context(cafile=str(self.cafile))
        else:
            ctx = _insecure_context()
        x.ssl_context = ctx
        # The address given is a STARTTLS c2s port: no direct TLS attempt
        # first, never plaintext.
        x.enable_direct_tls = False
        x.enable_starttls = True
        x.enable_plaintext = False
        # Subscriptions are the test's business: no auto-approve/subscribe-back.
        x.roster.auto_authorize = None
        x.roster.auto_subscribe = False
        for p in self.plugins:
            x.register_plugin(p)
        if "xep_0184" in self.plugins:
            x.plugin["xep_0184"].auto_ack = True
            x.plugin["xep_0184"].auto_request = False
        self._watch(x)
        self.xmpp = x

    @property
    def jid(self) -> str:
        """The bound full JID (after connect), else the requested one."""
        if self.xmpp is not None and self.xmpp.boundjid.resource:
            return self.xmpp.boundjid.full
        return self.requested_jid.full

    @property
    def bare(self) -> str:
        return self.requested_jid.bare

    def connect(self, timeout: float = CONNECT_WAIT) -> "XmppClient":
        """Connect, STARTTLS, authenticate, bind; fetch the roster and (by
        default) send initial presence. Raises AssertionError on failure."""
        run(self._build(), timeout=5)

        async def go():
            x = self.xmpp
            await self._await_session(lambda: x.connect(*self.address), timeout, str(self.requested_jid))
            await x.get_roster(timeout=timeout)
            if self.initial_presence:
                x.send_presence()

        try:
            run(go(), timeout=timeout + 2)
        except BaseException:
            self.abort()
            raise
        return self

    def send_groupchat(self, room: str, body: str) -> str:
        return self._send(lambda x: x.make_message(mto=room, mbody=body, mtype="groupchat"))

    # -- subscriptions / roster ------------------------------------------

    def subscribe(self, to: str) -> str:
        """<presence type='subscribe'/> to `to` (bare)."""
        return self.send_presence(JID(to).bare, "subscribe")

    def approve(self, to: str) -> str:
        """<presence type='subscribed'/>: accept `to`'s subscription request."""
        return self.send_presence(JID(to).bare, "subscribed")

    def deny(self, to: str) -> str:
        return self.send_presence(JID(to).bare, "unsubscribed")

    def roster_add(self, jid: str, name: str | None = None, timeout: float = WAIT) -> None:
        """Roster set (jabber:iq:roster); waits for the server's result."""

        async def go():
            await self.xmpp.update_roster(JID(jid), name=name, timeout=timeout)

        run(go(), timeout=timeout + 1)

    def roster(self, timeout: float = WAIT) -> dict[str, dict]:
        """Fetch the roster from the server: {bare JID: {subscription, ask, name, groups}}."""

        async def go():
            # Not ClientXMPP.get_roster(): it sends the roster version, and
            # Prosody then answers an unchanged roster with no items.
            iq = self.xmpp.Iq()
            iq["type"] = "get"
            iq.enable("roster")
            iq = await iq.send(timeout=timeout)
            items = iq["roster"]["items"]
            return {
                str(k): {
                    "subscription": v.get("subscription", "none"),
                    "ask": v.get("ask", ""),
                    "name": v.get("name", ""),
                    "groups": list(v.get("groups", [])),
                }
                for k, v in items.items()
            }

        return run(go(), timeout=timeout + 1)

    def wait_subscription(self, jid: str, want: str = "both", timeout: float = WAIT) -> dict:
        """Poll the server roster until `jid`'s subscription is `want`."""
        deadline = time.monotonic() + timeout
        item = None
        while True:
            item = self.roster(timeout=max(1.0, deadline - time.monotonic())).get(JID(jid).bare)
            if item and item["subscription"] == want:
                return item
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.bare}: roster item {jid} is {item}, wanted subscription={want}")
            time.sleep(0.1)

    # -- MUC --------------------------------------------------------------

    def join_muc(self, room: str, nick: str, timeout: float = WAIT):
        """Join (creating if needed) `room` as `nick`; waits for the self-presence."""

        async def go():
            return await self.xmpp.plugin["xep_0045"].join_muc_wait(
                JID(room), nick, maxstanzas=0, timeout=timeout
            )

        return run(go(), timeout=timeout + 1)

    def set_subject(self, room: str, subject: str) -> str:
        """Change the room's subject (XEP-0045 §8.1): a groupchat message with only <subject/>."""

        def build(x):
            m = x.make_message(mto=room, mtype="groupchat")
            m["subject"] = subject
            return m

        return self._send(build)

    def leave_muc(self, room: str, nick: str) -> None:
        async def go():
            self.xmpp.plugin["xep_0045"].leave_muc(JID(room), nick)

        run(go(), timeout=5)

    # -- queries ----------------------------------------------------------

    def disco_info(self, jid: str, timeout: float = WAIT) -> set[str]:
        """XEP-0030 disco#info of `jid`: its feature vars."""

        async def go():
            iq = await self.xmpp.plugin["xep_0030"].get_info(
                jid=JID(jid), local=False, cached=False, timeout=timeout
            )
            return set(iq["disco_info"]["features"])

        return run(go(), timeout=timeout + 1)

    def ping(self, jid: str, timeout: float = WAIT) -> float:
        """XEP-0199 ping; returns the round trip in seconds, raises on error/timeout."""

        async def go():
            return await self.xmpp.plugin["xep_0199"].ping(JID(jid), timeout=timeout)

        return run(go(), timeout=timeout + 1)

    def wait_groupchat(self, room: str, body: str | None = None, nick: str | None = None, timeout: float = WAIT) -> Stanza:
        def pred(s: Stanza) -> bool:
            return (
                s.name == "message"
                and s.type == "groupchat"
                and JID(s.from_).bare == JID(room).bare
                and (nick is None or s.nick == nick)
                and (body is None or s.body == body)
            )

        return self.wait_for(pred, timeout, f"groupchat in {room} nick={nick} body={body!r}")


class XmppComponent(_Session):
    """A XEP-0114 external component (jabber:component:accept) on slixmpp.

    jid      the component's domain, e.g. "tern.xmpp.test"
    secret   its component_secret
    address  (host, port) of the component port, e.g. ProsodyServer.component
    It answers nothing on its own (no disco, no receipts): tests drive it.
    """

    def __init__(self, jid: str, secret: str, address: tuple[str, int]):
        super().__init__()
        self.requested_jid = JID(jid)
        self.secret = secret
        self.address = (address[0], int(address[1]))

    @property
    def jid(self) -> str:
        return self.requested_jid.full

    @property
    def bare(self) -> str:
        return self.requested_jid.bare

    async def _build(self) -> None:
        x = slixmpp.ComponentXMPP(self.requested_jid.full, self.secret, self.address[0], self.address[1])
        x.loop = asyncio.get_running_loop()
        x.enable_direct_tls = False
        x.enable_starttls = False
        x.enable_plaintext = True
        self._watch(x)
        self.xmpp = x

    def connect(self, timeout: float = CONNECT_WAIT) -> "XmppComponent":
        """Connect and complete the <handshake/>; AssertionError on failure."""
        run(self._build(), timeout=5)

        async def go():
            x = self.xmpp
            await self._await_session(lambda: x.connect(*self.address), timeout, self.jid)

        try:
            run(go(), timeout=timeout + 2)
        except BaseException:
            self.abort()
            raise
        return self


def mutual_subscribe(a: XmppClient, b: XmppClient, timeout: float = WAIT) -> None:
    """a and b (both connected, initial presence sent) end with subscription=both.

    Works within one server and across s2s alike: every step waits for the
    stanza to arrive at the other side.
    """
    a.subscribe(b.bare)
    b.wait_subscribe(a.bare, timeout)
    b.approve(a.bare)
    a.wait_subscribed(b.bare, timeout)
    b.subscribe(a.bare)
    a.wait_subscribe(b.bare, timeout)
    a.approve(b.bare)
    b.wait_subscribed(a.bare, timeout)
    a.wait_subscription(b.bare, "both", timeout)
    b.wait_subscription(a.bare, "both", timeout)
