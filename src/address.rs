//! Ethereum addresses: the identity of a CoolChat user.
//!
//! Accepted in any case on input, stored lower-case (so one user is one key everywhere), and
//! rendered EIP-55 checksummed on output, as the v1 protocol requires.

use crate::error::Error;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A 20-byte Ethereum address. Why a newtype: every boundary (REST path, JSON body, SIWE
/// message, admin CLI) parses through [`Address::from_str`], so a malformed address is refused
/// with `invalid_address` in one place and can never reach storage.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address([u8; 20]);

impl Address {
    pub fn from_bytes(bytes: [u8; 20]) -> Self {
        Address(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// `0x` + 40 lower-case hex digits: the storage key.
    pub fn to_lower_hex(&self) -> String {
        format!("0x{}", hex::encode(self.0))
    }

    /// EIP-55 mixed-case checksum form: the output form.
    pub fn to_checksum(&self) -> String {
        siwe::eip55(&self.0)
    }
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let hex_part = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or_else(|| Error::InvalidAddress("must start with 0x".into()))?;
        if hex_part.len() != 40 {
            return Err(Error::InvalidAddress("must be 0x followed by 40 hex digits".into()));
        }
        let mut bytes = [0u8; 20];
        hex::decode_to_slice(hex_part, &mut bytes)
            .map_err(|_| Error::InvalidAddress("must be 0x followed by 40 hex digits".into()))?;
        Ok(Address(bytes))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_checksum())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", self.to_checksum())
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_checksum())
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_any_case_and_prints_checksummed() {
        let a: Address = "0x9d85ca56217d2bb651b00f15e694eb7e713637d4".parse().unwrap();
        assert_eq!(a.to_checksum(), "0x9D85ca56217D2bb651b00f15e694EB7E713637D4");
        let b: Address = "0x9D85CA56217D2BB651B00F15E694EB7E713637D4".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_lower_hex(), "0x9d85ca56217d2bb651b00f15e694eb7e713637d4");
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "0x",
            "9d85ca56217d2bb651b00f15e694eb7e713637d4",
            "0x123",
            "0xzz85ca56217d2bb651b00f15e694eb7e713637d4",
            "0x9d85ca56217d2bb651b00f15e694eb7e713637d4aa",
        ] {
            assert_eq!(bad.parse::<Address>().unwrap_err().code(), "invalid_address", "{bad}");
        }
    }
}
