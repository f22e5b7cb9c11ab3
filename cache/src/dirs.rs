//! Directories of the cache that builds use in place rather than as blobs:
//! unpacked base rootfs (`rootfs/<digest>`) and persistent package caches
//! (`persistent/<name>`: Maven's repository, npm's and pip's caches).
//!
//! A build holds a [`Lease`] on each directory it uses: a shared `flock` of
//! a sibling file `.<name>.lease` whose mtime is the directory's last use.
//! [`sweep`] removes a directory only when it was last used before the
//! cut-off *and* it can take the lease exclusively, so a directory a build
//! is using right now is never pulled from under it. A removed directory
//! is first renamed aside, so a crash mid-removal leaves a `.trash-` entry
//! (swept next time), never a half-deleted directory under its real name.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::{io_err, CacheError};

/// A build's use of a cache directory: while it lives, [`sweep`] leaves the
/// directory alone.
#[derive(Debug)]
pub struct Lease {
    _file: File,
}

fn lease_path(dir: &Path) -> Option<PathBuf> {
    let name = dir.file_name()?.to_str()?;
    Some(dir.with_file_name(format!(".{name}.lease")))
}

/// Takes a shared lease on `dir` (which need not exist yet) and records
/// now as its last use. Blocks while a [`sweep`] is removing it.
pub fn lease(dir: &Path) -> Result<Lease, CacheError> {
    let path = lease_path(dir).ok_or_else(|| CacheError::Io {
        path: dir.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not a named directory"),
    })?;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    file.lock_shared().map_err(io_err(&path))?;
    file.set_modified(SystemTime::now())
        .map_err(io_err(&path))?;
    Ok(Lease { _file: file })
}

/// A directory of the cache, as [`list`] and [`sweep`] see it.
#[derive(Debug, Clone, Serialize)]
pub struct DirUse {
    pub path: PathBuf,
    /// Bytes of its regular files.
    pub bytes: u64,
    /// Seconds since the epoch of its last lease (or, never leased, of the
    /// directory's own mtime).
    pub last_used: u64,
    /// Whether a build holds a lease on it now.
    pub in_use: bool,
}

/// The directories under `parent`, oldest use first.
pub fn list(parent: &Path) -> Vec<DirUse> {
    let mut out: Vec<DirUse> = subdirs(parent)
        .into_iter()
        .map(|dir| {
            let lease = lease_path(&dir).and_then(|p| OpenOptions::new().write(true).open(p).ok());
            let in_use = lease.as_ref().is_some_and(|f| match f.try_lock() {
                Ok(()) => {
                    let _ = f.unlock();
                    false
                }
                Err(_) => true,
            });
            DirUse {
                last_used: last_used(&dir, lease.as_ref()),
                bytes: tree_bytes(&dir),
                path: dir,
                in_use,
            }
        })
        .collect();
    out.sort_by_key(|d| d.last_used);
    out
}

/// Removes the directories under `parent` last used more than `keep_secs`
/// ago and not in use, and leftovers of interrupted removals. Returns what
/// it removed.
pub fn sweep(parent: &Path, keep_secs: u64) -> Result<Vec<DirUse>, CacheError> {
    let cutoff = SystemTime::now()
        .checked_sub(Duration::from_secs(keep_secs))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut removed = Vec::new();
    for dir in subdirs(parent) {
        let Some(lease_path) = lease_path(&dir) else {
            continue;
        };
        // Opened (or created) and locked exclusively: no build uses it,
        // and none can start to until the lock is released.
        let (file, created) = match OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&lease_path)
        {
            Ok(f) => (f, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => (
                OpenOptions::new()
                    .write(true)
                    .open(&lease_path)
                    .map_err(io_err(&lease_path))?,
                false,
            ),
            Err(e) => return Err(io_err(&lease_path)(e)),
        };
        if file.try_lock().is_err() {
            continue;
        }
        let used = if created {
            last_used(&dir, None)
        } else {
            last_used(&dir, Some(&file))
        };
        let used_at = SystemTime::UNIX_EPOCH + Duration::from_secs(used);
        if used_at >= cutoff {
            if created {
                // Kept as the record of the last use from now on.
                let _ = file.set_modified(used_at);
            }
            continue;
        }
        let bytes = tree_bytes(&dir);
        let trash = trash_name(&dir);
        fs::rename(&dir, &trash).map_err(io_err(&dir))?;
        // A build blocked on the old lease file goes on with a fresh
        // directory; the next one creates a fresh lease file.
        let _ = fs::remove_file(&lease_path);
        drop(file);
        remove_tree(&trash)?;
        removed.push(DirUse {
            path: dir,
            bytes,
            last_used: used,
            in_use: false,
        });
    }
    for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".trash-") {
            // Left by a sweep that crashed mid-removal.
            remove_tree(&entry.path())?;
        } else if let Some(dir) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".lease"))
        {
            // The lease of a directory removed by other means.
            let orphan = !parent.join(dir).exists();
            let unused = File::options()
                .write(true)
                .open(entry.path())
                .is_ok_and(|f| f.try_lock().is_ok());
            if orphan && unused {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    Ok(removed)
}

/// Removes the entries of `parent` (scratch left by builds that were
/// killed) last modified more than `age_secs` ago; returns their bytes.
pub fn sweep_scratch(parent: &Path, age_secs: u64) -> Result<u64, CacheError> {
    let mut freed = 0;
    for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > age_secs);
        if !old {
            continue;
        }
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            freed += tree_bytes(&path);
            remove_tree(&path)?;
        } else {
            freed += entry.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = fs::remove_file(&path);
        }
    }
    Ok(freed)
}

