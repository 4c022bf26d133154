//! Identity: Sign-In with Ethereum checks ([`siwe`]) and opaque session tokens ([`token`]).
//!
//! This module holds the pure, testable parts: parsing and checking a signed message against
//! what the node expects, and minting/hashing tokens. Nonce bookkeeping and sessions are
//! stored through the backend traits by the chat service.

pub mod siwe;
pub mod token;
