//! How secrets are stored, and checked.
//!
//! Every secret Cradle issues is 256 random bits. A slow password hash protects guessable
//! passwords from an offline search; against 2^256 candidates it adds nothing, but it made
//! every device CONNECT cost ~50 ms of CPU and 19 MiB, so a fleet reconnecting after a
//! restart (the verified-secret cache is in memory) took minutes per ten thousand devices.
//! New secrets are stored as a salted BLAKE2b-512 digest (`$cradle-b2$<salt>$<digest>`, hex),
//! the practice of API-token stores; a check costs about a microsecond. Hashes stored before
//! (argon2id PHC strings) are still verified with argon2, on the blocking pool through the
//! verification gate.

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
use blake2::{Blake2b512, Digest};
use rand_core::{OsRng, RngCore};

use crate::ids::{hex, random_hex};

/// Prefix of the salted BLAKE2b-512 format.
const FAST: &str = "$cradle-b2$";
/// Salt bytes of the fast format.
const SALT: usize = 16;

fn digest(salt: &[u8], secret: &str) -> [u8; 64] {
    let mut h = Blake2b512::new();
    h.update(salt);
    h.update(secret.as_bytes());
    h.finalize().into()
}

/// The stored form of a new secret.
pub fn hash(secret: &str) -> String {
    let mut salt = [0u8; SALT];
    OsRng.fill_bytes(&mut salt);
    format!("{FAST}{}${}", hex(&salt), hex(&digest(&salt, secret)))
}

/// Whether checking against `stored` runs argon2 (a hash stored before the fast format).
pub(crate) fn is_slow(stored: &str) -> bool {
    !stored.starts_with(FAST)
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether `secret` is the one `stored` was made from (constant time in the digest).
pub fn verify(secret: &str, stored: &str) -> bool {
    match stored.strip_prefix(FAST) {
        Some(rest) => {
            let Some((salt, want)) = rest.split_once('$') else {
                return false;
            };
            match (unhex(salt), unhex(want)) {
                (Some(salt), Some(want)) => constant_time_eq(&digest(&salt, secret), &want),
                _ => false,
            }
        }
        None => PasswordHash::new(stored)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(secret.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false),
    }
}

/// A stored hash of a random secret nobody knows, made once: a check against no
/// credential costs what a check against one costs.
pub(crate) fn dummy() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash(&random_hex(32)))
}

/// Compares without an early exit on the first differing byte.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, SaltString};

    #[test]
    fn a_fast_hash_verifies_its_secret_and_nothing_else() {
        let stored = hash("s3cret");
        assert!(stored.starts_with(FAST));
        assert!(!is_slow(&stored));
        assert!(verify("s3cret", &stored));
        assert!(!verify("s3cret ", &stored));
        assert!(!verify("", &stored));
        // Salted: the same secret stores differently.
        assert_ne!(stored, hash("s3cret"));
    }

    #[test]
    fn an_argon2_hash_stored_before_still_verifies() {
        let salt = SaltString::generate(&mut OsRng);
        let stored = Argon2::default()
            .hash_password(b"old", &salt)
            .unwrap()
            .to_string();
        assert!(is_slow(&stored));
        assert!(verify("old", &stored));
        assert!(!verify("new", &stored));
    }

    #[test]
    fn damaged_hashes_never_verify() {
        for stored in [
            "",
            "$cradle-b2$",
            "$cradle-b2$zz$00",
            "$cradle-b2$00$0",
            "garbage",
        ] {
            assert!(!verify("", stored), "{stored}");
        }
    }

    #[test]
    fn digests_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
