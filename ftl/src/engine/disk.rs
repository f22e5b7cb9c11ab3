//! Size limits on what build steps write to the host's disk.
//!
//! The writable directories the engine hands steps are volumes of their
//! own ([`ftl_sandbox::volume`]: ext4 in a sparse image on a loop device),
//! so a step that writes too much fails with `ENOSPC` instead of filling
//! the host's disk:
//!
//! - a build step's scratch directory ([`StepContext::scratch`], where its
//!   outputs go: a virtualenv, `node_modules`, Maven's work tree) is a
//!   fresh volume of [`DiskLimits::scratch_bytes`], made when the step
//!   starts and gone when its layers are written;
//! - a build's view of a package cache ([`Exec::package_cache`]) has its
//!   upper directory, where the build's writes go, on a fresh volume of
//!   [`DiskLimits::cache_bytes`] (the shared cache below it is written
//!   only by ftl, promoting what it checked);
//! - what a verified app writes to its root (the overlay's upper
//!   directory) goes to a fresh volume of [`DiskLimits::scratch_bytes`].
//!
//! A step that fails with one of them full gets an error naming the mount
//! and the flag that raises its limit. Volumes need root; without it (or
//! without loop devices) the directories are plain ones, and every step
//! that writes to one says in its report that its writes are not limited,
//! as does a step that mounts a persistent directory
//! ([`Exec::persistent_dir`]) writable. [`reclaim`] removes what a killed
//! build left mounted.
//!
//! [`StepContext::scratch`]: crate::plugin::StepContext::scratch
//! [`Exec::persistent_dir`]: crate::plugin::Exec::persistent_dir
//! [`Exec::package_cache`]: crate::plugin::Exec::package_cache

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ftl_sandbox::volume::{self, Volume};

use super::EngineError;
use crate::plugin::{ExecOutput, ExecRequest, PluginError};

/// The size limits of the directories steps write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLimits {
    /// A build step's scratch directory (its outputs), in bytes.
    pub scratch_bytes: u64,
    /// Each package cache, in bytes.
    pub cache_bytes: u64,
}

/// The default limit of a step's scratch: 16 GiB (a virtualenv with torch
/// and its CUDA libraries takes about 6).
pub const DEFAULT_SCRATCH_BYTES: u64 = 16 << 30;
/// The default limit of each package cache: 32 GiB.
pub const DEFAULT_CACHE_BYTES: u64 = 32 << 30;

impl Default for DiskLimits {
    fn default() -> Self {
        DiskLimits {
            scratch_bytes: DEFAULT_SCRATCH_BYTES,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// `16 GiB`, `512 MiB`, `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else if value.fract() < 0.05 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Why this process cannot make volumes, when it cannot.
pub(crate) fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    (uid != 0).then(|| {
        format!(
            "ftl runs as uid {uid}, and size limits on steps' writable directories \
             need root (a loop device and a mount per directory)"
        )
    })
}

/// What a volume is, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A build step's scratch directory.
    Scratch,
    /// The package cache of this name.
    Cache(String),
}

/// A writable directory with a size limit.
#[derive(Debug, Clone)]
struct Bound {
    /// The volume's root on the host.
    root: PathBuf,
    /// Its filesystem's `st_dev`: what a mount below it is matched by.
    dev: u64,
    kind: Kind,
    bytes: u64,
}

/// The build's record of its limited directories, and of why others are
/// not limited.
#[derive(Debug, Default)]
pub(crate) struct Bounds {
    bounds: Mutex<Vec<Bound>>,
    /// Why a directory could not be limited (the last reason).
    why_not: Mutex<Option<String>>,
    /// Mount targets already warned about in this build.
    warned: Mutex<Vec<String>>,
    /// Where persistent directories are (never limited).
    persistent: PathBuf,
}

impl Bounds {
    /// The record of a build whose persistent directories are below
    /// `persistent`.
    pub(crate) fn new(persistent: PathBuf) -> Bounds {
        Bounds {
            persistent,
            ..Default::default()
        }
    }

    pub(crate) fn add(&self, root: &Path, kind: Kind, bytes: u64) {
        if let Ok(meta) = std::fs::metadata(root) {
            self.bounds.lock().expect("not poisoned").push(Bound {
                root: root.to_path_buf(),
                dev: meta.dev(),
                kind,
                bytes,
            });
        }
    }

