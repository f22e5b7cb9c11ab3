//! ftl-cache: the local, content-addressed layer cache.
//!
//! Two parts, both safe for concurrent processes on one machine:
//!
//! - a blob store, `blobs/sha256/<hex>`, written through a temp file in the
//!   same directory tree and renamed into place, so a reader never sees a
//!   partial blob and a crash leaves only a temp file that `gc` removes;
//! - a versioned key index, `keys-v1/<key>.json`, mapping a cache key to the
//!   layer it produced (descriptor, diffID, size, created, expiry, inputs).
//!
//! Two processes building the same key both write; the renames are atomic,
//! the blobs are identical (layers are reproducible), and the last index
//! write wins with an equivalent entry.

mod blobs;
pub mod dirs;
mod index;

pub use blobs::{BlobStore, BlobWriter};
pub use index::{now_secs, CacheEntry, KeyIndex};

use std::path::PathBuf;

/// An error of the local cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache I/O failed at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cache entry {path} is corrupt; delete it or run `ftl cache gc`")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("blob {digest} is not in the cache at {path}")]
    MissingBlob { digest: String, path: PathBuf },
    #[error("digest {0} is not a sha256 digest")]
    BadDigest(String),
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CacheError {
    let path = path.into();
    move |source| CacheError::Io { path, source }
}

/// The local cache: a blob store and a key index under one root.
#[derive(Debug, Clone)]
pub struct Cache {
    pub blobs: BlobStore,
    pub keys: KeyIndex,
}

impl Cache {
    /// Opens (creating if needed) the cache at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let root = root.into();
        Ok(Cache {
            blobs: BlobStore::open(root.join("blobs"))?,
            keys: KeyIndex::open(root.join("keys-v1"))?,
        })
    }
}
