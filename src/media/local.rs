//! [`MediaStore`] in a folder of the data directory.
//!
//! Objects are written to a temporary file and renamed into place only when complete and under
//! the size limit, so a failed or oversized upload never leaves a partial object behind. Ids
//! are validated so that a crafted id can never escape the folder.

use super::{ByteStream, MediaStore};
use crate::error::{Error, Result};
use async_trait::async_trait;
use futures::StreamExt;
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;

/// See the module docs.
pub struct LocalMediaStore {
    root: PathBuf,
}

impl LocalMediaStore {
    pub fn new(root: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(root.join("tmp")).map_err(Error::backend)?;
        Ok(LocalMediaStore { root })
    }

    fn path_of(&self, id: &str) -> Result<PathBuf> {
        let valid = !id.is_empty()
            && id.len() <= 128
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(Error::InvalidRequest("invalid media id".into()));
        }
        // Two-level fan-out keeps directories small.
        let shard = &id[id.len().saturating_sub(2)..];
        Ok(self.root.join(shard).join(id))
    }
}

#[async_trait]
impl MediaStore for LocalMediaStore {
    fn describe(&self) -> String {
        format!("local ({})", self.root.display())
    }

    async fn ping(&self) -> Result<()> {
        tokio::fs::metadata(&self.root)
            .await
            .map(|_| ())
            .map_err(Error::backend)
    }

    async fn put(&self, id: &str, mut body: ByteStream, max_bytes: u64) -> Result<u64> {
        let dest = self.path_of(id)?;
        let tmp = self.root.join("tmp").join(format!("{id}.{}", crate::model::new_id()));
        let mut file = tokio::fs::File::create(&tmp).await.map_err(Error::backend)?;
        let mut size = 0u64;
        let outcome: Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| Error::InvalidRequest(format!("upload interrupted: {e}")))?;
                size += chunk.len() as u64;
                if size > max_bytes {
                    return Err(Error::PayloadTooLarge {
                        what: "upload",
                        limit: max_bytes as usize,
                    });
                }
                file.write_all(&chunk).await.map_err(Error::backend)?;
            }
            file.sync_all().await.map_err(Error::backend)?;
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(Error::backend)?;
        }
        tokio::fs::rename(&tmp, &dest).await.map_err(Error::backend)?;
        Ok(size)
    }

    async fn get(&self, id: &str) -> Result<Option<(ByteStream, u64)>> {
        let path = self.path_of(id)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::backend(e)),
        };
        let size = file.metadata().await.map_err(Error::backend)?.len();
        let stream = tokio_util::io::ReaderStream::new(file).boxed();
        Ok(Some((stream, size)))
    }

    async fn delete(&self, id: &str) -> Result<bool> {
        let path = self.path_of(id)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::backend(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn body(chunks: Vec<&'static [u8]>) -> ByteStream {
        futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c)))).boxed()
    }

    #[tokio::test]
    async fn round_trip_limit_and_traversal() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalMediaStore::new(dir.path().to_path_buf()).unwrap();
        assert_eq!(
            store.put("abc123", body(vec![b"hello ", b"world"]), 100).await.unwrap(),
            11
        );
        let (stream, size) = store.get("abc123").await.unwrap().unwrap();
        assert_eq!(size, 11);
        let bytes: Vec<Bytes> = stream.map(|c| c.unwrap()).collect().await;
        assert_eq!(bytes.concat(), b"hello world");
        let err = store
            .put("big", body(vec![b"0123456789", b"0123456789"]), 15)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "payload_too_large");
        assert!(store.get("big").await.unwrap().is_none());
        assert_eq!(
            store.put("../etc", body(vec![b"x"]), 10).await.unwrap_err().code(),
            "invalid_request"
        );
        assert!(store.delete("abc123").await.unwrap());
        assert!(!store.delete("abc123").await.unwrap());
    }
}
