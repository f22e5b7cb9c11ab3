//! Package caches that one build cannot poison for another.
//!
//! A package manager's cache (npm's `_cacache`, Maven's local repository)
//! saves downloads across builds, and every build step that uses it runs
//! someone else's code (install scripts, Maven plugins). So a step never
//! gets the shared cache itself:
//!
//! * It gets a **view** of it for the length of its build: an overlay whose
//!   lower layer is the shared cache, read-only, and whose upper layer is a
//!   directory of this build's own (or, where ftl cannot mount, a copy of
//!   the shared cache). What the step writes, replaces or deletes stays in
//!   the view and goes with it.
//! * After the build's steps succeed, ftl **promotes** from what the build
//!   wrote only what its [`CacheTrust`] allows, never replacing a file the
//!   shared cache has: files whose path names the digest of their content,
//!   checked by hashing them ([`CacheTrust::ContentAddressed`]), or new
//!   files of a cache private to one project ([`CacheTrust::AddOnly`]).
//!   Promotion reads the build's files by descriptor, following no link,
//!   and writes new files as ftl's own (`0644`, no link, no special file).
//! * Each shared cache belongs to one **scope** (`BuildRequest::cache_scope`:
//!   `ftl serve` gives each token its own), so builds of another tenant
//!   never read it.

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use sha2::Digest as _;

use crate::beneath::{Dir, Kind};
use crate::plugin::{CacheTrust, PluginError};

/// A build's view of one shared package cache.
pub(crate) struct CacheView {
    /// What steps mount read-write.
    merged: PathBuf,
    /// Where this build's own writes are: the overlay's upper directory, or
    /// the copy.
    written: PathBuf,
    shared: PathBuf,
    trust: CacheTrust,
    mounted: bool,
    /// The size-limited volume holding the upper directory, if any
    /// (unmounted after the overlay, before the directory goes).
    volume: Option<ftl_sandbox::volume::Volume>,
    _dir: tempfile::TempDir,
}

/// What one promotion added to a shared cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Promoted {
    pub files: u64,
    pub bytes: u64,
    /// Files the build wrote that were not promoted (unverifiable, a digest
    /// that did not match, already present).
    pub refused: u64,
}

fn plugin_io(what: &str, path: &Path, e: impl std::fmt::Display) -> PluginError {
    PluginError::new(format!("{what} {}: {e}", path.display()))
}

