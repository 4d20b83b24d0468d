//! The server-to-server state machines of RFC 6120 (STARTTLS) and XEP-0220 (dialback), sans-IO.
