//! Unpacking image layers into a root filesystem for the sandbox.
//!
//! Layers apply in order: whiteouts (`.wh.NAME`) remove what lower layers
//! put there, opaque markers (`.wh..wh..opq`) empty a directory of lower
//! layers' entries, hardlinks are kept, device nodes, fifos and sockets are
//! skipped (the sandbox makes its own /dev), and no entry can land outside
//! the target: `..` is refused and symlinks in parent paths resolve inside
//! the root, as in a chroot.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// An error unpacking a layer.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("failed to read layer {layer}")]
    Read {
        layer: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer} has entry `{entry}` that escapes the root filesystem")]
    Escape { layer: PathBuf, entry: String },
    #[error("failed to unpack `{entry}` of layer {layer} to {path}")]
    Write {
        layer: PathBuf,
        entry: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Resolves `rel` below `root` as if `root` were `/`: symlinks in parent
/// components are followed inside the root; the last component is not
/// followed. `..` never climbs above the root.
pub fn secure_join(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let mut pending: Vec<OsString> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .rev()
        .collect();
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let candidate = root.join(&resolved).join(&c);
        let is_last = pending.is_empty();
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() && !is_last => {
                links += 1;
                if links > 255 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "too many levels of symbolic links",
                    ));
                }
                let target = fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for comp in target.components().rev() {
                    match comp {
                        Component::Normal(n) => pending.push(n.to_os_string()),
                        Component::ParentDir => pending.push(OsString::from("..")),
                        _ => {}
                    }
                }
            }
            _ => resolved.push(&c),
        }
    }
    Ok(root.join(resolved))
}

/// Checks a tar entry name and returns it relative, or `None` if it climbs.
fn clean_entry(name: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Statistics of an unpack.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub whiteouts: u64,
    pub skipped_special: u64,
}