impl CacheView {
    /// A view of `shared` for one build, in a new directory below `tmp`.
    /// `ids`: the host ids a step's root maps to, when ftl runs as root
    /// (the overlay is then made of idmapped views, so that the shared
    /// cache, owned by host root, reads as the step's root's). `limit`:
    /// the size of the volume the upper directory goes on, when ftl can
    /// make one (what the build's steps may write to the view).
    pub(crate) fn open(
        shared: &Path,
        tmp: &Path,
        trust: CacheTrust,
        ids: Option<&ftl_sandbox::IdRange>,
        limit: Option<u64>,
    ) -> Result<CacheView, PluginError> {
        std::fs::create_dir_all(tmp).map_err(|e| plugin_io("cannot create", tmp, e))?;
        let dir = tempfile::Builder::new()
            .prefix("cache-")
            .tempdir_in(tmp)
            .map_err(|e| plugin_io("cannot create a directory in", tmp, e))?;
        let rw = dir.path().join("rw");
        let volume = limit.and_then(|bytes| {
            ftl_sandbox::volume::Volume::create(&dir.path().join(".rw.img"), &rw, bytes)
                .map_err(|e| {
                    tracing::warn!(
                        error = %crate::error_chain(&e),
                        cache = %shared.display(),
                        "what steps write to the package cache is not size-limited"
                    );
                })
                .ok()
        });
        let (upper, work, merged) = (rw.join("upper"), rw.join("work"), dir.path().join("merged"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).map_err(|e| plugin_io("cannot create", d, e))?;
        }
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            match super::base::overlay(&[shared], &rw, &merged, dir.path(), ids) {
                Ok(()) => {
                    return Ok(CacheView {
                        merged,
                        written: upper,
                        shared: shared.to_path_buf(),
                        trust,
                        mounted: true,
                        volume,
                        _dir: dir,
                    })
                }
                Err(e) => {
                    tracing::debug!(error = %e, cache = %shared.display(), "no overlay for the package cache; copying it")
                }
            }
        }
        // Without a mount: a copy, so that nothing a step does reaches
        // the shared files.
        copy_tree(shared, &merged)?;
        Ok(CacheView {
            written: merged.clone(),
            merged,
            shared: shared.to_path_buf(),
            trust,
            mounted: false,
            volume: None,
            _dir: dir,
        })
    }

    /// Whether what steps write to the view is size-limited.
    pub(crate) fn limited(&self) -> bool {
        self.mounted && self.volume.is_some()
    }

    /// The directory steps mount read-write.
    pub(crate) fn path(&self) -> &Path {
        &self.merged
    }

    /// Adds to the shared cache what this build wrote and its trust lets
    /// through. Call only after the build's steps succeeded.
    pub(crate) fn promote(&self) -> Result<Promoted, PluginError> {
        let written = Dir::open(&self.written).map_err(|e| PluginError::new(e.to_string()))?;
        let shared = &self.shared;
        let mut out = Promoted::default();
        written.walk::<WalkError>(&mut |rel, node| {
            if node.kind != Kind::File {
                // Directories are walked; links, whiteouts (character
                // devices) and other special files are never promoted.
                if node.kind != Kind::Dir {
                    out.refused += 1;
                }
                return Ok(node.kind == Kind::Dir);
            }
            let to = shared.join(rel);
            if std::fs::symlink_metadata(&to).is_ok() {
                // Never replaced: a copied-up or rewritten file is this
                // build's own business.
                if !self.mounted {
                    return Ok(false);
                }
                out.refused += 1;
                return Ok(false);
            }
            let expect = match &self.trust {
                CacheTrust::ContentAddressed { dir } => {
                    let Some(addr) = content_address(rel, Path::new(dir)) else {
                        out.refused += 1;
                        return Ok(false);
                    };
                    Some(addr)
                }
                CacheTrust::AddOnly => None,
            };
            let mut file = written
                .open_file(rel)
                .map_err(|e| PluginError::new(e.to_string()))?;
            let md = file
                .metadata()
                .map_err(|e| plugin_io("cannot read", &self.written.join(rel), e))?;
            use std::os::unix::fs::MetadataExt;
            // A sparse file (a hole of terabytes costs a step nothing), one
            // over the size a package could have, or one past what a build
            // may add: not kept.
            let sparse = md.blocks().saturating_mul(512) + 64 * 1024 < md.len();
            if sparse
                || md.len() > MAX_ENTRY_BYTES
                || out.bytes + md.len() > MAX_PROMOTED_BYTES
                || out.files >= MAX_PROMOTED_FILES
            {
                tracing::warn!(file = %rel.display(), size = md.len(), sparse, "a package cache entry past ftl's limits; not kept");
                out.refused += 1;
                return Ok(false);
            }
            match add_file(shared, rel, &mut file, md.len(), expect)? {
                Some(n) => {
                    out.files += 1;
                    out.bytes += n;
                }
                None => {
                    tracing::warn!(file = %rel.display(), "a build step left a package cache entry whose content does not match its name; not kept");
                    out.refused += 1;
                }
            }
            Ok(false)
        })
        .map_err(|WalkError(e)| e)?;
        Ok(out)
    }
}

/// An error of [`CacheView::promote`]'s walk.
struct WalkError(PluginError);

impl From<crate::beneath::BeneathError> for WalkError {
    fn from(e: crate::beneath::BeneathError) -> Self {
        WalkError(PluginError::new(crate::error_chain(&e)))
    }
}

impl From<PluginError> for WalkError {
    fn from(e: PluginError) -> Self {
        WalkError(e)
    }
}

impl Drop for CacheView {
    fn drop(&mut self) {
        if self.mounted {
            super::base::detach(&self.merged);
        }
    }
}

/// `(algorithm, hex digest)` of a content-addressed path
/// `DIR/<algorithm>/<hex in parts>` (cacache: `content-v2/sha512/ab/cd/ef…`).
fn content_address(rel: &Path, dir: &Path) -> Option<(&'static str, String)> {
    let rest = rel.strip_prefix(dir).ok()?;
    let mut parts = rest.components().map(|c| match c {
        Component::Normal(s) => s.to_str(),
        _ => None,
    });
    let algorithm = match parts.next()?? {
        "sha512" => "sha512",
        "sha256" => "sha256",
        // sha1 (old lockfiles) is not checked here: npm fetches it again.
        _ => return None,
    };
    let mut hex = String::new();
    for p in parts {
        hex.push_str(p?);
    }
    let want_len = if algorithm == "sha512" { 128 } else { 64 };
    (hex.len() == want_len && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| (algorithm, hex.to_ascii_lowercase()))
}

/// The largest package cache entry ftl keeps (a wheel or jar is far
/// smaller; an npm tarball is limited to about 1 GB by the registry).
const MAX_ENTRY_BYTES: u64 = 2 << 30;
/// What one build may add to one shared cache.
const MAX_PROMOTED_BYTES: u64 = 8 << 30;
const MAX_PROMOTED_FILES: u64 = 200_000;