    pub(crate) fn remove(&self, root: &Path) {
        self.bounds
            .lock()
            .expect("not poisoned")
            .retain(|b| b.root != root);
    }

    pub(crate) fn not_limited(&self, why: String) {
        *self.why_not.lock().expect("not poisoned") = Some(why);
    }

    /// The limited directory `host` lies in.
    fn of(&self, host: &Path) -> Option<Bound> {
        let dev = std::fs::metadata(host).ok()?.dev();
        self.bounds
            .lock()
            .expect("not poisoned")
            .iter()
            .find(|b| b.dev == dev)
            .cloned()
    }

    /// The warnings of a step: each writable mount that no limit covers.
    pub(crate) fn warnings(&self, request: &ExecRequest) -> Vec<String> {
        let why = self
            .why_not
            .lock()
            .expect("not poisoned")
            .clone()
            .or_else(unavailable)
            .unwrap_or_else(|| "it is not a directory the engine made".into());
        let mut out = Vec::new();
        for m in request.mounts.iter().filter(|m| m.writable) {
            if self.of(&m.host).is_some() {
                continue;
            }
            let why = if !self.persistent.as_os_str().is_empty()
                && m.host.starts_with(&self.persistent)
            {
                "it is a persistent directory, which is not size-limited (steps write \
                 to their scratch, or to a view of a package cache)"
            } else {
                why.as_str()
            };
            let text = format!(
                "{} ({}) has no size limit: {why}",
                m.target,
                m.host.display()
            );
            let mut warned = self.warned.lock().expect("not poisoned");
            if !warned.contains(&m.target) {
                warned.push(m.target.clone());
                tracing::warn!(step = %request.label, "{text}");
            }
            out.push(text);
        }
        out
    }

    /// `output` unless the step failed for want of space: then an error
    /// that says where the space ran out and how to raise the limit.
    pub(crate) fn check(
        &self,
        request: &ExecRequest,
        output: ExecOutput,
    ) -> Result<ExecOutput, PluginError> {
        if output.success() {
            return Ok(output);
        }
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let said_enospc = text.contains("No space left on device") || text.contains("ENOSPC");
        // The writable volumes, with their space now.
        let volumes: Vec<(&crate::plugin::ExecMount, Bound, volume::Usage)> = request
            .mounts
            .iter()
            .filter(|m| m.writable)
            .filter_map(|m| {
                let bound = self.of(&m.host)?;
                let usage = volume::usage(&bound.root).ok()?;
                Some((m, bound, usage))
            })
            .collect();
        // Full; or, when the step said so, nearly full (writeback may have
        // given back some of what ext4 held for delayed allocation).
        let full = volumes.iter().find(|(_, _, u)| u.is_full()).or_else(|| {
            volumes
                .iter()
                .filter(|(_, _, u)| said_enospc && u.available < u.bytes / 20)
                .min_by_key(|(_, _, u)| u.available)
        });
        if let Some((m, bound, usage)) = full {
            let (what, raise) = match &bound.kind {
                Kind::Scratch => (
                    "the step's output directories may hold",
                    "raise the limit with --step-disk SIZE".to_string(),
                ),
                Kind::Cache(_) => (
                    "a build may write to a package cache",
                    "raise the limit with --cache-disk SIZE".to_string(),
                ),
            };
            let name = match &bound.kind {
                Kind::Cache(name) => format!(", {name}"),
                Kind::Scratch => String::new(),
            };
            return Err(PluginError::new(format!(
                "`{}` ran out of disk space: {} is full ({} used of the {} that {what}{name}); \
                 {raise}\n{}",
                request.label,
                m.target,
                human_bytes(usage.used()),
                human_bytes(bound.bytes),
                output.tail(20)
            )));
        }
        if said_enospc {
            let limited: Vec<String> = request
                .mounts
                .iter()
                .filter(|m| m.writable)
                .filter_map(|m| {
                    let b = self.of(&m.host)?;
                    let flag = match b.kind {
                        Kind::Scratch => "--step-disk",
                        Kind::Cache(_) => "--cache-disk",
                    };
                    Some(format!("{} {} ({flag})", m.target, human_bytes(b.bytes)))
                })
                .collect();
            let limits = if limited.is_empty() {
                String::new()
            } else {
                format!("its writable directories hold {}, ", limited.join(", "))
            };
            let unlimited: Vec<String> = request
                .mounts
                .iter()
                .filter(|m| m.writable && self.of(&m.host).is_none())
                .map(|m| m.target.clone())
                .collect();
            let host = if unlimited.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} {} no size limit: what is written there takes the host's disk",
                    unlimited.join(", "),
                    if unlimited.len() == 1 { "has" } else { "have" }
                )
            };
            return Err(PluginError::new(format!(
                "`{}` ran out of disk space: {limits}its /tmp is a memory-backed tmpfs \
                 whose size --step-tmp SIZE sets{host}\n{}",
                request.label,
                output.tail(20)
            )));
        }
        Ok(output)
    }
}