/// Applies one gzip-compressed (or plain) tar layer onto `root`.
pub fn apply_layer(root: &Path, layer: &Path, stats: &mut UnpackStats) -> Result<(), UnpackError> {
    let read_err = |source| UnpackError::Read {
        layer: layer.to_path_buf(),
        source,
    };
    let mut file = File::open(layer).map_err(read_err)?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).map_err(read_err)?;
    let file = File::open(layer).map_err(read_err)?;
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::with_capacity(1 << 20, file),
        ))
    } else {
        Box::new(io::BufReader::with_capacity(1 << 20, file))
    };
    let mut archive = tar::Archive::new(reader);
    // Paths this layer created: an opaque marker only hides lower layers.
    let mut created: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let raw = entry.path().map_err(read_err)?.into_owned();
        let name = raw.display().to_string();
        let rel = clean_entry(&raw).ok_or_else(|| UnpackError::Escape {
            layer: layer.to_path_buf(),
            entry: name.clone(),
        })?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let write_err = |path: &Path, source| UnpackError::Write {
            layer: layer.to_path_buf(),
            entry: name.clone(),
            path: path.to_path_buf(),
            source,
        };
        let file_name = rel
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if file_name == ".wh..wh..opq" {
            stats.whiteouts += 1;
            let dir = secure_join(root, &parent_rel).map_err(|e| write_err(&parent_rel, e))?;
            if let Ok(rd) = fs::read_dir(&dir) {
                for child in rd.flatten() {
                    let child_rel = parent_rel.join(child.file_name());
                    if !created.contains(&child_rel) {
                        remove_any(&child.path()).map_err(|e| write_err(&child.path(), e))?;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            stats.whiteouts += 1;
            let target =
                secure_join(root, &parent_rel.join(hidden)).map_err(|e| write_err(&rel, e))?;
            remove_any(&target).map_err(|e| write_err(&target, e))?;
            continue;
        }
        let dest = secure_join(root, &rel).map_err(|e| write_err(&rel, e))?;
        if !dest.starts_with(root) {
            return Err(UnpackError::Escape {
                layer: layer.to_path_buf(),
                entry: name,
            });
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| write_err(parent, e))?;
        }
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let kind = header.entry_type();
        let existing = fs::symlink_metadata(&dest).ok();
        if let Some(m) = &existing {
            if !(kind.is_dir() && m.is_dir()) {
                remove_any(&dest).map_err(|e| write_err(&dest, e))?;
            }
        }
        match kind {
            tar::EntryType::Directory => {
                fs::create_dir_all(&dest).map_err(|e| write_err(&dest, e))?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                    .map_err(|e| write_err(&dest, e))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut out = File::create(&dest).map_err(|e| write_err(&dest, e))?;
                io::copy(&mut entry, &mut out).map_err(|e| write_err(&dest, e))?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                    .map_err(|e| write_err(&dest, e))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(read_err)?
                    .unwrap_or_default()
                    .into_owned();
                std::os::unix::fs::symlink(&target, &dest).map_err(|e| write_err(&dest, e))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(read_err)?
                    .unwrap_or_default()
                    .into_owned();
                let target_rel = clean_entry(&target).ok_or_else(|| UnpackError::Escape {
                    layer: layer.to_path_buf(),
                    entry: name.clone(),
                })?;
                let src = secure_join(root, &target_rel).map_err(|e| write_err(&target_rel, e))?;
                if let Err(e) = fs::hard_link(&src, &dest) {
                    tracing::warn!(entry = %name, target = %target.display(), error = %e, "skipping hardlink whose target is missing");
                    continue;
                }
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                stats.skipped_special += 1;
                tracing::debug!(entry = %name, "skipping special file");
                continue;
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            other => {
                tracing::debug!(entry = %name, kind = ?other, "skipping unsupported tar entry");
                stats.skipped_special += 1;
                continue;
            }
        }
        if kind != tar::EntryType::Link {
            // Ownership matters for what runs in the rootfs; only root can set it.
            if nix_is_root() {
                let _ = std::os::unix::fs::lchown(&dest, Some(uid), Some(gid));
            } else if kind.is_dir() {
                let _ = chown(&dest, None, None);
            }
        }
        stats.entries += 1;
        created.insert(rel);
    }
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Unpacks `layers` in order into `dest`, which must not exist: the work is
/// done in a sibling temp directory and renamed into place, so a crash or a
/// concurrent unpack never leaves a half-made rootfs at `dest`.
pub fn unpack_rootfs(layers: &[PathBuf], dest: &Path) -> Result<UnpackStats, UnpackError> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let werr = |path: &Path, source| UnpackError::Write {
        layer: PathBuf::new(),
        entry: String::new(),
        path: path.to_path_buf(),
        source,
    };
    fs::create_dir_all(parent).map_err(|e| werr(parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".rootfs-")
        .tempdir_in(parent)
        .map_err(|e| werr(parent, e))?;
    let mut stats = UnpackStats::default();
    for layer in layers {
        apply_layer(tmp.path(), layer, &mut stats)?;
    }
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))
        .map_err(|e| werr(tmp.path(), e))?;
    let tmp = tmp.keep();
    if let Err(e) = fs::rename(&tmp, dest) {
        let _ = fs::remove_dir_all(&tmp);
        // Another process finished the same rootfs first: use theirs.
        if !dest.is_dir() {
            return Err(werr(dest, e));
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(dir: &Path, name: &str, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> PathBuf {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let bytes = b.into_inner().unwrap();
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, name, target).unwrap();
    }

    #[test]
    fn whiteouts_opaque_hardlinks_and_escapes() {
        let work = tempfile::tempdir().unwrap();
        let l1 = layer(work.path(), "l1", |b| {
            file(b, "etc/a", b"a");
            file(b, "etc/b", b"b");
            file(b, "opq/old", b"old");
            link(b, tar::EntryType::Symlink, "evil", "/");
            link(b, tar::EntryType::Link, "etc/a2", "etc/a");
        });
        let l2 = layer(work.path(), "l2", |b| {
            file(b, "etc/.wh.b", b"");
            file(b, "opq/new", b"new");
            file(b, "opq/.wh..wh..opq", b"");
            // Through a symlink to "/": must land inside the root.
            file(b, "evil/etc/c", b"c");
        });
        let dest = work.path().join("rootfs");
        let stats = unpack_rootfs(&[l1, l2], &dest).unwrap();
        assert_eq!(fs::read(dest.join("etc/a")).unwrap(), b"a");
        assert!(!dest.join("etc/b").exists());
        assert!(!dest.join("opq/old").exists());
        assert_eq!(fs::read(dest.join("opq/new")).unwrap(), b"new");
        assert_eq!(fs::read(dest.join("etc/c")).unwrap(), b"c");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::metadata(dest.join("etc/a2")).unwrap().ino(),
            fs::metadata(dest.join("etc/a")).unwrap().ino()
        );
        assert_eq!(stats.whiteouts, 2);

        // `..` is refused, leaving nothing at the destination.
        let bad = layer(work.path(), "bad", |b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // Bypass the builder's own check by writing the name raw.
            h.as_old_mut().name[..9].copy_from_slice(b"../escape");
            h.set_cksum();
            b.append(&h, &b"x"[..]).unwrap();
        });
        let dest2 = work.path().join("rootfs2");
        let err = unpack_rootfs(&[bad], &dest2).unwrap_err();
        assert!(matches!(err, UnpackError::Escape { .. }), "{err}");
        assert!(!dest2.exists());
        assert!(!work.path().join("escape").exists());
    }
}