fn subdirs(parent: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

fn last_used(dir: &Path, lease: Option<&File>) -> u64 {
    let meta = match lease {
        Some(f) => f.metadata(),
        None => fs::metadata(dir),
    };
    meta.and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn trash_name(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(".trash-{name}-{}", std::process::id()))
}

/// Bytes of the regular files under `dir` (links not followed).
pub fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => {
                    total += entry.metadata().map(|m| m.len()).unwrap_or(0);
                }
                _ => {}
            }
        }
    }
    total
}

/// Removes a tree, making read-only directories (an unpacked rootfs has
/// them) writable first when removal is refused.
fn remove_tree(dir: &Path) -> Result<(), CacheError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o700));
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(dir)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(dir: &Path, secs: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs);
        let lease = lease_path(dir).unwrap();
        File::options()
            .write(true)
            .open(lease)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn sweep_removes_old_unused_dirs_and_keeps_leased_and_recent_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for name in ["old", "recent", "busy"] {
            let d = root.join(name);
            fs::create_dir_all(d.join("sub")).unwrap();
            fs::write(d.join("sub/f"), b"12345").unwrap();
            drop(lease(&d).unwrap());
        }
        age(&root.join("old"), 10 * 86_400);
        age(&root.join("busy"), 10 * 86_400);
        let held = lease(&root.join("busy")).unwrap();
        // A lease refreshes the last use; age it again while held.
        age(&root.join("busy"), 10 * 86_400);

        let listed = list(root);
        assert_eq!(listed.len(), 3);
        assert!(listed.iter().any(|d| d.path.ends_with("busy") && d.in_use));
        assert!(listed.iter().all(|d| d.bytes == 5));

        let removed = sweep(root, 7 * 86_400).unwrap();
        let names: Vec<_> = removed.iter().map(|d| d.path.clone()).collect();
        assert_eq!(names, vec![root.join("old")]);
        assert_eq!(removed[0].bytes, 5);
        assert!(!root.join("old").exists());
        assert!(!root.join(".old.lease").exists());
        assert!(root.join("recent/sub/f").exists());
        assert!(root.join("busy/sub/f").exists(), "a leased dir was removed");

        drop(held);
        let removed = sweep(root, 7 * 86_400).unwrap();
        assert_eq!(removed.len(), 1, "{removed:?}");
        assert!(!root.join("busy").exists());
        assert!(root.join("recent").exists());
        // Nothing half-removed is left.
        let left: Vec<_> = fs::read_dir(root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }

    #[test]
    fn a_never_leased_dir_ages_by_its_mtime_and_read_only_trees_go() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("legacy");
        fs::create_dir_all(d.join("ro")).unwrap();
        fs::write(d.join("ro/f"), b"x").unwrap();
        fs::set_permissions(d.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        // Fresh by mtime: kept.
        assert!(sweep(tmp.path(), 86_400).unwrap().is_empty());
        assert!(d.join("ro/f").exists());
        File::open(&d)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(2 * 86_400))
            .unwrap();
        // The lease file the first sweep made carries the old mtime on.
        age(&d, 2 * 86_400);
        assert_eq!(sweep(tmp.path(), 86_400).unwrap().len(), 1);
        assert!(!d.exists());
        // Leftovers of an interrupted removal go too, and orphan leases.
        fs::create_dir_all(tmp.path().join(".trash-x-1/a")).unwrap();
        fs::write(tmp.path().join(".gone.lease"), b"").unwrap();
        sweep(tmp.path(), 86_400).unwrap();
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn scratch_older_than_the_age_goes() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("old/a")).unwrap();
        fs::write(tmp.path().join("old/a/f"), b"123").unwrap();
        fs::create_dir_all(tmp.path().join("new")).unwrap();
        File::open(tmp.path().join("old"))
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(2 * 86_400))
            .unwrap();
        assert_eq!(sweep_scratch(tmp.path(), 86_400).unwrap(), 3);
        assert!(!tmp.path().join("old").exists());
        assert!(tmp.path().join("new").exists());
    }
}
