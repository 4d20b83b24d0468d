"""Federation with certificate authentication (XEP-0178, RFC 6125) against a real Prosody.

The test makes its own CA and certificates for tern.test and xmpp.test. With both signed by
it and trusted on both sides, the servers authenticate each other with SASL EXTERNAL in both
directions and dialback never runs; against a Prosody with a self-signed certificate, tern
falls back to dialback when `dialback_fallback = true` and refuses the peer when it is false.

tern listens for s2s on port 5269 of a loopback address of its own (127.0.1.x), which
Prosody's hosts file maps tern.test to; tern reaches xmpp.test through a fixed route.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from ternclient import phone_factory
from xmpp.prosody import _port_open, make_ca, make_signed_cert
from xmpp.ternproc import TernProc, start_tern

TERN_DOMAIN = "tern.test"
PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-2", "carol": "carol-secret-3"}
XMPP_USERS = {"bob": "bob-xmpp-2"}
# Two streams are set up before the first stanza moves, each maybe with a dialback callback.
FED_WAIT = 20.0


@dataclass
class Pki:
    """A throwaway CA and tern's certificate signed by it."""

    ca_cert: Path
    ca_key: Path
    tern_cert: Path
    tern_key: Path

    def sign(self, cert: Path, key: Path, names: list[str]) -> None:
        make_signed_cert(self.ca_cert, self.ca_key, cert, key, names)


@pytest.fixture
def pki(tmp_path) -> Pki:
    d = tmp_path / "pki"
    d.mkdir()
    p = Pki(d / "ca.crt", d / "ca.key", d / "tern.crt", d / "tern.key")
    make_ca(p.ca_cert, p.ca_key)
    p.sign(p.tern_cert, p.tern_key, [TERN_DOMAIN])
    return p


def _tern_ip() -> str:
    """A loopback address whose port 5269 is free, outside the Prosody pool (127.0.0.x)."""
    for n in range(2, 64):
        ip = f"127.0.1.{n}"
        if not _port_open(ip, 5269, timeout=0.2):
            return ip
    raise RuntimeError("no free 127.0.1.x:5269 for tern")


@pytest.fixture
def start_federation(prosody_factory, user_template, tmp_path, pki):
    """start(fallback=, prosody_signed=, **ProsodyServer kwargs) -> (tern, prosody).

    prosody_signed: Prosody gets a certificate from the test CA and trusts that CA;
    otherwise it keeps the rig's self-signed one (which tern's ca_file does not cover).
    """
    terns: list[TernProc] = []

    def start(*, fallback: bool, prosody_signed: bool, **prosody_kw):
        ip = _tern_ip()
        if prosody_signed:
            prosody_kw["cafile"] = pki.ca_cert
        prosody = prosody_factory(
            "xmpp.test", users=XMPP_USERS, hosts={TERN_DOMAIN: ip}, start=False, **prosody_kw
        )
        if prosody_signed:
            pki.sign(prosody.cert_path, prosody.key_path, [prosody.domain, f"*.{prosody.domain}"])
        prosody.start()

        def config(data_dir: Path) -> str:
            return (
                f'domain = "{TERN_DOMAIN}"\n'
                f'data_dir = "{data_dir}"\n'
                "[tls]\n"
                f'cert = "{pki.tern_cert}"\n'
                f'key = "{pki.tern_key}"\n'
                "[mqtt]\n"
                'tcp = "127.0.0.1:0"\ntls = "off"\nws = "off"\n'
                "[metrics]\n"
                'listen = "off"\n'
                "[s2s]\n"
                f'listen = "{ip}:5269"\n'
                'tls = "required"\n'
                f'ca_file = "{pki.ca_cert}"\n'
                f"dialback_fallback = {'true' if fallback else 'false'}\n"
                # A refused peer's stanzas bounce once they have waited this long.
                "send_timeout_secs = 3\n"
                "[s2s.routes]\n"
                f'"xmpp.test" = "{prosody.s2s[0]}:{prosody.s2s[1]}"\n'
            )

        proc, addrs, log_path, data_dir = start_tern(tmp_path, user_template, config)
        tern = TernProc(data_dir, proc, addrs["tcp"], log_path, TERN_DOMAIN, dict(PASSWORDS))
        terns.append(tern)
        return tern, prosody

    yield start
    for tern in terns:
        tern.stop()


