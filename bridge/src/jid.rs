//! XMPP addresses per RFC 7622: `[localpart@]domainpart[/resourcepart]`.
//!
//! All normalisation happens once, when a [`Jid`] is built, so equality,
//! hashing and ordering are plain comparisons of the canonical string and
//! nothing downstream has to remember to normalise.
//!
//! The rules approximate PRECIS (RFC 8264/8265) and IDNA2008 (RFC 5891) with
//! only the Unicode knowledge `std` ships, because the project takes no
//! PRECIS/stringprep dependency. What that leaves out:
//! - NFC: `std` has no normalisation tables, so a decomposed "e\u{301}" and a
//!   precomposed "é" are different JIDs. Clients send NFC in practice.
//! - Width and compatibility mapping: instead of mapping fullwidth "ａ" to "a"
//!   we reject the Halfwidth and Fullwidth Forms block outright, so we never
//!   accept a look-alike that a conforming server would fold onto another JID.
//! - Unassigned code points, bidi and contextual (CONTEXTJ/CONTEXTO) rules,
//!   and Punycode validation of `xn--` labels.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

#[cfg(test)]
mod tests;

/// Longest any one part may be, in bytes after normalisation (RFC 7622 §3.1).
const MAX_PART_LEN: usize = 1023;
/// Longest a domain label may be, in bytes (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// An XMPP address (RFC 7622): `[local@]domain[/resource]`, normalised at parse time.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jid {
    // `full` comes first so the derived `Ord` sorts by canonical string. The
    // offsets are a function of `full` (neither local nor domain may contain
    // '@' or '/'), so the derives never see two equal strings with different
    // offsets.
    full: String,
    // u16 keeps a Jid at 32 bytes; see `offset` for why it cannot overflow.
    at: Option<u16>,
    slash: Option<u16>,
}

/// Why a string is not a valid JID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JidError {
    /// There is an '@' with nothing before it.
    #[error("localpart is empty (nothing before '@')")]
    EmptyLocal,
    /// The domainpart is missing or is only the root dot.
    #[error("domainpart is empty")]
    EmptyDomain,
    /// There is a '/' with nothing after it.
    #[error("resourcepart is empty (nothing after '/')")]
    EmptyResource,
    /// The localpart exceeds 1023 bytes after normalisation.
    #[error("localpart is {0} bytes after normalisation; at most 1023 are allowed")]
    LocalTooLong(usize),
    /// The domainpart exceeds 1023 bytes after normalisation.
    #[error("domainpart is {0} bytes after normalisation; at most 1023 are allowed")]
    DomainTooLong(usize),
    /// The resourcepart exceeds 1023 bytes.
    #[error("resourcepart is {0} bytes; at most 1023 are allowed")]
    ResourceTooLong(usize),
    /// The localpart contains a character RFC 7622 §3.3.1 or PRECIS forbids.
    #[error("localpart contains forbidden character {0:?}")]
    LocalForbiddenChar(char),
    /// The domainpart contains a character not allowed in a hostname or IDN.
    #[error("domainpart contains forbidden character {0:?}")]
    DomainForbiddenChar(char),
    /// The resourcepart contains a control character.
    #[error("resourcepart contains control character {0:?}")]
    ResourceForbiddenChar(char),
    /// The domainpart has an empty label (e.g. `a..b` or a leading dot).
    #[error("domainpart has an empty label")]
    DomainEmptyLabel,
    /// A domain label exceeds 63 bytes.
    #[error("domain label is {0} bytes; at most 63 are allowed")]
    DomainLabelTooLong(usize),
    /// A domain label starts or ends with '-'.
    #[error("domain label starts or ends with '-'")]
    DomainLabelHyphen,
    /// The domainpart ends in a numeric label but is not a dotted-quad IPv4 address.
    #[error("domainpart looks like an IPv4 address but is not a valid one")]
    InvalidIpv4,
    /// The domainpart starts with '[' but is not a bracketed IPv6 address.
    #[error("domainpart is not a valid bracketed IPv6 address")]
    InvalidIpv6,
}

