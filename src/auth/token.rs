//! Session tokens: 256 random bits, handed to the client once, stored only as a SHA-256 hash.
//!
//! Why hashed: a leaked database (or backup) must not let anyone act as the users in it.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix that makes CoolChat tokens recognisable in logs and secret scanners.
const PREFIX: &str = "cct_";

/// A new random token, as given to the client.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{PREFIX}{}", hex::encode(bytes))
}

/// The storage key of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Cheap shape check before any lookup, so garbage never reaches a backend.
pub fn looks_like_token(token: &str) -> bool {
    token.len() == PREFIX.len() + 64
        && token.starts_with(PREFIX)
        && token[PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// A new SIWE nonce: 24 alphanumerics (the protocol promises at least 16).
pub fn new_nonce() -> String {
    use rand::Rng;
    rand::rngs::OsRng
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_well_formed() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(looks_like_token(&a));
        assert!(!looks_like_token("cct_xyz"));
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), hash_token(&b));
        let n = new_nonce();
        assert_eq!(n.len(), 24);
        assert!(n.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
