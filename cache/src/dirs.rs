//! Directories of the cache that builds use in place rather than as blobs:
//! unpacked base layers (`layers/<digest>`) and base rootfs
//! (`rootfs/<digest>`), and persistent package caches (`persistent/<name>`:
//! Maven's repository, npm's and pip's caches).
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
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.lock_shared().map_err(io_err(&path))?;
        // A sweep may have unlinked the file while we waited for the lock:
        // a lease on it would be invisible to the next sweep. Take the one
        // the path names now.
        if !same_file(&file, &path) {
            continue;
        }
        stamp_now(&file);
        return Ok(Lease { _file: file });
    }
}

fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Sets the file's mtime to now. `UTIME_NOW` needs only write access, not
/// ownership, so users sharing a cache can stamp each other's leases; a
/// failure costs only an earlier last use.
fn stamp_now(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: futimens on our own open descriptor; a null `times` means
    // both timestamps are set to now.
    let rc = unsafe { libc::futimens(file.as_raw_fd(), std::ptr::null()) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "cannot stamp a cache lease");
    }
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

/// What [`sweep`] did: the directories it removed, and the entries it
/// could not handle (the sweep goes on past them).
#[derive(Debug, Default)]
pub struct Swept {
    pub removed: Vec<DirUse>,
    pub problems: Vec<CacheError>,
}

/// Removes the directories under `parent` last used more than `keep_secs`
/// ago and not in use, leftovers of interrupted removals and unpacks, and
/// orphan leases.
pub fn sweep(parent: &Path, keep_secs: u64) -> Swept {
    let cutoff = SystemTime::now()
        .checked_sub(Duration::from_secs(keep_secs))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut out = Swept::default();
    for dir in subdirs(parent) {
        match sweep_one(&dir, cutoff) {
            Ok(Some(gone)) => out.removed.push(gone),
            Ok(None) => {}
            Err(e) => out.problems.push(e),
        }
    }
    for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if let Some(dir) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".lease"))
        {
            // The lease of a directory removed by other means: removed
            // with its lock held, so no build takes it meanwhile.
            if !parent.join(dir).exists() {
                if let Ok(f) = File::options().write(true).open(&path) {
                    if f.try_lock().is_ok() && same_file(&f, &path) {
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        } else if is_dir && name.starts_with(".trash-") {
            // Left by a sweep that crashed mid-removal.
            if let Err(e) = remove_tree(&path) {
                out.problems.push(e);
            }
        } else if is_dir && name.starts_with('.') && older_than(&entry, STALE_SCRATCH) {
            // A temporary directory of an unpack that was killed (a
            // running one is younger than a day).
            if let Err(e) = remove_tree(&path) {
                out.problems.push(e);
            }
        }
    }
    out
}

/// How old a temporary entry must be to be taken for a killed build's.
const STALE_SCRATCH: u64 = 86_400;

fn older_than(entry: &fs::DirEntry, secs: u64) -> bool {
    entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() > secs)
}

/// Removes `dir` if it was last used before `cutoff` and no build holds it.
fn sweep_one(dir: &Path, cutoff: SystemTime) -> Result<Option<DirUse>, CacheError> {
    let Some(lease_path) = lease_path(dir) else {
        return Ok(None);
    };
    // Opened (or created) and locked exclusively: no build uses it, and
    // none can start to until the lock is released.
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
    if file.try_lock().is_err() || !same_file(&file, &lease_path) {
        return Ok(None);
    }
    let used = last_used(dir, (!created).then_some(&file));
    let used_at = SystemTime::UNIX_EPOCH + Duration::from_secs(used);
    if used_at >= cutoff {
        if created {
            // Kept as the record of the last use from now on.
            let _ = file.set_modified(used_at);
        }
        return Ok(None);
    }
    let trash = trash_name(dir);
    match fs::rename(dir, &trash) {
        Ok(()) => {}
        // Removed meanwhile by someone else (another gc, a plugin's own
        // pruning).
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let _ = fs::remove_file(&lease_path);
            return Ok(None);
        }
        Err(e) => return Err(io_err(dir)(e)),
    }
    // A build blocked on this lease file finds it unlinked, takes a fresh
    // one and goes on with a fresh directory.
    let _ = fs::remove_file(&lease_path);
    drop(file);
    let bytes = tree_bytes(&trash);
    remove_tree(&trash)?;
    Ok(Some(DirUse {
        path: dir.to_path_buf(),
        bytes,
        last_used: used,
        in_use: false,
    }))
}