impl Jid {
    /// Parses and normalises `[local@]domain[/resource]`.
    pub fn parse(s: &str) -> Result<Jid, JidError> {
        // RFC 7622 §3.1: the first '/' starts the resource (which may itself
        // contain '/' and '@'); only an '@' before it can end a localpart.
        let (bare, resource) = match s.split_once('/') {
            Some((bare, resource)) => (bare, Some(resource)),
            None => (s, None),
        };
        let (local, domain) = match bare.split_once('@') {
            Some((local, domain)) => (Some(local), domain),
            None => (None, bare),
        };
        Jid::new(local, domain, resource)
    }

    /// Builds a JID from its parts, validating and normalising each one.
    pub fn new(local: Option<&str>, domain: &str, resource: Option<&str>) -> Result<Jid, JidError> {
        // Parts are checked in textual order so that a string with several
        // faults always reports the leftmost one.
        let local = local.map(normalise_local).transpose()?;
        let domain = normalise_domain(domain)?;
        let resource = resource.map(check_resource).transpose()?;
        Ok(assemble(local.as_deref(), &domain, resource))
    }

    /// The normalised localpart, if any.
    pub fn local(&self) -> Option<&str> {
        self.at.map(|at| &self.full[..usize::from(at)])
    }

    /// The normalised domainpart.
    pub fn domain(&self) -> &str {
        let start = self.at.map_or(0, |at| usize::from(at) + 1);
        &self.full[start..self.bare_end()]
    }

    /// The resourcepart, if any, with its case preserved.
    pub fn resource(&self) -> Option<&str> {
        self.slash.map(|slash| &self.full[usize::from(slash) + 1..])
    }

    /// True when the JID has no resourcepart.
    pub fn is_bare(&self) -> bool {
        self.slash.is_none()
    }

    /// The same JID without its resourcepart.
    pub fn to_bare(&self) -> Jid {
        Jid { full: self.full[..self.bare_end()].to_owned(), at: self.at, slash: None }
    }

    /// The same bare JID with `resource` as its resourcepart.
    pub fn with_resource(&self, resource: &str) -> Result<Jid, JidError> {
        let resource = check_resource(resource)?;
        Ok(assemble(self.local(), self.domain(), Some(resource)))
    }

    /// `local@domain`, or just `domain` when there is no localpart.
    pub fn bare_str(&self) -> String {
        self.full[..self.bare_end()].to_owned()
    }