/// Copies at most `len` bytes of `from` into the new file `shared/rel`,
/// made by ftl (`0644`): a temporary file linked into place, so that a
/// concurrent promotion of the same file, or a reader, never sees half of
/// it, and nothing is replaced. With `expect` (an algorithm and a hex
/// digest), the content is hashed on the way and kept only if it matches:
/// `Ok(None)` when it does not. Returns the bytes kept.
fn add_file(
    shared: &Path,
    rel: &Path,
    from: &mut std::fs::File,
    len: u64,
    expect: Option<(&'static str, String)>,
) -> Result<Option<u64>, PluginError> {
    use std::io::Write;
    let to = shared.join(rel);
    let parent = to.parent().unwrap_or(shared);
    std::fs::create_dir_all(parent).map_err(|e| plugin_io("cannot create", parent, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".promote-")
        .tempfile_in(parent)
        .map_err(|e| plugin_io("cannot create a file in", parent, e))?;
    enum Hasher {
        None,
        Sha256(sha2::Sha256),
        Sha512(sha2::Sha512),
    }
    let mut hasher = match expect.as_ref().map(|(a, _)| *a) {
        Some("sha512") => Hasher::Sha512(sha2::Sha512::new()),
        Some(_) => Hasher::Sha256(sha2::Sha256::new()),
        None => Hasher::None,
    };
    let mut limited = Read::take(from, len);
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = limited
            .read(&mut buf)
            .map_err(|e| plugin_io("cannot read", &to, e))?;
        if n == 0 {
            break;
        }
        match &mut hasher {
            Hasher::None => {}
            Hasher::Sha256(h) => h.update(&buf[..n]),
            Hasher::Sha512(h) => h.update(&buf[..n]),
        }
        tmp.write_all(&buf[..n])
            .map_err(|e| plugin_io("cannot write", tmp.path(), e))?;
        total += n as u64;
    }
    let got = match hasher {
        Hasher::None => None,
        Hasher::Sha256(h) => Some(hex::encode(h.finalize())),
        Hasher::Sha512(h) => Some(hex::encode(h.finalize())),
    };
    if let (Some((_, want)), Some(got)) = (&expect, &got) {
        if want != got {
            return Ok(None);
        }
    }
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| plugin_io("cannot write", tmp.path(), e))?;
    }
    match std::fs::hard_link(tmp.path(), &to) {
        Ok(()) => Ok(Some(total)),
        // Another build promoted it first.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Some(0)),
        Err(e) => Err(plugin_io("cannot add", &to, e)),
    }
}

