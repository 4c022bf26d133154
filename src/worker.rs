//! The message-processing step behind the send queue, and the delivery of scheduled messages.
//!
//! [`Processor`] is what a queue consumer runs for each job: persist through the store (which
//! allocates `seq` and enforces idempotence), then publish the persisted message on the bus.
//! Publishing happens only for messages this job created, so a redelivered job never fans a
//! message out twice. In embedded mode the in-process queue calls the processor directly and
//! `serve` runs [`run_scheduler`]; with a broker, `coolchat worker` runs both.

use crate::bus::{Bus, BusEvent};
use crate::error::{Error, Result};
use crate::model::{self, Appended};
use crate::queue::{JobHandler, SendJob, SendQueue};
use crate::storage::Store;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Persist-then-publish. See the module docs.
pub struct Processor {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
}

impl Processor {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>) -> Self {
        Processor { store, bus }
    }
}

#[async_trait]
impl JobHandler for Processor {
    async fn handle(&self, job: SendJob) -> Result<Option<Appended>> {
        let appended = match job {
            SendJob::Append(message) => Some(self.store.append_message(message).await?),
            SendJob::DeliverScheduled { id } => self.store.deliver_scheduled(&id, model::now_ms()).await?,
        };
        if let Some(a) = appended.as_ref().filter(|a| a.created) {
            metrics::counter!("coolchat_messages_total").increment(1);
            // The bus may drop; the message is already durable and `sync` will find it.
            if let Err(e) = self.bus.publish(BusEvent::MessageCreated {
                message: a.message.clone(),
            }) {
                tracing::warn!(error = %e, room_id = %a.message.room_id, seq = a.message.seq, "fan-out failed");
            }
        }
        Ok(appended)
    }
}

/// Delivers due scheduled messages until `stop` is cancelled. Each due entry goes through the
/// send queue, so scheduled sends share the pipeline (and its limits) with live ones.
pub async fn run_scheduler(
    store: Arc<dyn Store>,
    queue: Arc<dyn SendQueue>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due = match store.due_scheduled(model::now_ms(), 256).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "could not read scheduled messages");
                continue;
            }
        };
        for entry in due {
            match queue.submit(SendJob::DeliverScheduled { id: entry.id.clone() }).await {
                Ok(_) => {}
                Err(
                    e @ (Error::NotMember | Error::RoomNotFound | Error::Banned { .. } | Error::IdempotencyConflict),
                ) => {
                    tracing::info!(id = %entry.id, sender = %entry.sender, reason = e.code(), "scheduled message dropped");
                }
                Err(e) => tracing::warn!(id = %entry.id, error = %e, "scheduled delivery failed; will retry"),
            }
        }
    }
}

/// Replays the store's control log (written by `coolchat admin` in another process) onto this
/// node's bus, so bans, revocations and deletions reach live sockets within `interval`. Starts
/// after the newest entry present at start-up: older entries concern sockets that no longer
/// exist.
pub async fn run_control_watcher(
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut last = match store.last_control_id().await {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the control log; admin commands will not reach live sockets");
            return;
        }
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let events = match store.control_since(last, 1024).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the control log");
                continue;
            }
        };
        for (id, json) in events {
            last = id;
            match serde_json::from_str::<BusEvent>(&json) {
                Ok(event) => {
                    if let Err(e) = bus.publish(event) {
                        tracing::warn!(error = %e, control_id = id, "could not publish a control event");
                    }
                }
                Err(e) => tracing::warn!(error = %e, control_id = id, "unreadable control event skipped"),
            }
        }
    }
}