/// A build step's scratch directory: a volume when this process can make
/// one, else a plain directory. Removed when dropped.
pub(crate) struct Scratch<'a> {
    bounds: &'a Bounds,
    /// Unmounted and its image deleted before the directory goes.
    volume: Option<Volume>,
    dir: tempfile::TempDir,
}

impl<'a> Scratch<'a> {
    /// A fresh scratch directory `PREFIX*` in `parent`, limited to `bytes`
    /// where it can be; `bounds` records which while it lives.
    pub(crate) fn new(
        parent: &Path,
        prefix: &str,
        bytes: u64,
        bounds: &'a Bounds,
    ) -> Result<Scratch<'a>, EngineError> {
        Self::made(parent, prefix, Some(bytes), bounds)
    }

    /// A plain scratch directory, for a step that does not write to it.
    pub(crate) fn plain(
        parent: &Path,
        prefix: &str,
        bounds: &'a Bounds,
    ) -> Result<Scratch<'a>, EngineError> {
        Self::made(parent, prefix, None, bounds)
    }

    fn made(
        parent: &Path,
        prefix: &str,
        bytes: Option<u64>,
        bounds: &'a Bounds,
    ) -> Result<Scratch<'a>, EngineError> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(parent)
            .map_err(|e| {
                EngineError::Internal(format!(
                    "cannot create a scratch directory in {}: {e}",
                    parent.display()
                ))
            })?;
        let volume = match (bytes, unavailable()) {
            (None, _) => None,
            (Some(_), Some(why)) => {
                bounds.not_limited(why);
                None
            }
            (Some(bytes), None) => {
                let image = image_of(dir.path());
                match Volume::create(&image, dir.path(), bytes) {
                    Ok(v) => {
                        bounds.add(v.path(), Kind::Scratch, bytes);
                        Some(v)
                    }
                    Err(e) => {
                        let why = format!(
                            "cannot make a volume for {}: {}",
                            dir.path().display(),
                            crate::error_chain(&e)
                        );
                        tracing::warn!("{why}");
                        bounds.not_limited(why);
                        None
                    }
                }
            }
        };
        Ok(Scratch {
            bounds,
            volume,
            dir,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if let Some(v) = &self.volume {
            self.bounds.remove(self.dir.path());
            if let Ok(u) = volume::usage(v.path()) {
                tracing::debug!(
                    dir = %v.path().display(),
                    used = u.used(),
                    limit = v.bytes(),
                    "a step's scratch volume at its end"
                );
            }
        }
    }
}

/// The volume for what a verified app writes to its root: mounted on
/// `scratch/rw`, where the verification overlay's upper directory goes.
pub(crate) fn verify_volume(scratch: &Path, bytes: u64) -> Option<Volume> {
    if let Some(why) = unavailable() {
        tracing::debug!(%why, "what the verified app writes is not size-limited");
        return None;
    }
    Volume::create(&scratch.join(".rw.img"), &scratch.join("rw"), bytes)
        .map_err(|e| {
            tracing::warn!(
                error = %crate::error_chain(&e),
                "what the verified app writes is not size-limited"
            );
        })
        .ok()
}

/// A failed verification, saying so when the app filled the space its
/// root filesystem may take.
pub(crate) fn explain_full_root(volume: Option<&Volume>, e: EngineError) -> EngineError {
    match (e, volume) {
        (EngineError::Verify { message, output }, Some(v))
            if volume::usage(v.path()).is_ok_and(|u| u.is_full()) =>
        {
            EngineError::Verify {
                message: format!(
                    "{message}; the app filled the {} it may write to its root filesystem \
                     (raise it with --step-disk SIZE)",
                    human_bytes(v.bytes())
                ),
                output,
            }
        }
        (e, _) => e,
    }
}

