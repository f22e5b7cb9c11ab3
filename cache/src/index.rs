use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{io_err, CacheError};

/// What a cache key maps to: the layer it produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The key (hex sha256 of the canonical inputs document).
    pub key: String,
    /// Compressed blob digest, `sha256:<hex>`.
    pub digest: String,
    /// Uncompressed digest, `sha256:<hex>`.
    pub diff_id: String,
    /// Compressed size in bytes.
    pub size: u64,
    pub media_type: String,
    /// Unix seconds when the entry was recorded.
    pub created: u64,
    /// Unix seconds after which the entry is stale (unpinned inputs); `None`
    /// for pinned inputs, which never expire.
    pub expires: Option<u64>,
    /// Human name of the layer (`python: flask==3.0.3`).
    pub name: String,
    /// The canonical inputs document the key was computed from.
    pub inputs: String,
    /// Set on a marker: the layers of this key differ by the named input
    /// (`build_root`), so each is recorded under this key with that input
    /// added, and a lookup of this key goes on to that one. A marker names
    /// no layer: its digest, diffID and media type are empty. Absent from
    /// entries of a layer (and from every entry older ftl wrote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub varies_by: Option<String>,
}

impl CacheEntry {
    pub fn expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }

    /// A marker for `key` (whose inputs document is `inputs`): its layers
    /// are recorded under keys that add the input `varies_by`.
    pub fn marker(
        key: &str,
        inputs: &str,
        name: &str,
        varies_by: &str,
        created: u64,
        expires: Option<u64>,
    ) -> Self {
        CacheEntry {
            key: key.to_string(),
            digest: String::new(),
            diff_id: String::new(),
            size: 0,
            media_type: String::new(),
            created,
            expires,
            name: name.to_string(),
            inputs: inputs.to_string(),
            varies_by: Some(varies_by.to_string()),
        }
    }

    /// Whether this is a [marker](CacheEntry::marker), not a layer.
    pub fn is_marker(&self) -> bool {
        self.varies_by.is_some()
    }
}

/// Now as unix seconds.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `keys-v1/<key>.json` files.
#[derive(Debug, Clone)]
pub struct KeyIndex {
    root: PathBuf,
}

impl KeyIndex {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        Ok(KeyIndex { root })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(format!("{key}.json"))
    }

    /// Looks a key up; expired entries count as absent.
    pub fn get(&self, key: &str) -> Result<Option<CacheEntry>, CacheError> {
        let path = self.path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CacheError::Io { path, source: e }),
        };
        let entry: CacheEntry = serde_json::from_slice(&bytes)
            .map_err(|source| CacheError::Corrupt { path, source })?;
        Ok((!entry.expired(now_secs())).then_some(entry))
    }

    /// Records an entry atomically (temp file + rename).
    pub fn put(&self, entry: &CacheEntry) -> Result<(), CacheError> {
        let path = self.path(&entry.key);
        let mut tmp = tempfile::Builder::new()
            .prefix(".key-")
            .tempfile_in(&self.root)
            .map_err(io_err(&self.root))?;
        let json = serde_json::to_vec_pretty(entry).expect("entries serialize");
        tmp.write_all(&json).map_err(io_err(tmp.path()))?;
        tmp.persist(&path).map_err(|e| CacheError::Io {
            path,
            source: e.error,
        })?;
        Ok(())
    }

    /// Every entry (expired ones too), sorted by creation time.
    pub fn list(&self) -> Result<Vec<CacheEntry>, CacheError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let e = e.map_err(io_err(&self.root))?;
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            match serde_json::from_slice::<CacheEntry>(&bytes) {
                Ok(entry) => out.push(entry),
                Err(source) => {
                    tracing::warn!(path = %path.display(), error = %source, "skipping corrupt cache entry");
                }
            }
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.key.cmp(&b.key)));
        Ok(out)
    }

    /// Removes an entry.
    pub fn remove(&self, key: &str) -> Result<(), CacheError> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CacheError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Removes entries that are expired or older than `keep_secs`, and
    /// corrupt files; returns the removed entries.
    pub fn gc(&self, keep_secs: u64) -> Result<Vec<CacheEntry>, CacheError> {
        let now = now_secs();
        let mut removed = Vec::new();
        for e in fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let path = e.map_err(io_err(&self.root))?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with(".key-") {
                let _ = fs::remove_file(&path);
                continue;
            }
            let entry = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<CacheEntry>(&b).ok());
            match entry {
                Some(entry)
                    if !entry.expired(now) && now.saturating_sub(entry.created) <= keep_secs => {}
                Some(entry) => {
                    self.remove(&entry.key)?;
                    removed.push(entry);
                }
                None => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cache;

    fn entry(key: &str, expires: Option<u64>) -> CacheEntry {
        CacheEntry {
            key: key.into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            diff_id: format!("sha256:{}", "b".repeat(64)),
            size: 3,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            created: now_secs(),
            expires,
            name: "x".into(),
            inputs: "{}".into(),
            varies_by: None,
        }
    }

    #[test]
    fn put_get_expire_gc() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        cache.keys.put(&entry("k1", None)).unwrap();
        cache.keys.put(&entry("k2", Some(1))).unwrap();
        assert!(cache.keys.get("k1").unwrap().is_some());
        assert!(
            cache.keys.get("k2").unwrap().is_none(),
            "expired entries miss"
        );
        assert_eq!(cache.keys.list().unwrap().len(), 2);
        let removed = cache.keys.gc(3600).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(cache.keys.list().unwrap()[0].key, "k1");
    }

    /// Entries older ftl wrote (no `varies_by`) still parse, a layer's
    /// entry is written as before, and a marker round-trips.
    #[test]
    fn markers_are_entries_that_older_entries_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let mut old = serde_json::to_value(entry("old", None)).unwrap();
        old.as_object_mut().unwrap().remove("varies_by");
        std::fs::write(dir.path().join("keys-v1/old.json"), old.to_string()).unwrap();
        let got = cache.keys.get("old").unwrap().unwrap();
        assert!(!got.is_marker());
        cache.keys.put(&entry("layer", None)).unwrap();
        let text = std::fs::read_to_string(dir.path().join("keys-v1/layer.json")).unwrap();
        assert!(!text.contains("varies_by"), "{text}");

        let m = CacheEntry::marker(
            "m",
            "{}",
            "python: mmh3==4.1.0",
            "build_root",
            now_secs(),
            None,
        );
        cache.keys.put(&m).unwrap();
        let got = cache.keys.get("m").unwrap().unwrap();
        assert!(got.is_marker());
        assert_eq!(got, m);
        assert_eq!(cache.keys.gc(3600).unwrap(), []);
    }

    #[test]
    fn blob_commit_is_atomic_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let digest = format!("sha256:{}", "c".repeat(64));
        for _ in 0..2 {
            let mut w = cache.blobs.writer().unwrap();
            w.write_all(b"abc").unwrap();
            let p = w.commit(&digest).unwrap();
            assert_eq!(fs::read(p).unwrap(), b"abc");
        }
        // An uncommitted writer leaves nothing behind.
        let mut w = cache.blobs.writer().unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(
            fs::read_dir(dir.path().join("blobs/tmp")).unwrap().count(),
            0
        );
        assert!(cache.blobs.path("md5:x").is_err());
    }
}
