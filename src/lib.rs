//! CoolChat: a self-hosted, real-time chat node.
//!
//! Layers, each depending only on the ones below it:
//!
//! * [`gateway`]: warp REST routes and Socket.IO handlers. Parses, authenticates, maps errors.
//!   Holds no business rule.
//! * [`service`]: the chat rules (membership, limits, idempotence, sync, presence) over the
//!   backend traits. Knows no HTTP or Socket.IO type.
//! * [`worker`]: the persist-and-fan-out step behind the send queue, and scheduled delivery.
//! * The backend traits and their implementations: [`storage`], [`ephemeral`], [`bus`],
//!   [`queue`], [`media`]. Only these touch a database, broker or cache.
//! * Shared vocabulary: [`model`], [`address`], [`error`], [`config`].
//!
//! See `docs/ARCHITECTURE.md` for the map and the invariants.

pub mod address;
pub mod admin;
pub mod auth;
pub mod backends;
pub mod bench;
pub mod bus;
pub mod config;
pub mod ephemeral;
pub mod error;
pub mod gateway;
pub mod logging;
pub mod media;
pub mod metrics;
pub mod model;
pub mod queue;
pub mod service;
pub mod storage;
pub mod worker;

pub use error::{Error, Result};