    fn bare_end(&self) -> usize {
        self.slash.map_or(self.full.len(), usize::from)
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` rather than `write_str` so width/alignment flags work in logs.
        f.pad(&self.full)
    }
}

impl fmt::Debug for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Jid({:?})", self.full)
    }
}

impl FromStr for Jid {
    type Err = JidError;

    fn from_str(s: &str) -> Result<Jid, JidError> {
        Jid::parse(s)
    }
}

/// Joins parts that have already been validated and normalised.
fn assemble(local: Option<&str>, domain: &str, resource: Option<&str>) -> Jid {
    let len = local.map_or(0, |l| l.len() + 1) + domain.len() + resource.map_or(0, |r| r.len() + 1);
    let mut full = String::with_capacity(len);
    let at = local.map(|local| {
        full.push_str(local);
        let at = offset(full.len());
        full.push('@');
        at
    });
    full.push_str(domain);
    let slash = resource.map(|resource| {
        let slash = offset(full.len());
        full.push('/');
        full.push_str(resource);
        slash
    });
    Jid { full, at, slash }
}

fn offset(n: usize) -> u16 {
    // Every part is at most MAX_PART_LEN bytes, so an offset into a Jid is at
    // most 2 * 1023 + 1, far below u16::MAX; the assert documents that.
    debug_assert!(n <= 2 * MAX_PART_LEN + 1);
    n as u16
}

fn normalise_local(s: &str) -> Result<String, JidError> {
    if s.is_empty() {
        return Err(JidError::EmptyLocal);
    }
    let out = lowercase(s);
    if let Some(c) = out.chars().find(|&c| !local_char_ok(c)) {
        return Err(JidError::LocalForbiddenChar(c));
    }
    // Lowercasing can grow a string ('Ⱥ' is 2 bytes, 'ⱥ' is 3), so the limit
    // applies to what we store, not to what we were given.
    if out.len() > MAX_PART_LEN {
        return Err(JidError::LocalTooLong(out.len()));
    }
    Ok(out)
}

fn normalise_domain(s: &str) -> Result<String, JidError> {
    // RFC 7622 §3.2: one trailing dot is the DNS root, not part of the name,
    // so "example.com." and "example.com" must be the same JID.
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() {
        return Err(JidError::EmptyDomain);
    }
    let out = if let Some(inner) = s.strip_prefix('[') {
        let addr: Ipv6Addr =
            inner.strip_suffix(']').and_then(|a| a.parse().ok()).ok_or(JidError::InvalidIpv6)?;
        // Re-render in RFC 5952 form so every spelling of one address is one JID.
        format!("[{addr}]")
    } else {
        normalise_hostname(s)?
    };
    if out.len() > MAX_PART_LEN {
        return Err(JidError::DomainTooLong(out.len()));
    }
    Ok(out)
}

fn normalise_hostname(s: &str) -> Result<String, JidError> {
    let out = lowercase(s);
    if let Some(c) = out.chars().find(|&c| !domain_char_ok(c)) {
        return Err(JidError::DomainForbiddenChar(c));
    }
    for label in out.split('.') {
        if label.is_empty() {
            return Err(JidError::DomainEmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(JidError::DomainLabelTooLong(label.len()));
        }
        // RFC 5891 §4.2.3.1 / RFC 1123: hyphens only inside a label.
        if label.starts_with('-') || label.ends_with('-') {
            return Err(JidError::DomainLabelHyphen);
        }
    }
    // WHATWG URL's "ends in a number" rule: no TLD is all digits, so a numeric
    // last label means the user meant an IPv4 address ("10.0.0.256" is a typo,
    // not a host). std's parser is strict dotted-quad, so what it accepts
    // already renders back identically.
    let last = out.rsplit('.').next().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit()) && out.parse::<Ipv4Addr>().is_err() {
        return Err(JidError::InvalidIpv4);
    }
    Ok(out)
}

fn check_resource(s: &str) -> Result<&str, JidError> {
    if s.is_empty() {
        return Err(JidError::EmptyResource);
    }
    // FreeformClass (RFC 7622 §3.4) keeps case and allows spaces, symbols and
    // punctuation, including '@' and '/'; controls are what it rules out.
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(JidError::ResourceForbiddenChar(c));
    }
    if s.len() > MAX_PART_LEN {
        return Err(JidError::ResourceTooLong(s.len()));
    }
    Ok(s)
}

/// Unicode lowercasing applied one char at a time.
///
/// `str::to_lowercase` applies the final-sigma rule, which makes the result
/// for one character depend on its neighbours; the per-char mapping is
/// context-free and idempotent (checked exhaustively in the tests), which is
/// what round-tripping through `Display` needs.
fn lowercase(s: &str) -> String {
    s.chars().flat_map(char::to_lowercase).collect()
}

/// IdentifierClass approximation (RFC 7622 §3.3.1, RFC 8264 §4.2).
fn local_char_ok(c: char) -> bool {
    !(matches!(c, '"' | '&' | '\'' | '/' | ':' | '<' | '>' | '@')
        || c.is_whitespace()
        || c.is_control()
        || is_invisible(c)
        || is_width_variant(c))
}

/// Characters allowed in a hostname or an IDNA2008 U-label (approximately).
fn domain_char_ok(c: char) -> bool {
    let ascii_punct = c.is_ascii_punctuation() && c != '-' && c != '.';
    // IDNA treats these as label separators; keeping them inside a label would
    // give one domain two spellings, and mapping them to '.' needs UTS 46.
    let ideographic_dot = matches!(c, '\u{3002}' | '\u{FF0E}' | '\u{FF61}');
    !(ascii_punct
        || ideographic_dot
        || c.is_whitespace()
        || c.is_control()
        || is_invisible(c)
        || is_width_variant(c))
}

/// Default_Ignorable_Code_Point (Unicode 15) plus noncharacters.
///
/// PRECIS disallows both because they render as nothing, which is how one
/// address impersonates another. std has no table for them, hence the list.
fn is_invisible(c: char) -> bool {
    let cp = u32::from(c);
    matches!(
        cp,
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFF8
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
            | 0xFDD0..=0xFDEF
    ) || cp & 0xFFFE == 0xFFFE
}

/// The Halfwidth and Fullwidth Forms block.
///
/// PRECIS width-maps these onto ASCII/Katakana before comparing; without the
/// tables to do that we refuse them, so "ａｌｉｃｅ" can never be a second
/// account that looks like "alice".
fn is_width_variant(c: char) -> bool {
    matches!(c, '\u{FF01}'..='\u{FFEE}')
}
