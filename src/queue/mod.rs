//! The send pipeline: accepted sends on their way to the store and the bus.
//!
//! The gateway never writes a message itself: the chat service validates a send and submits a
//! [`SendJob`]; the queue delivers it to a [`JobHandler`] (the worker's persist-and-fan-out step)
//! and hands back the persisted result, because the ack carries `seq` and is sent only after
//! the message is durable. The embedded implementation is [`inprocess::InProcessQueue`]
//! (bounded, so a flood is refused with `overloaded` instead of growing memory); a RabbitMQ
//! implementation (publisher confirms, manual acks, a reply path) slots in beside it with the
//! same semantics.

pub mod inprocess;

use crate::error::Result;
use crate::model::{Appended, NewMessage};
use async_trait::async_trait;

/// One accepted send.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum SendJob {
    /// Persist now.
    Append(NewMessage),
    /// Deliver a due scheduled message (by schedule id).
    DeliverScheduled { id: String },
}

/// What processes a job: persists it and publishes the result. Implemented by the worker.
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// `Ok(None)` only for `DeliverScheduled` of an entry that was already delivered.
    async fn handle(&self, job: SendJob) -> Result<Option<Appended>>;
}

/// The pipeline. See the module docs.
#[async_trait]
pub trait SendQueue: Send + Sync + 'static {
    fn describe(&self) -> String;
    async fn ping(&self) -> Result<()>;
    /// Submits a job and waits (bounded) for its persisted result.
    async fn submit(&self, job: SendJob) -> Result<Option<Appended>>;
    /// Jobs accepted but not yet finished.
    fn depth(&self) -> u64;
}
