//! Session tokens: HMAC-signed, self-describing, so a reconnecting phone costs one HMAC instead of an Argon2 run or a database write.
//!
//! Format: `"t1." + base64url_nopad(expires_u64_be || mac[..16])` where
//! `mac = HMAC-SHA256(key, "t1\0" || user || "\0" || device || "\0" || generation_u64_be || expires_u64_be)`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Version tag; a future format gets a new prefix so old and new tokens are told apart without guessing.
const PREFIX: &str = "t1.";
/// The MAC input's domain tag; distinct from [`CMP_DOMAIN`] so the two HMAC uses of one key never collide.
const MAC_DOMAIN: &[u8] = b"t1\0";
/// Domain tag for the blinded comparison in [`TokenKey::verify`].
const CMP_DOMAIN: &[u8] = b"t1cmp\0";
/// 128 bits is plenty for a MAC under a server-held secret: an attacker cannot test guesses
/// offline, only by connecting, so forging takes ~2^127 network round trips; birthday bounds
/// do not apply because collisions among the attacker's own guesses are worthless. Truncating
/// HMAC this way is allowed by RFC 2104 §5 and NIST SP 800-107 and keeps the token short
/// enough for phone keychains and MQTT password fields.
const MAC_LEN: usize = 16;
const BODY_LEN: usize = 8 + MAC_LEN;
/// base64url without padding of 24 bytes is exactly 32 characters, with no spare bits.
const ENCODED_BODY_LEN: usize = BODY_LEN / 3 * 4;
// With spare bits, two encodings could decode to one body; keep the body a multiple of 3.
const _: () = assert!(ENCODED_BODY_LEN * 3 == BODY_LEN * 4);
const TOKEN_LEN: usize = PREFIX.len() + ENCODED_BODY_LEN;

/// The server's secret for minting and checking session tokens.
pub struct TokenKey {
    key: hmac::Key,
}

impl TokenKey {
    /// A key from stored secret bytes (32 bytes expected, any length accepted by HMAC).
    pub fn from_secret(secret: &[u8]) -> TokenKey {
        TokenKey { key: hmac::Key::new(hmac::HMAC_SHA256, secret) }
    }

    /// Fresh random 32-byte secret from ring's SystemRandom.
    pub fn generate_secret() -> [u8; 32] {
        let mut secret = [0u8; 32];
        // Invariant: SystemRandom only fails when the OS has no entropy source at all
        // (no getrandom and no /dev/urandom); no server can run safely there, so stop.
        SystemRandom::new().fill(&mut secret).expect("the OS random number generator is unavailable");
        secret
    }

    /// Mints a token for (user, device, generation) that expires at `expires_unix` (seconds).
    pub fn issue(&self, user: &str, device: &str, generation: u64, expires_unix: u64) -> String {
        let mac = self.mac(user, device, generation, expires_unix);
        let mut body = [0u8; BODY_LEN];
        body[..8].copy_from_slice(&expires_unix.to_be_bytes());
        body[8..].copy_from_slice(&mac);
        let mut token = String::with_capacity(TOKEN_LEN);
        token.push_str(PREFIX);
        URL_SAFE_NO_PAD.encode_string(body, &mut token);
        token
    }

