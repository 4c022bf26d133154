//! In-process [`SendQueue`]: bounded concurrency straight into the [`JobHandler`].
//!
//! Why no buffer of its own: the SQLite writer already batches everything that is in flight,
//! so the queue's job is only to bound how much is in flight (refusing with `overloaded`
//! beyond `capacity`) and to bound how long a sender waits.

use super::{JobHandler, SendJob, SendQueue};
use crate::error::{Error, Result};
use crate::model::Appended;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// See the module docs.
pub struct InProcessQueue {
    handler: Arc<dyn JobHandler>,
    permits: Arc<Semaphore>,
    capacity: usize,
    timeout: Duration,
}

impl InProcessQueue {
    pub fn new(handler: Arc<dyn JobHandler>, capacity: usize, timeout: Duration) -> Self {
        InProcessQueue {
            handler,
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            timeout,
        }
    }
}

#[async_trait]
impl SendQueue for InProcessQueue {
    fn describe(&self) -> String {
        format!("inprocess (capacity {})", self.capacity)
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn submit(&self, job: SendJob) -> Result<Option<Appended>> {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Overloaded)?;
        let handler = self.handler.clone();
        // The job runs in its own task so that a sender who gives up (timeout, disconnect)
        // never cancels a write half-way; the store finishes it and idempotence covers retries.
        let task = tokio::spawn(async move {
            let result = handler.handle(job).await;
            drop(permit);
            result
        });
        match tokio::time::timeout(self.timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(Error::internal(format!("send job failed: {join}"))),
            Err(_) => Err(Error::Backend(
                "the send was not persisted in time; retry with the same client_msg_id".into(),
            )),
        }
    }

    fn depth(&self) -> u64 {
        (self.capacity - self.permits.available_permits()) as u64
    }
}
