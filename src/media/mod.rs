//! Media bytes: attachments, streamed in and out, never held whole in memory.
//!
//! The embedded implementation is [`local::LocalMediaStore`] (a folder in the data directory);
//! an S3 implementation slots in beside it. Metadata (who uploaded what, which message uses it)
//! belongs to the durable store, not here.

pub mod local;

use crate::error::Result;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

/// A stream of chunks, as uploaded or served.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// The media store. See the module docs.
#[async_trait]
pub trait MediaStore: Send + Sync + 'static {
    fn describe(&self) -> String;
    async fn ping(&self) -> Result<()>;
    /// Stores `body` under `id`, refusing (and storing nothing) past `max_bytes`. Returns the
    /// stored size.
    async fn put(&self, id: &str, body: ByteStream, max_bytes: u64) -> Result<u64>;
    /// The object's bytes and size, or `None`.
    async fn get(&self, id: &str) -> Result<Option<(ByteStream, u64)>>;
    /// Removes an object; false if it did not exist.
    async fn delete(&self, id: &str) -> Result<bool>;
}
