//! Delayed delivery (XEP-0203) and the XEP-0082 date-times it carries.
//!
//! Only UTC date-times are written; reading accepts any offset and fractional seconds, as
//! XEP-0082 §3.2 allows, and converts to milliseconds since the Unix epoch.

use crate::jid::Jid;
use crate::stream::Element;

/// Delayed delivery (XEP-0203).
pub const NS_DELAY: &str = "urn:xmpp:delay";

/// The stamp of the first `<delay xmlns='urn:xmpp:delay'/>` in `payloads`, in ms since the epoch.
///
/// `Ok(None)` when there is no delay element; `Err` with the raw stamp when it does not parse.
pub fn delay_stamp(payloads: &[Element]) -> Result<Option<u64>, String> {
    let Some(delay) = payloads.iter().find(|p| p.is("delay", NS_DELAY)) else { return Ok(None) };
    let stamp = delay.attr("stamp").unwrap_or_default();
    parse_datetime(stamp).map(Some).ok_or_else(|| stamp.to_owned())
}

/// The stamp of the first delay element that `by` added (its `from`, XEP-0203 §3), in ms since
/// the epoch: a group chat room's history is stamped by the room's bare JID (XEP-0045 §7.2.15),
/// and a stamp anyone else added (an occupant, a client) says nothing about when the room had
/// it. `None` when there is none, or when its stamp does not parse.
pub fn delay_stamp_by(payloads: &[Element], by: &Jid) -> Option<u64> {
    let is_by =
        |from: &str| Jid::parse(from).is_ok_and(|j| j.resource().is_none() && j.bare_str() == by.bare_str());
    let delay = payloads.iter().find(|p| p.is("delay", NS_DELAY) && p.attr("from").is_some_and(is_by))?;
    parse_datetime(delay.attr("stamp").unwrap_or_default())
}

/// Parses an XEP-0082 DateTime (`CCYY-MM-DDThh:mm:ss[.sss]TZD`) into ms since the epoch.
/// Dates before 1970 are refused: nothing tern stores is that old.
pub fn parse_datetime(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    // 60 is a leap second (XEP-0082 follows ISO 8601 here).
    if hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        // Only milliseconds are kept; further digits are truncated.
        let ms = &frac[..digits.min(3)];
        millis = ms.parse::<i64>().ok()? * 10i64.pow(3 - ms.len() as u32);
        rest = &frac[digits..];
    }
    let offset_min = match rest.as_bytes() {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let d = |c: u8| i64::from(c - b'0');
            let (h, m) = (d(digits[0]) * 10 + d(digits[1]), d(digits[2]) * 10 + d(digits[3]));
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'+' {
                h * 60 + m
            } else {
                -(h * 60 + m)
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_min * 60;
    u64::try_from(secs * 1000 + millis).ok()
}

/// Formats ms since the epoch as an XEP-0082 DateTime in UTC, with milliseconds when not zero.
pub fn format_datetime(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    match ms % 1000 {
        0 => format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z"),
        frac => format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{frac:03}Z"),
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the well-known era-based formula).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_xep_examples() {
        // XEP-0082 §3.2 and XEP-0203 §4.
        assert_eq!(parse_datetime("1969-07-21T02:56:15Z"), None);
        assert_eq!(parse_datetime("2002-09-10T23:08:25Z"), Some(1_031_699_305_000));
        assert_eq!(parse_datetime("2002-09-10T23:08:25.123Z"), Some(1_031_699_305_123));
        assert_eq!(parse_datetime("2002-09-10T23:08:25.1Z"), Some(1_031_699_305_100));
        assert_eq!(parse_datetime("2002-09-10T23:08:25.123456Z"), Some(1_031_699_305_123));
        assert_eq!(parse_datetime("2002-09-11T01:08:25+02:00"), Some(1_031_699_305_000));
        assert_eq!(parse_datetime("2002-09-10T17:08:25-06:00"), Some(1_031_699_305_000));
        assert_eq!(parse_datetime("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
    }

    #[test]
    fn formats_and_round_trips() {
        assert_eq!(format_datetime(1_031_699_305_000), "2002-09-10T23:08:25Z");
        assert_eq!(format_datetime(1_031_699_305_007), "2002-09-10T23:08:25.007Z");
        assert_eq!(format_datetime(0), "1970-01-01T00:00:00Z");
        for ms in [0, 1, 951_782_400_000, 1_709_164_800_999, 4_102_444_799_000] {
            assert_eq!(parse_datetime(&format_datetime(ms)), Some(ms), "{ms}");
        }
    }

    #[test]
    fn refuses_invalid() {
        for bad in [
            "",
            "2002-09-10",
            "2002-09-10T23:08:25",
            "2002-09-10 23:08:25Z",
            "2002-13-10T23:08:25Z",
            "2023-02-29T00:00:00Z",
            "2002-09-10T24:00:00Z",
            "2002-09-10T23:08:25.Z",
            "2002-09-10T23:08:25+2:00",
            "2002-09-10T23:08:25+02:60",
            "+002-09-10T23:08:25Z",
            "2002-09-10T23:08:25Zjunk",
            "２００２-09-10T23:08:25Z",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn finds_the_delay_element() {
        let delay = Element::new("delay", NS_DELAY).with_attr("stamp", "2002-09-10T23:08:25Z");
        assert_eq!(delay_stamp(&[delay]), Ok(Some(1_031_699_305_000)));
        assert_eq!(delay_stamp(&[Element::new("x", "jabber:x:delay")]), Ok(None));
        let bad = Element::new("delay", NS_DELAY).with_attr("stamp", "yesterday");
        assert_eq!(delay_stamp(&[bad]), Err("yesterday".into()));
    }

    #[test]
    fn trusts_only_the_named_stamper() {
        let room = Jid::parse("lounge@muc.x").unwrap();
        let delay = |from: Option<&str>, stamp: &str| {
            let d = Element::new("delay", NS_DELAY).with_attr("stamp", stamp);
            match from {
                Some(f) => d.with_attr("from", f),
                None => d,
            }
        };
        let ok = delay(Some("lounge@muc.x"), "2002-09-10T23:08:25Z");
        assert_eq!(delay_stamp_by(std::slice::from_ref(&ok), &room), Some(1_031_699_305_000));
        // An occupant's or client's stamp comes first; the room's still counts.
        let forged = delay(Some("lounge@muc.x/mallory"), "9999-12-31T23:59:59Z");
        assert_eq!(delay_stamp_by(&[forged.clone(), ok], &room), Some(1_031_699_305_000));
        assert_eq!(delay_stamp_by(&[forged], &room), None);
        assert_eq!(delay_stamp_by(&[delay(None, "2002-09-10T23:08:25Z")], &room), None);
        assert_eq!(delay_stamp_by(&[delay(Some("other@muc.x"), "2002-09-10T23:08:25Z")], &room), None);
        assert_eq!(delay_stamp_by(&[delay(Some("lounge@muc.x"), "soon")], &room), None);
    }
}
