//! In-memory [`EphemeralState`] for a single node.
//!
//! Why a plain mutex over hash maps: every operation is a few map lookups, far cheaper than the
//! socket work around it, and a single lock makes take-once nonces trivially race-free. Expired
//! entries are pruned lazily, bounded by a sweep every few thousand inserts.

use super::{EphemeralState, RateLimit};
use crate::address::Address;
use crate::error::{Error, Result};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// See the module docs.
#[derive(Default)]
pub struct MemoryState {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    nonces: HashMap<String, Instant>,
    buckets: HashMap<String, Bucket>,
    presence: HashMap<Address, HashSet<String>>,
    inserts_since_sweep: u32,
}

/// A token bucket: `tokens` available as of `at`.
struct Bucket {
    tokens: f64,
    at: Instant,
}

const SWEEP_EVERY: u32 = 4096;

impl MemoryState {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Inner {
    fn maybe_sweep(&mut self, now: Instant) {
        self.inserts_since_sweep += 1;
        if self.inserts_since_sweep < SWEEP_EVERY {
            return;
        }
        self.inserts_since_sweep = 0;
        self.nonces.retain(|_, exp| *exp > now);
        // A bucket idle for a minute is full again, so forgetting it changes nothing.
        self.buckets
            .retain(|_, b| now.duration_since(b.at) < Duration::from_secs(60));
    }
}

#[async_trait]
impl EphemeralState for MemoryState {
    fn describe(&self) -> String {
        "memory (this process)".into()
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn put_nonce(&self, nonce: &str, ttl: Duration) -> Result<()> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.maybe_sweep(now);
        inner.nonces.insert(nonce.to_string(), now + ttl);
        Ok(())
    }

    async fn take_nonce(&self, nonce: &str) -> Result<bool> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        Ok(inner.nonces.remove(nonce).is_some_and(|exp| exp > now))
    }

    async fn rate_limit(&self, key: &str, limit: RateLimit) -> Result<Option<Duration>> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.maybe_sweep(now);
        let burst = f64::from(limit.burst.max(1));
        let bucket = inner
            .buckets
            .entry(key.to_string())
            .or_insert(Bucket { tokens: burst, at: now });
        let refill = now.duration_since(bucket.at).as_secs_f64() * limit.per_second;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(None)
        } else {
            let wait = (1.0 - bucket.tokens) / limit.per_second;
            Ok(Some(Duration::from_secs_f64(wait)))
        }
    }

    async fn presence_connect(&self, address: Address, connection_id: &str, max_connections: usize) -> Result<bool> {
        let mut inner = self.inner.lock();
        let conns = inner.presence.entry(address).or_default();
        if conns.len() >= max_connections && !conns.contains(connection_id) {
            return Err(Error::TooManyConnections(max_connections));
        }
        let was_offline = conns.is_empty();
        conns.insert(connection_id.to_string());
        Ok(was_offline)
    }

    async fn presence_disconnect(&self, address: Address, connection_id: &str) -> Result<bool> {
        let mut inner = self.inner.lock();
        let Some(conns) = inner.presence.get_mut(&address) else {
            return Ok(false);
        };
        let removed = conns.remove(connection_id);
        if conns.is_empty() {
            inner.presence.remove(&address);
            return Ok(removed);
        }
        Ok(false)
    }

    async fn is_online(&self, address: Address) -> Result<bool> {
        Ok(self.inner.lock().presence.contains_key(&address))
    }

    async fn online_among(&self, addresses: &[Address]) -> Result<Vec<Address>> {
        let inner = self.inner.lock();
        Ok(addresses
            .iter()
            .copied()
            .filter(|a| inner.presence.contains_key(a))
            .collect())
    }

    async fn connection_count(&self, address: Address) -> Result<usize> {
        Ok(self.inner.lock().presence.get(&address).map_or(0, HashSet::len))
    }

    async fn online_count(&self) -> Result<u64> {
        Ok(self.inner.lock().presence.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> Address {
        Address::from_bytes([n; 20])
    }

    #[tokio::test]
    async fn nonce_is_taken_once() {
        let s = MemoryState::new();
        s.put_nonce("abc", Duration::from_secs(60)).await.unwrap();
        assert!(s.take_nonce("abc").await.unwrap());
        assert!(!s.take_nonce("abc").await.unwrap());
        assert!(!s.take_nonce("never").await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn expired_nonce_is_refused() {
        let s = MemoryState::new();
        s.put_nonce("abc", Duration::from_millis(0)).await.unwrap();
        assert!(!s.take_nonce("abc").await.unwrap());
    }

    #[tokio::test]
    async fn bucket_allows_burst_then_waits() {
        let s = MemoryState::new();
        let limit = RateLimit {
            per_second: 1.0,
            burst: 3,
        };
        for _ in 0..3 {
            assert!(s.rate_limit("k", limit).await.unwrap().is_none());
        }
        let wait = s.rate_limit("k", limit).await.unwrap().expect("must be limited");
        assert!(wait > Duration::from_millis(500) && wait <= Duration::from_secs(1));
        assert!(s.rate_limit("other", limit).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn presence_counts_tabs() {
        let s = MemoryState::new();
        assert!(s.presence_connect(addr(1), "a", 2).await.unwrap());
        assert!(!s.presence_connect(addr(1), "b", 2).await.unwrap());
        assert_eq!(
            s.presence_connect(addr(1), "c", 2).await.unwrap_err().code(),
            "too_many_connections"
        );
        assert!(!s.presence_disconnect(addr(1), "a").await.unwrap());
        assert!(s.is_online(addr(1)).await.unwrap());
        assert!(s.presence_disconnect(addr(1), "b").await.unwrap());
        assert!(!s.is_online(addr(1)).await.unwrap());
        assert!(!s.presence_disconnect(addr(1), "b").await.unwrap());
    }
}
