use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::{io_err, CacheError};

/// Content-addressed blobs: `<root>/sha256/<hex>`.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let root = root.into();
        for dir in [root.join("sha256"), root.join("tmp")] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(BlobStore { root })
    }

    /// Where the blob with `digest` (`sha256:<hex>`) lives, present or not.
    pub fn path(&self, digest: &str) -> Result<PathBuf, CacheError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| CacheError::BadDigest(digest.to_string()))?;
        Ok(self.root.join("sha256").join(hex))
    }

    /// Whether the blob is present.
    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// The blob's path, or an error saying it is missing.
    pub fn get(&self, digest: &str) -> Result<PathBuf, CacheError> {
        let path = self.path(digest)?;
        if path.is_file() {
            Ok(path)
        } else {
            Err(CacheError::MissingBlob {
                digest: digest.to_string(),
                path,
            })
        }
    }

    /// Starts writing a blob whose digest is not known yet.
    pub fn writer(&self) -> Result<BlobWriter, CacheError> {
        let dir = self.root.join("tmp");
        let file = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&dir)
            .map_err(io_err(&dir))?;
        Ok(BlobWriter {
            file,
            store: self.clone(),
        })
    }

    /// Removes blobs not in `keep` and stale temp files; returns bytes freed.
    pub fn retain(&self, keep: &std::collections::HashSet<String>) -> Result<u64, CacheError> {
        let mut freed = 0;
        let dir = self.root.join("sha256");
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&format!("sha256:{name}")) {
                freed += entry.metadata().map(|m| m.len()).unwrap_or(0);
                remove_if_present(&entry.path())?;
            }
        }
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let entry = entry.map_err(io_err(&tmp))?;
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| {
                    t.elapsed()
                        .map(|e| e.as_secs() > 24 * 3600)
                        .unwrap_or(false)
                })
                .unwrap_or(false);
            if old {
                remove_if_present(&entry.path())?;
            }
        }
        Ok(freed)
    }

    /// Total bytes of stored blobs.
    pub fn size(&self) -> u64 {
        fs::read_dir(self.root.join("sha256"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

fn remove_if_present(path: &Path) -> Result<(), CacheError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(CacheError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// A blob being written: a temp file in the store, renamed into place by
/// [`BlobWriter::commit`] once its digest is known. Dropped uncommitted, the
/// temp file is removed.
pub struct BlobWriter {
    file: tempfile::NamedTempFile,
    store: BlobStore,
}

impl BlobWriter {
    /// The open temp file.
    pub fn file(&mut self) -> &mut File {
        self.file.as_file_mut()
    }

    /// The open temp file, shared (for `try_clone` into async writers).
    pub fn file_ref(&self) -> &File {
        self.file.as_file()
    }

    /// Publishes the blob under `digest` (which the caller computed while
    /// writing) and returns its path. If the blob is already present (another
    /// build wrote the same bytes) the temp file is discarded.
    pub fn commit(mut self, digest: &str) -> Result<PathBuf, CacheError> {
        let path = self.store.path(digest)?;
        let tmp_path = self.file.path().to_path_buf();
        self.file
            .as_file_mut()
            .sync_data()
            .map_err(io_err(&tmp_path))?;
        if path.is_file() {
            return Ok(path);
        }
        self.file.persist(&path).map_err(|e| CacheError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(path)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
