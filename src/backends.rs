//! Builds the backends the configuration names. The one place that knows every implementation.

use crate::bus::local::LocalBus;
use crate::config::Config;
use crate::ephemeral::memory::MemoryState;
use crate::error::{Error, Result};
use crate::media::local::LocalMediaStore;
use crate::queue::inprocess::InProcessQueue;
use crate::service::Backends;
use crate::storage::sqlite::{SqliteOptions, SqliteStore};
use crate::worker::Processor;
use std::sync::Arc;
use std::time::Duration;

/// Opens every backend named by `config` (creating the data directory when needed).
pub async fn open(config: &Config) -> Result<Backends> {
    let data_dir = &config.server.data_dir;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| Error::Backend(format!("cannot create data directory {}: {e}", data_dir.display())))?;
    let store = Arc::new(SqliteStore::open(
        &data_dir.join("coolchat.db"),
        SqliteOptions {
            batch_max: config.storage.sqlite_batch_max,
            readers: config.storage.sqlite_readers,
            synchronous_full: config.storage.sqlite_synchronous == "full",
        },
    )?);
    let bus = Arc::new(LocalBus::new(config.bus.capacity));
    let state = Arc::new(MemoryState::new());
    let processor = Arc::new(Processor::new(store.clone(), bus.clone()));
    let queue = Arc::new(InProcessQueue::new(
        processor,
        config.queue.capacity,
        Duration::from_secs(config.queue.send_timeout_secs),
    ));
    let media = Arc::new(LocalMediaStore::new(data_dir.join("media"))?);
    Ok(Backends {
        store,
        state,
        bus,
        queue,
        media,
    })
}