@pytest.fixture
def phone(pb):
    """make(tern, user, device) -> connected Phone; closed at teardown."""
    with phone_factory(pb, None, connect=True) as make:
        yield lambda tern, user="alice", device="phone1": make(user, device, server=tern)


def _auth_lines(tern: TernProc, method: str) -> tuple[list[str], list[str]]:
    """tern's log lines saying how each direction with xmpp.test authenticated."""
    lines = tern.log().splitlines()
    out = [l for l in lines if "s2s outbound stream ready" in l and 'peer="xmpp.test"' in l]
    inb = [l for l in lines if "s2s inbound peer authenticated" in l and 'peer="xmpp.test"' in l]
    return [l for l in out if re.search(rf"\b{method}\b", l)], [l for l in inb if re.search(rf"\b{method}\b", l)]


def _chat_both_ways(tern, prosody, phone, xmpp_client) -> None:
    bob = xmpp_client(prosody, "bob")
    alice = phone(tern)
    alice.chat("bob@xmpp.test", "hello over certificates")
    got = bob.wait_message(body="hello over certificates", timeout=FED_WAIT)
    assert got.from_ == "alice@tern.test/phone1"
    bob.send_chat("alice@tern.test", "and back", receipt=False)
    down = alice.wait_chat("and back", timeout=FED_WAIT)
    assert down.chat.peer == bob.jid


def test_ca_signed_certificates_authenticate_with_sasl_external_both_ways(
    start_federation, phone, xmpp_client
):
    # Certificates only on both sides: dialback would be refused by either.
    tern, prosody = start_federation(fallback=False, prosody_signed=True, s2s_secure_auth=True)
    _chat_both_ways(tern, prosody, phone, xmpp_client)
    out, inb = _auth_lines(tern, "SaslExternal")
    assert out, f"tern → xmpp.test did not use EXTERNAL:\n{tern.log_tail(40)}"
    assert inb, f"xmpp.test → tern did not use EXTERNAL:\n{tern.log_tail(40)}"
    assert "Dialback" not in tern.log()
    # Prosody's view: it accepted our EXTERNAL, and its own succeeded with us.
    assert prosody.log_lines("Accepting SASL EXTERNAL identity from tern.test"), prosody.log_tail(60)
    assert prosody.log_lines("SASL EXTERNAL with tern.test succeeded"), prosody.log_tail(60)
    assert prosody.errors() == []


def test_self_signed_prosody_falls_back_to_dialback(start_federation, phone, xmpp_client):
    tern, prosody = start_federation(fallback=True, prosody_signed=False)
    _chat_both_ways(tern, prosody, phone, xmpp_client)
    out, inb = _auth_lines(tern, "Dialback")
    assert out and inb, tern.log_tail(40)
    assert "SaslExternal" not in tern.log()


def test_self_signed_prosody_without_fallback_is_refused_both_ways(start_federation, phone, xmpp_client, pb):
    tern, prosody = start_federation(fallback=False, prosody_signed=False)
    alice = phone(tern)
    mid = alice.chat("bob@xmpp.test", "nobody may carry this")
    err = alice.wait_error(pb.Error.REMOTE_SERVER_NOT_FOUND, timeout=FED_WAIT)
    assert err.id == mid
    assert "Certificate(Untrusted" in tern.log(), tern.log_tail(40)

    # Prosody's stream to tern gets no way to authenticate: its message comes back to bob.
    bob = xmpp_client(prosody, "bob")
    back = bob.send_chat("alice@tern.test", "let me in", receipt=False)
    bounced = bob.wait_error(from_="alice@tern.test", timeout=FED_WAIT)
    assert bounced.id == back
    assert "failure=Sent(PolicyViolation)" in tern.log(), tern.log_tail(40)
    assert not [d for d in alice.chats() if d.chat.body == "let me in"]