/// Copies the tree `from` into the existing directory `to` (`cp -a`,
/// reflinks where the filesystem has them).
fn copy_tree(from: &Path, to: &Path) -> Result<(), PluginError> {
    let status = std::process::Command::new("cp")
        .args(["-a", "--reflink=auto", "--"])
        .arg(from.join("."))
        .arg(to)
        .status()
        .map_err(|e| plugin_io("cannot run cp for", from, e))?;
    if !status.success() {
        return Err(PluginError::new(format!(
            "cannot copy the package cache {} ({status})",
            from.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_addresses_are_parsed_from_cacache_paths() {
        let d = Path::new("npm/_cacache/content-v2");
        let hex = "ab".repeat(64);
        let rel = d
            .join("sha512")
            .join(&hex[..2])
            .join(&hex[2..4])
            .join(&hex[4..]);
        assert_eq!(content_address(&rel, d), Some(("sha512", hex.clone())));
        assert_eq!(content_address(&d.join("sha512/ab"), d), None);
        assert_eq!(content_address(&d.join("md5").join(&hex), d), None);
        assert_eq!(
            content_address(Path::new("npm/_cacache/index-v5/ab/cd/x"), d),
            None
        );
    }
}

#[cfg(test)]
mod view_tests {
    use super::*;

    /// Runs `script` with `$1` = the view, as the step's root would (the
    /// mapped host id when ftl is root, else as ourselves).
    fn as_step(view: &Path, script: &str) {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let ids = ftl_sandbox::IdRange::DEFAULT;
        let mut cmd = if root {
            let mut c = std::process::Command::new("setpriv");
            c.arg(format!("--reuid={}", ids.uid))
                .arg(format!("--regid={}", ids.gid))
                .args(["--clear-groups", "sh"]);
            c
        } else {
            std::process::Command::new("sh")
        };
        let out = cmd.args(["-ec", script, "sh"]).arg(view).output().unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn cacache_path(data: &[u8]) -> PathBuf {
        let hex = hex::encode(sha2::Sha512::digest(data));
        Path::new("content-v2/sha512")
            .join(&hex[..2])
            .join(&hex[2..4])
            .join(&hex[4..])
    }

    #[test]
    fn a_step_cannot_change_the_shared_cache_through_its_view() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        let old = cacache_path(b"old tarball");
        std::fs::create_dir_all(shared.join(old.parent().unwrap())).unwrap();
        std::fs::write(shared.join(&old), b"old tarball").unwrap();
        std::fs::write(shared.join("index"), b"old index").unwrap();
        let trust = CacheTrust::ContentAddressed { dir: "content-v2" };
        let ids = ftl_sandbox::IdRange::DEFAULT;
        let view =
            CacheView::open(&shared, &tmp.path().join("tmp"), trust, Some(&ids), None).unwrap();
        let new = cacache_path(b"new tarball");
        let fake = cacache_path(b"what the name says");
        as_step(
            view.path(),
            &format!(
                "echo evil > \"$1/{old}\"; echo evil > \"$1/index\"; echo evil > \"$1/planted\"; \
                 mkdir -p \"$1/{nd}\" \"$1/{fd}\"; printf 'new tarball' > \"$1/{new}\"; \
                 echo evil > \"$1/{fake}\"; ln -s /etc/shadow \"$1/content-v2/link\"; \
                 rm \"$1/index\"",
                old = old.display(),
                new = new.display(),
                nd = new.parent().unwrap().display(),
                fake = fake.display(),
                fd = fake.parent().unwrap().display(),
            ),
        );
        // While the build runs, the shared cache is as it was.
        assert_eq!(std::fs::read(shared.join(&old)).unwrap(), b"old tarball");
        assert_eq!(std::fs::read(shared.join("index")).unwrap(), b"old index");
        let p = view.promote().unwrap();
        drop(view);
        // After: only the new entry whose content matches its name.
        assert_eq!(p.files, 1, "{p:?}");
        assert_eq!(std::fs::read(shared.join(&new)).unwrap(), b"new tarball");
        assert_eq!(std::fs::read(shared.join(&old)).unwrap(), b"old tarball");
        assert_eq!(std::fs::read(shared.join("index")).unwrap(), b"old index");
        for gone in [
            shared.join("planted"),
            shared.join(&fake),
            shared.join("content-v2/link"),
        ] {
            assert!(
                std::fs::symlink_metadata(&gone).is_err(),
                "{}",
                gone.display()
            );
        }
        // Promoted files are ftl's own.
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(shared.join(&new)).unwrap();
        // SAFETY: geteuid has no preconditions.
        assert_eq!(md.uid(), unsafe { libc::geteuid() });
        assert_eq!(md.mode() & 0o7777, 0o644);
    }

    /// A step can leave a file of terabytes that costs it nothing (a
    /// hole): promotion read it whole into memory, and `ftl serve` died.
    #[test]
    fn a_sparse_entry_is_refused_without_reading_it() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        let ids = ftl_sandbox::IdRange::DEFAULT;
        let trust = CacheTrust::ContentAddressed { dir: "content-v2" };
        let view =
            CacheView::open(&shared, &tmp.path().join("tmp"), trust, Some(&ids), None).unwrap();
        let name = cacache_path(b"anything");
        as_step(
            view.path(),
            &format!(
                "mkdir -p \"$1/{d}\" && truncate -s 8T \"$1/{n}\"",
                d = name.parent().unwrap().display(),
                n = name.display()
            ),
        );
        let p = view.promote().unwrap();
        assert_eq!((p.files, p.refused), (0, 1), "{p:?}");
        assert!(std::fs::symlink_metadata(shared.join(&name)).is_err());
    }

    #[test]
    fn add_only_keeps_new_files_and_never_a_changed_one() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir_all(shared.join("org/x/1.0")).unwrap();
        std::fs::write(shared.join("org/x/1.0/x-1.0.jar"), b"real jar").unwrap();
        let ids = ftl_sandbox::IdRange::DEFAULT;
        let view = CacheView::open(
            &shared,
            &tmp.path().join("tmp"),
            CacheTrust::AddOnly,
            Some(&ids),
            None,
        )
        .unwrap();
        as_step(
            view.path(),
            "echo evil > \"$1/org/x/1.0/x-1.0.jar\"; mkdir -p \"$1/org/y/2.0\"; \
             echo jar > \"$1/org/y/2.0/y-2.0.jar\"",
        );
        let p = view.promote().unwrap();
        drop(view);
        assert_eq!(p.files, 1, "{p:?}");
        assert_eq!(
            std::fs::read(shared.join("org/x/1.0/x-1.0.jar")).unwrap(),
            b"real jar"
        );
        assert_eq!(
            std::fs::read(shared.join("org/y/2.0/y-2.0.jar")).unwrap(),
            b"jar\n"
        );
    }
}
