//! Simulated users' identities and Sign-In with Ethereum, exactly as a wallet would do it:
//! a random secp256k1 key, an EIP-4361 message naming the node's domain, uri, chain and nonce,
//! and an EIP-191 (`personal_sign`) signature `0x` + r + s + v with v = 27/28.

use super::error::BenchError;
use crate::address::Address;
use k256::ecdsa::SigningKey;
use sha3::{Digest, Keccak256};
use time::OffsetDateTime;

/// One simulated user's key and address.
pub struct Identity {
    key: SigningKey,
    pub address: Address,
}

impl Identity {
    /// A fresh random key.
    pub fn random() -> Identity {
        Identity::from_key(SigningKey::random(&mut rand::rngs::OsRng))
    }

    pub fn from_key(key: SigningKey) -> Identity {
        let address = address_of(&key);
        Identity { key, address }
    }

    /// The EIP-55 checksummed address, as it goes into SIWE messages and REST bodies.
    pub fn checksummed(&self) -> String {
        self.address.to_checksum()
    }

    /// Signs an EIP-4361 message; returns the exact text to send (the canonical serialisation
    /// of what was parsed, which the node requires) and the signature.
    pub fn sign_siwe(&self, text: &str) -> Result<(String, String), BenchError> {
        let message: siwe::Message = text
            .parse()
            .map_err(|e| BenchError::Protocol(format!("cannot build a SIWE message: {e}")))?;
        let canonical = message.to_string();
        let prehash = message
            .eip191_hash()
            .map_err(|e| BenchError::Protocol(format!("cannot hash the SIWE message: {e}")))?;
        let (sig, recid) = self
            .key
            .sign_prehash_recoverable(&prehash)
            .map_err(|e| BenchError::Protocol(format!("signing failed: {e}")))?;
        let mut bytes = sig.to_bytes().to_vec();
        bytes.push(recid.to_byte() + 27);
        Ok((canonical, format!("0x{}", hex::encode(bytes))))
    }
}

/// The Ethereum address of a key: the last 20 bytes of keccak256(uncompressed public key).
pub fn address_of(key: &SigningKey) -> Address {
    let point = key.verifying_key().to_encoded_point(false);
    let hash = Keccak256::digest(&point.as_bytes()[1..]);
    let mut bytes = [0u8; 20];
    bytes.copy_from_slice(&hash[12..]);
    Address::from_bytes(bytes)
}

/// What `GET /api/v1/auth/nonce` tells the client to put in its message.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct NonceGrant {
    pub nonce: String,
    pub domain: String,
    pub uri: String,
    pub chain_id: u64,
}

/// The EIP-4361 text for `who`, valid for ten minutes from `now` (whole seconds, UTC).
pub fn siwe_text(grant: &NonceGrant, who: &Identity, now: OffsetDateTime) -> String {
    let now = now.replace_nanosecond(0).unwrap_or(now).to_offset(time::UtcOffset::UTC);
    let fmt = |t: OffsetDateTime| crate::model::fmt_time(t);
    format!(
        "{domain} wants you to sign in with your Ethereum account:\n{address}\n\nSign in to CoolChat (bench)\n\nURI: {uri}\nVersion: 1\nChain ID: {chain}\nNonce: {nonce}\nIssued At: {issued}\nExpiration Time: {expires}",
        domain = grant.domain,
        address = who.checksummed(),
        uri = grant.uri,
        chain = grant.chain_id,
        nonce = grant.nonce,
        issued = fmt(now),
        expires = fmt(now + time::Duration::minutes(10)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::siwe::{SiweExpectations, verify};
    use std::time::Duration;

    #[test]
    fn the_node_accepts_what_we_sign() {
        let who = Identity::from_key(SigningKey::from_slice(&[7u8; 32]).expect("a valid test key"));
        let grant = NonceGrant {
            nonce: "abcdEFGH12345678".into(),
            domain: "127.0.0.1:8080".into(),
            uri: "http://127.0.0.1:8080".into(),
            chain_id: 1,
        };
        let now = OffsetDateTime::now_utc();
        let text = siwe_text(&grant, &who, now);
        let (canonical, sig) = who.sign_siwe(&text).expect("signs");
        assert_eq!(canonical, text, "our text is already canonical");
        let expect = SiweExpectations {
            domain: "127.0.0.1:8080",
            uri_origin: "http://127.0.0.1:8080",
            allowed_chain_ids: &[1],
            issued_at_skew: Some(Duration::from_secs(300)),
            max_message_bytes: 4096,
        };
        let v = verify(&canonical, &sig, &expect, now).expect("the node's own check passes");
        assert_eq!(v.address, who.address);
        assert_eq!(v.nonce, "abcdEFGH12345678");
    }

    #[test]
    fn random_identities_differ() {
        let a = Identity::random();
        let b = Identity::random();
        assert_ne!(a.address, b.address);
        assert!(a.checksummed().starts_with("0x"));
        assert_eq!(a.checksummed().len(), 42);
    }
}
