//! Shared ephemeral state: SIWE nonces (take-once), presence, rate-limit buckets.
//!
//! Everything here has a TTL or dies with its connections, and losing all of it must never
//! lose a message: a lost nonce means signing in again, lost presence heals on reconnect. The
//! embedded implementation is [`memory::MemoryState`]; a Redis implementation shares it between
//! nodes.

pub mod memory;

use crate::address::Address;
use crate::error::Result;
use async_trait::async_trait;
use std::time::Duration;

/// A token bucket's shape: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

/// Ephemeral shared state. See the module docs.
#[async_trait]
pub trait EphemeralState: Send + Sync + 'static {
    fn describe(&self) -> String;
    async fn ping(&self) -> Result<()>;

    /// Remembers a server-issued nonce for `ttl`.
    async fn put_nonce(&self, nonce: &str, ttl: Duration) -> Result<()>;
    /// Consumes a nonce: true exactly once per issued, unexpired nonce, however many callers
    /// race.
    async fn take_nonce(&self, nonce: &str) -> Result<bool>;

    /// Takes one token from the bucket `key`. `Ok(None)` when allowed, `Ok(Some(wait))` when
    /// the caller must wait.
    async fn rate_limit(&self, key: &str, limit: RateLimit) -> Result<Option<Duration>>;

    /// Registers one live connection of an address, refusing (`too_many_connections`) when it
    /// already has `max_connections`. True when the address just came online. Check and insert
    /// are one atomic step, so concurrent connects cannot pass the limit.
    async fn presence_connect(&self, address: Address, connection_id: &str, max_connections: usize) -> Result<bool>;
    /// Unregisters a connection. True when the address just went offline.
    async fn presence_disconnect(&self, address: Address, connection_id: &str) -> Result<bool>;
    async fn is_online(&self, address: Address) -> Result<bool>;
    /// The addresses among `addresses` that are online (one round trip for a networked state).
    async fn online_among(&self, addresses: &[Address]) -> Result<Vec<Address>>;
    /// Live connections of an address (for the per-user socket limit).
    async fn connection_count(&self, address: Address) -> Result<usize>;
    /// Number of distinct online addresses.
    async fn online_count(&self) -> Result<u64>;
}