    /// Checks a token; `now_unix` is passed in (sans-IO: no clock reads here).
    pub fn verify(
        &self,
        token: &str,
        user: &str,
        device: &str,
        generation: u64,
        now_unix: u64,
    ) -> Result<(), TokenError> {
        let (expires_unix, presented) = parse(token)?;
        // NUL separates fields in the MAC input, so a NUL inside a name could make two
        // (user, device) pairs share a MAC. MQTT 3.1.1 §1.5.3 forbids U+0000 in strings,
        // so no honest client sends one; refusing here closes the ambiguity outright.
        if user.contains('\0') || device.contains('\0') {
            return Err(TokenError::BadMac);
        }
        let expected = self.mac(user, device, generation, expires_unix);
        // ring's constant-time `hmac::verify` only takes a full-length tag, so compare the
        // truncated MACs by blinding: both sides go through HMAC again and ring compares
        // those in constant time. Equal inputs give equal blinded tags; nothing about where
        // a forged MAC differs leaks through timing.
        let blinded = hmac::sign(&self.key, &cmp_input(&expected));
        hmac::verify(&self.key, &cmp_input(&presented), blinded.as_ref()).map_err(|_| TokenError::BadMac)?;
        // Expiry is checked after the MAC so `Expired` always means a genuine token that
        // aged out: the client should fall back to its password, not treat it as an attack.
        if now_unix >= expires_unix {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    fn mac(&self, user: &str, device: &str, generation: u64, expires_unix: u64) -> [u8; MAC_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(MAC_DOMAIN);
        ctx.update(user.as_bytes());
        ctx.update(b"\0");
        ctx.update(device.as_bytes());
        ctx.update(b"\0");
        ctx.update(&generation.to_be_bytes());
        ctx.update(&expires_unix.to_be_bytes());
        let tag = ctx.sign();
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
        mac
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, even in debug logs.
        f.write_str("TokenKey(..)")
    }
}

/// True when `s` has the token shape (prefix and length), so the caller can skip the password hash.
pub fn looks_like_token(s: &str) -> bool {
    s.len() == TOKEN_LEN
        && s.starts_with(PREFIX)
        && s.as_bytes()[PREFIX.len()..].iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a `t1.` token of the right length and encoding.
    #[error("session token is malformed")]
    Malformed,
    /// Genuine, but past its expiry time.
    #[error("session token has expired")]
    Expired,
    /// Not minted by this server for this user, device and password generation.
    #[error("session token is not valid for this user and device")]
    BadMac,
}

/// Splits a token into its expiry and MAC; the length check comes first so hostile
/// input never reaches the decoder at more than token size.
fn parse(token: &str) -> Result<(u64, [u8; MAC_LEN]), TokenError> {
    if token.len() != TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let body = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
    let mut raw = [0u8; BODY_LEN];
    let n = URL_SAFE_NO_PAD.decode_slice(body, &mut raw).map_err(|_| TokenError::Malformed)?;
    if n != BODY_LEN {
        return Err(TokenError::Malformed);
    }
    let mut expires = [0u8; 8];
    expires.copy_from_slice(&raw[..8]);
    let mut mac = [0u8; MAC_LEN];
    mac.copy_from_slice(&raw[8..]);
    Ok((u64::from_be_bytes(expires), mac))
}

fn cmp_input(mac: &[u8; MAC_LEN]) -> [u8; CMP_DOMAIN.len() + MAC_LEN] {
    let mut input = [0u8; CMP_DOMAIN.len() + MAC_LEN];
    input[..CMP_DOMAIN.len()].copy_from_slice(CMP_DOMAIN);
    input[CMP_DOMAIN.len()..].copy_from_slice(mac);
    input
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000;

    fn key() -> TokenKey {
        TokenKey::from_secret(&[7u8; 32])
    }

    #[test]
    fn round_trip() {
        let k = key();
        let t = k.issue("alice", "phone-1", 3, NOW + 3600);
        assert_eq!(t.len(), TOKEN_LEN);
        assert!(t.starts_with("t1."));
        assert!(looks_like_token(&t));
        assert_eq!(k.verify(&t, "alice", "phone-1", 3, NOW), Ok(()));
        assert_eq!(k.verify(&t, "alice", "phone-1", 3, NOW + 3599), Ok(()));
    }

    #[test]
    fn issue_is_deterministic() {
        let k = key();
        assert_eq!(k.issue("a", "d", 1, 99), k.issue("a", "d", 1, 99));
    }

    #[test]
    fn wrong_binding_is_bad_mac() {
        let k = key();
        let t = k.issue("alice", "phone-1", 3, NOW + 3600);
        assert_eq!(k.verify(&t, "bob", "phone-1", 3, NOW), Err(TokenError::BadMac));
        assert_eq!(k.verify(&t, "alice", "phone-2", 3, NOW), Err(TokenError::BadMac));
        assert_eq!(k.verify(&t, "alice", "phone-1", 4, NOW), Err(TokenError::BadMac));
        assert_eq!(k.verify(&t, "alice", "phone-1", 2, NOW), Err(TokenError::BadMac));
        // Moving bytes between the fields must not keep the MAC valid.
        assert_eq!(k.verify(&t, "alicep", "hone-1", 3, NOW), Err(TokenError::BadMac));
    }

    #[test]
    fn other_key_is_bad_mac() {
        let t = key().issue("alice", "phone-1", 3, NOW + 3600);
        let other = TokenKey::from_secret(&TokenKey::generate_secret());
        assert_eq!(other.verify(&t, "alice", "phone-1", 3, NOW), Err(TokenError::BadMac));
    }

    #[test]
    fn tampered_expiry_is_bad_mac() {
        let k = key();
        let t = k.issue("alice", "phone-1", 3, NOW + 10);
        let (_, mac) = parse(&t).unwrap();
        let mut body = [0u8; BODY_LEN];
        body[..8].copy_from_slice(&(NOW + 1_000_000).to_be_bytes());
        body[8..].copy_from_slice(&mac);
        let forged = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(body));
        assert_eq!(k.verify(&forged, "alice", "phone-1", 3, NOW), Err(TokenError::BadMac));
    }

    #[test]
    fn every_flipped_mac_character_is_refused() {
        let k = key();
        let t = k.issue("alice", "phone-1", 3, NOW + 3600);
        for i in PREFIX.len()..t.len() {
            let mut bytes = t.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let s = String::from_utf8(bytes).unwrap();
            // 32 base64 characters carry exactly 24 bytes, so every flip changes the body.
            assert_eq!(k.verify(&s, "alice", "phone-1", 3, NOW), Err(TokenError::BadMac), "{i}");
        }
    }

    #[test]
    fn expired() {
        let k = key();
        let t = k.issue("alice", "phone-1", 3, NOW);
        assert_eq!(k.verify(&t, "alice", "phone-1", 3, NOW), Err(TokenError::Expired));
        assert_eq!(k.verify(&t, "alice", "phone-1", 3, NOW + 1), Err(TokenError::Expired));
        assert_eq!(k.verify(&t, "alice", "phone-1", 3, NOW - 1), Ok(()));
        let t0 = k.issue("alice", "phone-1", 3, 0);
        assert_eq!(k.verify(&t0, "alice", "phone-1", 3, 0), Err(TokenError::Expired));
    }

    #[test]
    fn malformed_inputs() {
        let k = key();
        let good = k.issue("alice", "phone-1", 3, NOW + 3600);
        let body = &good[PREFIX.len()..];
        let cases = [
            String::new(),
            "t1.".to_string(),
            format!("t2.{body}"),
            format!("T1.{body}"),
            format!("t1:{body}"),
            format!("t1.{}", "!".repeat(ENCODED_BODY_LEN)),
            format!("t1.{}=", &body[..ENCODED_BODY_LEN - 1]),
            format!("t1.{}+", &body[..ENCODED_BODY_LEN - 1]),
            format!("t1.{}", &body[..ENCODED_BODY_LEN - 1]),
            format!("{good}A"),
            format!("{good}{good}"),
            good[1..].to_string(),
            format!("t1.{}é", &body[..ENCODED_BODY_LEN - 2]),
        ];
        for c in &cases {
            assert_eq!(k.verify(c, "alice", "phone-1", 3, NOW), Err(TokenError::Malformed), "{c:?}");
        }
    }

    #[test]
    fn nul_in_names_is_refused() {
        let k = key();
        let t = k.issue("a\0b", "c", 1, NOW + 10);
        assert_eq!(k.verify(&t, "a\0b", "c", 1, NOW), Err(TokenError::BadMac));
        assert_eq!(k.verify(&t, "a", "b\0c", 1, NOW), Err(TokenError::BadMac));
    }

    #[test]
    fn looks_like_token_shape() {
        let t = key().issue("u", "d", 0, 1);
        assert!(looks_like_token(&t));
        assert!(!looks_like_token(""));
        assert!(!looks_like_token("hunter2"));
        assert!(!looks_like_token(&t[..t.len() - 1]));
        assert!(!looks_like_token(&format!("{t}x")));
        assert!(!looks_like_token(&format!("t2.{}", &t[3..])));
        assert!(!looks_like_token(&format!("t1.{}", "/".repeat(32))));
        // Multi-byte characters whose byte length matches must not panic or match.
        assert!(!looks_like_token(&format!("t1.{}", "é".repeat(16))));
    }

    #[test]
    fn generate_secret_is_random() {
        assert_ne!(TokenKey::generate_secret(), TokenKey::generate_secret());
    }

    #[test]
    fn debug_hides_key() {
        assert_eq!(format!("{:?}", key()), "TokenKey(..)");
    }

    #[test]
    fn random_token_shaped_strings_never_verify() {
        // Strings with the right shape reach the decoder and the MAC check, unlike
        // arbitrary strings, so this exercises the deeper paths.
        let k = key();
        let rng = SystemRandom::new();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/.!";
        for _ in 0..2000 {
            let mut raw = [0u8; ENCODED_BODY_LEN];
            rng.fill(&mut raw).unwrap();
            let body: String = raw.iter().map(|b| alphabet[*b as usize % alphabet.len()] as char).collect();
            let s = format!("t1.{body}");
            let r = k.verify(&s, "alice", "phone-1", 3, NOW);
            assert!(r == Err(TokenError::Malformed) || r == Err(TokenError::BadMac), "{r:?}");
            if looks_like_token(&s) {
                assert_eq!(r, Err(TokenError::BadMac));
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in any::<String>(), user in "[a-z]{0,8}", gen in any::<u64>(), now in any::<u64>()) {
            let k = key();
            let _ = looks_like_token(&s);
            prop_assert!(k.verify(&s, &user, "d", gen, now).is_err());
        }

        #[test]
        fn token_shaped_strings_never_panic(body in "[A-Za-z0-9_=+/-]{30,34}", now in any::<u64>()) {
            let s = format!("t1.{body}");
            prop_assert!(key().verify(&s, "u", "d", 0, now).is_err());
        }

        #[test]
        fn round_trips_for_any_binding(user in "\\PC{0,20}", device in "\\PC{0,20}", gen in any::<u64>(), exp in 1u64..) {
            let k = key();
            let t = k.issue(&user, &device, gen, exp);
            prop_assert!(looks_like_token(&t));
            let ok = !user.contains('\0') && !device.contains('\0');
            prop_assert_eq!(k.verify(&t, &user, &device, gen, exp - 1).is_ok(), ok);
            prop_assert_eq!(k.verify(&t, &user, &device, gen.wrapping_add(1), exp - 1), Err(TokenError::BadMac));
        }
    }
}