/// The image of the volume mounted on `dir`: the sibling `.NAME.img`.
fn image_of(dir: &Path) -> PathBuf {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    dir.with_file_name(format!(".{name}.img"))
}

/// The volume images `.NAME.img` (and `.NAME.img.new`, one being made)
/// among the entries of `dir`, each with its mountpoint `dir/NAME`.
fn images_in(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let hidden = name.strip_prefix('.')?;
            let stem = hidden
                .strip_suffix(".img")
                .or_else(|| hidden.strip_suffix(".img.new"))?;
            Some((entry.path(), dir.join(stem)))
        })
        .collect()
}

/// Unmounts what a killed build left mounted below `dir`, then removes it.
fn remove_scratch(dir: &Path) {
    unmount_below(dir);
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(
            error = %e,
            dir = %dir.display(),
            "cannot remove a killed build's scratch"
        );
    }
}

/// Unmounts everything mounted at or below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return;
    };
    let mut points: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(&dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        let _ = volume::unmount(&p);
    }
}

/// Removes what killed builds left in `cache_dir`: the volumes of
/// processes that are gone, unmounted and their images deleted (with the
/// directory of a verification or a package cache's view, and everything
/// mounted in it), and the overlays of base layers their steps ran on.
/// Returns the paths it cleaned.
pub fn reclaim(cache_dir: &Path) -> Vec<PathBuf> {
    let mut cleaned = Vec::new();
    if unavailable().is_some() {
        return cleaned;
    }
    let warn = |e: ftl_sandbox::SandboxError| {
        tracing::warn!(
            error = %crate::error_chain(&e),
            "cannot remove a volume a killed build left"
        );
    };
    let tmp = cache_dir.join("tmp");
    for (image, mountpoint) in images_in(&tmp) {
        match volume::reclaim(&image, &mountpoint) {
            Ok(true) => cleaned.push(mountpoint),
            Ok(false) => {}
            Err(e) => warn(e),
        }
    }
    // A build's overlay of its base's layers, mounted beside the lock the
    // build held.
    for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let dir = entry.path();
        if !entry.file_name().to_string_lossy().starts_with("rootfs-") {
            continue;
        }
        let free = std::fs::File::options()
            .write(true)
            .open(dir.join(super::base::ROOTFS_SCRATCH_LOCK))
            .is_ok_and(|f| f.try_lock().is_ok());
        if free {
            remove_scratch(&dir);
            cleaned.push(dir);
        }
    }
    // The volume (`rw`) of a verification or a package cache's view lies
    // inside its directory, with the overlay mounted beside it. (Only
    // there: a build step's scratch holds what the step wrote, never to be
    // taken for the engine's.)
    for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("verify-") || name.starts_with("cache-"))
            || !entry.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        match volume::reclaim(&dir.join(".rw.img"), &dir.join("rw")) {
            Ok(true) => {
                remove_scratch(&dir);
                cleaned.push(dir);
            }
            Ok(false) => {}
            Err(e) => warn(e),
        }
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed step that says it ran out of space, on no volume of its
    /// own (its /tmp, or no root), is told where the limits are.
    #[test]
    fn a_step_out_of_space_elsewhere_is_told_of_tmp() {
        let bounds = Bounds::default();
        let dir = tempfile::tempdir().unwrap();
        let mut req = ExecRequest::new("pip install", ["pip"]);
        req.mounts.push(crate::plugin::ExecMount {
            host: dir.path().to_path_buf(),
            target: "/env".into(),
            writable: true,
        });
        let out = |code, stderr: &str| ExecOutput {
            code: Some(code),
            stderr: stderr.as_bytes().to_vec(),
            ..Default::default()
        };
        let err = bounds
            .check(&req, out(1, "OSError: [Errno 28] No space left on device"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("`pip install` ran out of disk space: its /tmp")
                && err.contains("--step-tmp")
                && err.contains("/env has no size limit"),
            "{err}"
        );
        assert!(bounds.check(&req, out(1, "SyntaxError")).is_ok());
        assert!(bounds.check(&req, out(0, "ENOSPC")).is_ok());
        // No volume, so a warning for the writable mount.
        let warned = bounds.warnings(&req);
        assert_eq!(warned.len(), 1);
        assert!(warned[0].starts_with("/env ("), "{warned:?}");
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(16 << 30), "16 GiB");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(64 << 20), "64 MiB");
    }
}