/// Removes the entries of `parent` (scratch left by builds that were
/// killed) last modified more than `age_secs` ago. Returns their bytes and
/// the entries it could not remove.
pub fn sweep_scratch(parent: &Path, age_secs: u64) -> (u64, Vec<CacheError>) {
    let mut freed = 0;
    let mut problems = Vec::new();
    for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
        if !older_than(&entry, age_secs) {
            continue;
        }
        let path = entry.path();
        let bytes = tree_bytes(&path).max(entry.metadata().map(|m| m.len()).unwrap_or(0));
        let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&path)
        } else {
            fs::remove_file(&path).or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(io_err(&path)(e)),
            })
        };
        match gone {
            Ok(()) => freed += bytes,
            Err(e) => problems.push(e),
        }
    }
    (freed, problems)
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

/// Disk usage of the files under `dir` (blocks, each hard-linked file
/// once, links not followed).
pub fn tree_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut linked = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && (meta.nlink() == 1 || linked.insert(meta.ino())) {
                total += meta.blocks() * 512;
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

    /// Sets the mtime of `path` (a file or a directory) `secs` back.
    fn backdate(path: &Path, secs: u64) {
        File::open(path)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(secs))
            .unwrap();
    }

    /// Makes the last use of `dir` `secs` ago.
    fn age(dir: &Path, secs: u64) {
        backdate(&lease_path(dir).unwrap(), secs);
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
        assert!(listed
            .iter()
            .all(|d| d.bytes > 0 && d.bytes == listed[0].bytes));

        let swept = sweep(root, 7 * 86_400);
        assert!(swept.problems.is_empty(), "{:?}", swept.problems);
        let removed = swept.removed;
        let names: Vec<_> = removed.iter().map(|d| d.path.clone()).collect();
        assert_eq!(names, vec![root.join("old")]);
        assert_eq!(removed[0].bytes, listed[0].bytes);
        assert!(!root.join("old").exists());
        assert!(!root.join(".old.lease").exists());
        assert!(root.join("recent/sub/f").exists());
        assert!(root.join("busy/sub/f").exists(), "a leased dir was removed");

        drop(held);
        let removed = sweep(root, 7 * 86_400).removed;
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
        assert!(sweep(tmp.path(), 86_400).removed.is_empty());
        assert!(d.join("ro/f").exists());
        backdate(&d, 2 * 86_400);
        // The lease file the first sweep made carries the old mtime on.
        age(&d, 2 * 86_400);
        assert_eq!(sweep(tmp.path(), 86_400).removed.len(), 1);
        assert!(!d.exists());
        // Leftovers of an interrupted removal go too, and orphan leases.
        fs::create_dir_all(tmp.path().join(".trash-x-1/a")).unwrap();
        fs::write(tmp.path().join(".gone.lease"), b"").unwrap();
        // And a day-old temporary directory of a killed unpack.
        fs::create_dir_all(tmp.path().join(".rootfs-abc/usr")).unwrap();
        backdate(&tmp.path().join(".rootfs-abc"), 2 * 86_400);
        fs::create_dir_all(tmp.path().join(".rootfs-new")).unwrap();
        assert!(sweep(tmp.path(), 86_400).problems.is_empty());
        let left: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, [".rootfs-new"]);
    }

    /// A build waiting for the lease while a sweep removes the directory
    /// ends up holding the lease file the path names, which the next sweep
    /// sees (not the unlinked one, which it would not).
    #[test]
    fn a_lease_taken_during_a_removal_is_seen_by_the_next_sweep() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("repo");
        fs::create_dir_all(&d).unwrap();
        drop(lease(&d).unwrap());
        let lease_file = tmp.path().join(".repo.lease");
        let sweeper = File::options().write(true).open(&lease_file).unwrap();
        sweeper.lock().unwrap();
        let waiter = std::thread::spawn({
            let d = d.clone();
            move || {
                let l = lease(&d).unwrap();
                fs::create_dir_all(&d).unwrap();
                l
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        // What a sweep does: the directory aside, the lease file unlinked.
        fs::rename(&d, tmp.path().join(".trash-repo-1")).unwrap();
        fs::remove_file(&lease_file).unwrap();
        drop(sweeper);
        let held = waiter.join().unwrap();
        let swept = sweep(tmp.path(), 0);
        assert!(swept.removed.is_empty(), "a leased directory was removed");
        assert!(d.exists());
        drop(held);
        assert_eq!(sweep(tmp.path(), 0).removed.len(), 1);
    }

    #[test]
    fn scratch_older_than_the_age_goes() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("old/a")).unwrap();
        fs::write(tmp.path().join("old/a/f"), b"123").unwrap();
        fs::create_dir_all(tmp.path().join("new")).unwrap();
        backdate(&tmp.path().join("old"), 2 * 86_400);
        let (freed, problems) = sweep_scratch(tmp.path(), 86_400);
        assert!(freed > 0 && problems.is_empty(), "{freed} {problems:?}");
        assert!(!tmp.path().join("old").exists());
        assert!(tmp.path().join("new").exists());
    }
}
