//! Password hashing with Argon2id, stored as PHC strings (`$argon2id$v=19$m=...`).

use argon2::password_hash::{self, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use ring::rand::{SecureRandom, SystemRandom};

/// 16 bytes is the PHC/Argon2 recommendation: enough that salts never repeat across users.
const SALT_LEN: usize = 16;

/// Hashes `password` with Argon2id and a fresh random salt; returns the PHC string to store.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    // The salt comes from ring rather than `password_hash::rand_core::OsRng`: OsRng needs
    // rand_core's `getrandom` feature, which argon2's default features do not turn on, and
    // ring reports an entropy failure as an error instead of panicking.
    let mut salt = [0u8; SALT_LEN];
    SystemRandom::new().fill(&mut salt).map_err(|_| PasswordError::Rng)?;
    let salt = SaltString::encode_b64(&salt).map_err(PasswordError::Hash)?;
    // Argon2::default() is Argon2id v19 with m=19456 KiB, t=2, p=1 (the OWASP baseline).
    let hash = Argon2::default().hash_password(password.as_bytes(), &salt).map_err(PasswordError::Hash)?;
    Ok(hash.to_string())
}

/// True when `password` matches the stored PHC string. Constant-time compare; a malformed PHC string is a mismatch (logged at warn without the hash).
pub fn verify_password(phc: &str, password: &str) -> bool {
    let parsed = match PasswordHash::new(phc) {
        Ok(parsed) => parsed,
        Err(e) => {
            tracing::warn!(error = %e, "stored password hash is malformed; treating as mismatch");
            return false;
        }
    };
    // The cost parameters come from the stored string, so hashes made under older
    // defaults keep verifying after the defaults change. The output comparison inside
    // password_hash is constant-time.
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => true,
        Err(password_hash::Error::Password) => false,
        Err(e) => {
            tracing::warn!(error = %e, "stored password hash is unusable; treating as mismatch");
            false
        }
    }
}

/// Why hashing failed.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The system random number generator failed to produce a salt.
    #[error("system random number generator failed while making a salt")]
    Rng,
    /// Argon2 refused the input or parameters.
    #[error("argon2 hashing failed: {0}")]
    Hash(password_hash::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_password(&phc, "correct horse"));
        assert!(!verify_password(&phc, "correct horsf"));
        assert!(!verify_password(&phc, ""));
    }

    #[test]
    fn salts_differ() {
        let a = hash_password("same").unwrap();
        let b = hash_password("same").unwrap();
        assert_ne!(a, b);
        assert!(verify_password(&a, "same"));
        assert!(verify_password(&b, "same"));
    }

    #[test]
    fn empty_and_unicode_passwords() {
        let phc = hash_password("").unwrap();
        assert!(verify_password(&phc, ""));
        assert!(!verify_password(&phc, " "));
        let phc = hash_password("pässwörd🔑").unwrap();
        assert!(verify_password(&phc, "pässwörd🔑"));
        assert!(!verify_password(&phc, "passwörd🔑"));
    }

    #[test]
    fn malformed_phc_is_mismatch() {
        for bad in [
            "",
            "plaintext",
            "$argon2id$",
            "$argon2id$v=19$m=19456,t=2,p=1$",
            "$unknown$v=1$c2FsdHNhbHQ$aGFzaA",
            "$argon2id$v=19$m=19456,t=2,p=1$!!!$???",
        ] {
            assert!(!verify_password(bad, "anything"), "{bad:?}");
        }
    }

    #[test]
    fn truncated_hash_is_mismatch() {
        let phc = hash_password("pw").unwrap();
        let cut = &phc[..phc.len() - 4];
        assert!(!verify_password(cut, "pw"));
    }

    #[test]
    fn verifies_other_argon2_params() {
        // A hash made with cheaper params (as an older tern might have) must still verify.
        let params = argon2::Params::new(4096, 1, 1, None).unwrap();
        let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let phc = argon.hash_password(b"old", &salt).unwrap().to_string();
        assert!(verify_password(&phc, "old"));
        assert!(!verify_password(&phc, "new"));
    }
}
