"""A test rig around a real Prosody (Debian `prosody`, 0.12) and slixmpp clients.

Import as `from xmpp.prosody import ProsodyServer` and
`from xmpp.client import XmppClient` (tests/python is on sys.path).
"""
