//! Key layout of the `data` tree: `<kind byte><user>\0<rest>`.
//!
//! User names never contain NUL (see `UserName`), so the prefix of one user can never be the
//! prefix of another's.

use crate::ids::{Seq, UserName};

/// The name of the tree holding inbox entries, dedupe records, cursors and rosters.
pub const DATA: &str = "data";

/// Inbox entry: `i user \0 seq_be`.
pub const INBOX: u8 = b'i';
/// Device cursor: `c user \0 device`.
pub const CURSOR: u8 = b'c';
/// Dedupe record of one id: `m user \0 device \0 msg_id` → when it was seen, ms.
pub const DEDUPE: u8 = b'm';
/// Dedupe runs of a device's numeric ids (see `dedupe_runs`): `d user \0 device`.
pub const DEDUPE_RUNS: u8 = b'd';
/// Roster item: `r user \0 contact_jid`.
pub const ROSTER: u8 = b'r';
/// Roster version: `v user \0`.
pub const ROSTER_VER: u8 = b'v';
/// Roster contact by peer ref: `p user \0 ref_be` → the contact's bare JID.
pub const PEER_REF: u8 = b'p';
/// Last peer ref handed out: `n user \0`. Refs are never handed out twice, even after a
/// contact is removed, so a device's old ref can never name someone else.
pub const LAST_PEER_REF: u8 = b'n';
/// Last inbox sequence number handed out: `s user \0`. Kept apart from the entries so that
/// pruning every entry never lets a number be handed out twice.
pub const LAST_SEQ: u8 = b's';

/// Every kind of per-user key: what deleting an account removes.
pub const PER_USER: [u8; 9] =
    [INBOX, CURSOR, DEDUPE, DEDUPE_RUNS, ROSTER, ROSTER_VER, PEER_REF, LAST_PEER_REF, LAST_SEQ];

/// The prefix shared by all keys of `kind` for `user`.
pub fn prefix(kind: u8, user: &UserName) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.as_str().len() + 10);
    k.push(kind);
    k.extend_from_slice(user.as_str().as_bytes());
    k.push(0);
    k
}

/// A key of `kind` for `user` ending in `rest`.
pub fn key(kind: u8, user: &UserName, rest: &[u8]) -> Vec<u8> {
    let mut k = prefix(kind, user);
    k.extend_from_slice(rest);
    k
}

/// The inbox key of `seq`; big-endian so keys sort by sequence.
pub fn inbox(user: &UserName, seq: Seq) -> Vec<u8> {
    key(INBOX, user, &seq.0.to_be_bytes())
}

/// The sequence number at the end of an inbox key.
pub fn seq_of(key: &[u8]) -> Option<Seq> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(Seq(u64::from_be_bytes(tail)))
}

/// The user name inside any key of the `data` tree.
pub fn user_of(key: &[u8]) -> Option<UserName> {
    let end = key.iter().position(|b| *b == 0)?;
    UserName::parse(std::str::from_utf8(key.get(1..end)?).ok()?).ok()
}
