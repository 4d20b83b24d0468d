//! Character-level XML rules for RFC 6120 streams: names, references, escaping.
//!
//! Entity decoding is done here rather than by quick-xml so that exactly the five predefined
//! entities and character references are accepted (RFC 6120 §11.1), and so an undeclared
//! entity is reported as `restricted-xml` instead of a generic error.

use super::StreamError;

/// Whether `c` is a `Char` of XML 1.0 §2.2; anything else may not appear even as a reference.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// XML whitespace (`S` of XML 1.0 §2.3).
pub(crate) fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// `NameStartChar` of XML 1.0 (fifth edition) §2.3, minus `:` because we only handle NCNames.
fn is_name_start(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}'
        | '\u{F8}'..='\u{2FF}' | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}'
        | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}'
        | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}'
        | '\u{10000}'..='\u{EFFFF}')
}

/// `NameChar` of XML 1.0 (fifth edition) §2.3, minus `:`.
fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// Whether `s` is an `NCName` (Namespaces in XML 1.0 §3): a name without a colon.
pub(crate) fn is_ncname(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
}

/// Whether `s` is a `QName`: `NCName` or `NCName:NCName`.
pub(crate) fn is_qname(s: &str) -> bool {
    match s.split_once(':') {
        Some((prefix, local)) => is_ncname(prefix) && is_ncname(local),
        None => is_ncname(s),
    }
}

/// Decodes character data (text between tags): references resolved, line ends normalised
/// (XML 1.0 §2.11), and `]]>` rejected as §2.4 requires.
pub(crate) fn decode_text(raw: &str, out: &mut String) -> Result<(), StreamError> {
    if raw.contains("]]>") {
        return Err(StreamError::NotWellFormed);
    }
    decode(raw, out, false)
}

/// Decodes an attribute value: references resolved and literal whitespace normalised to
/// spaces (XML 1.0 §3.3.3, CDATA-typed since there is no DTD). A literal `<` is forbidden.
pub(crate) fn decode_attr(raw: &str) -> Result<String, StreamError> {
    let mut out = String::with_capacity(raw.len());
    decode(raw, &mut out, true)?;
    Ok(out)
}

/// Shared decoder for text and attribute values.
fn decode(raw: &str, out: &mut String, attr: bool) -> Result<(), StreamError> {
    let mut rest = raw;
    loop {
        let i = rest.find(['&', '\r', '<', '\t', '\n']).unwrap_or(rest.len());
        let (plain, tail) = rest.split_at(i);
        check_chars(plain)?;
        out.push_str(plain);
        let mut chars = tail.chars();
        match chars.next() {
            None => return Ok(()),
            Some('&') => {
                let end = tail.find(';').ok_or(StreamError::NotWellFormed)?;
                out.push(decode_reference(&tail[1..end])?);
                rest = &tail[end + 1..];
            }
            Some('<') if attr => return Err(StreamError::NotWellFormed),
            Some('\r') => {
                // "\r\n" and a lone "\r" both become one line end before anything else looks at
                // the text; in an attribute that line end then becomes a space.
                out.push(if attr { ' ' } else { '\n' });
                rest = tail.strip_prefix("\r\n").unwrap_or(&tail[1..]);
            }
            Some(c @ ('\t' | '\n')) => {
                out.push(if attr { ' ' } else { c });
                rest = &tail[1..];
            }
            Some(c) => {
                // '<' in text cannot reach here (the framer ends text at '<'), but keep it
                // literal rather than assume.
                out.push(c);
                rest = chars.as_str();
            }
        }
    }
}

/// Rejects characters XML 1.0 does not allow in a document at all (controls, U+FFFE/U+FFFF).
pub(crate) fn check_chars(s: &str) -> Result<(), StreamError> {
    // Every byte below 0x80 other than controls is fine, so only scan chars when needed.
    if s.bytes().all(|b| (0x20..0x7F).contains(&b)) || s.chars().all(is_xml_char) {
        Ok(())
    } else {
        Err(StreamError::NotWellFormed)
    }
}

/// Resolves the inside of `&...;`: a predefined entity or a character reference.
fn decode_reference(name: &str) -> Result<char, StreamError> {
    let code = match name {
        "lt" => return Ok('<'),
        "gt" => return Ok('>'),
        "amp" => return Ok('&'),
        "apos" => return Ok('\''),
        "quot" => return Ok('"'),
        _ => match name.strip_prefix('#') {
            Some(num) => match num.strip_prefix('x') {
                Some(hex) => parse_code(hex, 16),
                None => parse_code(num, 10),
            },
            // A syntactically valid name means the peer relies on a declared entity, which is
            // exactly what XMPP forbids; anything else is just broken XML.
            None if is_ncname(name) => return Err(StreamError::RestrictedXml),
            None => return Err(StreamError::NotWellFormed),
        },
    };
    code.and_then(char::from_u32).filter(|&c| is_xml_char(c)).ok_or(StreamError::NotWellFormed)
}

/// Parses the digits of a character reference, refusing signs and absurd lengths.
fn parse_code(digits: &str, radix: u32) -> Option<u32> {
    // from_str_radix accepts a leading '+', which XML does not; 8 digits bound the value.
    if digits.is_empty() || digits.len() > 8 || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

/// Appends `s` as character data: `&`, `<`, `>` and `\r` escaped (the last so it survives
/// line-end normalisation). Characters XML cannot carry at all become U+FFFD, so application
/// text (say, a bridged MQTT payload) can never make the stream ill-formed.
pub(crate) fn escape_text(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c if is_xml_char(c) => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
}

/// Appends `s` as an attribute value for either quote style; tab and line ends are written as
/// references because a parser would otherwise normalise them to spaces.
pub(crate) fn escape_attr(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if is_xml_char(c) => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
}
