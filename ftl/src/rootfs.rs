//! Unpacking image layers into directories for the sandbox.
//!
//! One extractor, two ways of treating whiteouts:
//!
//! - [`Whiteouts::Overlay`]: a layer unpacks alone into its own directory,
//!   stored the way overlayfs reads a lower layer (as containerd's overlay
//!   snapshotter stores it): `.wh.NAME` becomes a 0/0 character device
//!   `NAME`, an opaque marker `.wh..wh..opq` becomes the xattr
//!   `trusted.overlay.opaque=y` on its directory. Layers unpack once per
//!   digest, in parallel, and a root is an overlay of them.
//! - [`Whiteouts::Apply`]: layers apply in order onto one merged tree
//!   (where overlayfs is unavailable): whiteouts remove what lower layers
//!   put there, opaque markers empty a directory of lower layers' entries.
//!
//! Either way hardlinks are kept, device nodes, fifos and sockets are
//! skipped (the sandbox makes its own /dev), modes, owners (as root) and
//! mtimes are kept, and no entry can land outside the target: `..` is
//! refused and a symlink in a parent path resolves inside the target, as
//! in a chroot. Paths are never resolved by the kernel from the top: the
//! extractor walks directory file descriptors (`openat` with `O_NOFOLLOW`,
//! `mkdirat`, `linkat`, ...), keeping the chain of the current entry's
//! parents open, so a tar's run of entries in one directory costs one
//! lookup per entry, not one per path component.

use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
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

/// How whiteouts and opaque markers are stored (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// As overlayfs reads a lower layer: the layer's own directory.
    Overlay,
    /// Applied onto the layers below, in one merged tree.
    Apply,
}

/// The xattr overlayfs reads as "this directory hides lower layers'".
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Statistics of an unpack.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub whiteouts: u64,
    pub skipped_special: u64,
    /// Bytes of regular files' contents.
    pub bytes: u64,
}

impl UnpackStats {
    fn add(&mut self, o: &UnpackStats) {
        self.entries += o.entries;
        self.whiteouts += o.whiteouts;
        self.skipped_special += o.skipped_special;
        self.bytes += o.bytes;
    }
}

/// Checks a tar entry name and returns its components, or `None` if it
/// climbs.
fn clean_entry(name: &Path) -> Option<Vec<OsString>> {
    let mut out = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name contains a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Opens directory `name` of `dir` without following a symlink.
fn open_dir_at(dir: RawFd, name: &CString) -> io::Result<OwnedFd> {
    // SAFETY: openat with a NUL-terminated name; the fd is ours on success.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `lstat` of `name` in `dir`; `None` when it does not exist.
fn stat_at(dir: RawFd, name: &CString) -> io::Result<Option<libc::stat>> {
    // SAFETY: fstatat into a zeroed stat buffer we own.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) == 0 {
            Ok(Some(st))
        } else {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

fn is_kind(st: &libc::stat, kind: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

fn read_link_at(dir: RawFd, name: &CString) -> io::Result<PathBuf> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: readlinkat into a buffer of the length we pass.
    let n = unsafe {
        libc::readlinkat(
            dir,
            name.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(
        <OsString as std::os::unix::ffi::OsStringExt>::from_vec(buf),
    ))
}

/// Removes `name` of `dir`, a whole tree if it is a directory; nothing if
/// it does not exist. Never follows a symlink.
fn remove_at(dir: RawFd, name: &CString) -> io::Result<()> {
    let Some(st) = stat_at(dir, name)? else {
        return Ok(());
    };
    if is_kind(&st, libc::S_IFDIR) {
        let sub = open_dir_at(dir, name)?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", sub.as_raw_fd()));
        for child in fs::read_dir(&path)? {
            let child = child?;
            remove_at(sub.as_raw_fd(), &cstr(&child.file_name())?)?;
        }
        // SAFETY: unlinkat with a NUL-terminated name.
        check(unsafe { libc::unlinkat(dir, name.as_ptr(), libc::AT_REMOVEDIR) })
    } else {
        // SAFETY: unlinkat with a NUL-terminated name.
        check(unsafe { libc::unlinkat(dir, name.as_ptr(), 0) })
    }
}

/// The target directory and the chain of open directories leading to the
/// current entry's parent: consecutive entries of one directory reuse it.
struct Tree {
    root: OwnedFd,
    /// Names (as resolved: no symlinks) and fds, from the root down.
    stack: Vec<(OsString, OwnedFd)>,
}

/// Symlinks followed in one lookup before giving up, as the kernel does.
const MAX_LINKS: usize = 40;

impl Tree {
    fn open(root: &Path) -> io::Result<Tree> {
        let root = File::open(root)?.into();
        Ok(Tree {
            root,
            stack: Vec::new(),
        })
    }

    fn top(&self) -> RawFd {
        self.stack
            .last()
            .map_or(self.root.as_raw_fd(), |(_, fd)| fd.as_raw_fd())
    }

    /// The directory `comps` (relative to the root), made (mode 0755)
    /// where missing when `create`. A symlink on the way is followed
    /// inside the root; nothing else is.
    fn dir(&mut self, comps: &[OsString], create: bool) -> io::Result<RawFd> {
        let keep = self
            .stack
            .iter()
            .zip(comps)
            .take_while(|((a, _), b)| a == *b)
            .count();
        self.stack.truncate(keep);
        for (i, c) in comps.iter().enumerate().skip(keep) {
            let name = cstr(c)?;
            match self.step(&name, create)? {
                Some(fd) => self.stack.push((c.clone(), fd)),
                // A symlink: resolve the whole path the slow way.
                None => return self.dir_through_links(comps, i, create),
            }
        }
        Ok(self.top())
    }

    /// Opens (or makes) `name` below the top; `None` if it is a symlink.
    fn step(&self, name: &CString, create: bool) -> io::Result<Option<OwnedFd>> {
        let at = self.top();
        match open_dir_at(at, name) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                // SAFETY: mkdirat with a NUL-terminated name.
                let rc = unsafe { libc::mkdirat(at, name.as_ptr(), 0o755) };
                if rc != 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(e);
                    }
                }
                open_dir_at(at, name).map(Some)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                match stat_at(at, name)? {
                    Some(st) if is_kind(&st, libc::S_IFLNK) => Ok(None),
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// [`Self::dir`] from component `from` on, where a symlink is: its
    /// target is read and walked component by component, `..` never
    /// climbing above the root, an absolute target starting at the root.
    fn dir_through_links(
        &mut self,
        comps: &[OsString],
        from: usize,
        create: bool,
    ) -> io::Result<RawFd> {
        let mut pending: Vec<OsString> = comps[from..].iter().rev().cloned().collect();
        let mut links = 0;
        while let Some(c) = pending.pop() {
            if c == ".." {
                self.stack.pop();
                continue;
            }
            let name = cstr(&c)?;
            match self.step(&name, create)? {
                Some(fd) => self.stack.push((c, fd)),
                None => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    let target = read_link_at(self.top(), &name)?;
                    if target.is_absolute() {
                        self.stack.clear();
                    }
                    for t in target.components().rev() {
                        match t {
                            Component::Normal(n) => pending.push(n.to_os_string()),
                            Component::ParentDir => pending.push(OsString::from("..")),
                            _ => {}
                        }
                    }
                }
            }
        }
        Ok(self.top())
    }
}

/// Times as `utimensat` takes them: atime and mtime both `mtime`.
fn times(mtime: u64) -> [libc::timespec; 2] {
    let t = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    [t, t]
}

/// A directory's attributes, set once its entries are in (making them
/// changes its mtime, and a read-only mode would stop them as non-root).
struct DirAttrs {
    comps: Vec<OsString>,
    mode: u32,
    mtime: u64,
}

/// The extractor's state over one layer.
struct Extractor<'a> {
    tree: Tree,
    mode: Whiteouts,
    layer: &'a Path,
    root: bool,
    stats: UnpackStats,
    /// Paths this layer created (for [`Whiteouts::Apply`] opaque markers,
    /// which hide only lower layers' entries).
    created: HashSet<Vec<OsString>>,
    dirs: Vec<DirAttrs>,
    buf: Vec<u8>,
}

/// Unpacks one layer (a decompressed tar stream) into `root`, an existing
/// directory. `layer` names it in errors.
pub fn extract(
    reader: &mut dyn Read,
    root: &Path,
    mode: Whiteouts,
    layer: &Path,
) -> Result<UnpackStats, UnpackError> {
    let write_err = |source| UnpackError::Write {
        layer: layer.to_path_buf(),
        entry: String::new(),
        path: root.to_path_buf(),
        source,
    };
    let mut x = Extractor {
        tree: Tree::open(root).map_err(write_err)?,
        mode,
        layer,
        root: is_root(),
        stats: UnpackStats::default(),
        created: HashSet::new(),
        dirs: Vec::new(),
        buf: vec![0u8; 256 * 1024],
    };
    let read_err = |source| UnpackError::Read {
        layer: layer.to_path_buf(),
        source,
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        x.entry(&mut entry)?;
    }
    // Deepest (and latest) first: a parent's mode never stops a child's.
    for d in std::mem::take(&mut x.dirs).iter().rev() {
        let fd = match x.tree.dir(&d.comps, false) {
            Ok(fd) => fd,
            // Replaced by a later entry of the layer: not a directory now.
            Err(_) => continue,
        };
        // SAFETY: fchmod and futimens on an fd the tree holds open.
        let rc = unsafe {
            let t = times(d.mtime);
            libc::fchmod(fd, d.mode as libc::mode_t).min(libc::futimens(fd, t.as_ptr()))
        };
        if rc != 0 {
            return Err(UnpackError::Write {
                layer: layer.to_path_buf(),
                entry: display(&d.comps),
                path: root.join(join(&d.comps)),
                source: io::Error::last_os_error(),
            });
        }
    }
    Ok(x.stats)
}

fn join(comps: &[OsString]) -> PathBuf {
    comps.iter().collect()
}

fn display(comps: &[OsString]) -> String {
    join(comps).display().to_string()
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry
            .path()
            .map_err(|source| UnpackError::Read {
                layer: self.layer.to_path_buf(),
                source,
            })?
            .into_owned();
        let Some(comps) = clean_entry(&raw) else {
            return Err(UnpackError::Escape {
                layer: self.layer.to_path_buf(),
                entry: raw.display().to_string(),
            });
        };
        let Some((name, parents)) = comps.split_last() else {
            return Ok(());
        };
        let werr = |source: io::Error| UnpackError::Write {
            layer: self.layer.to_path_buf(),
            entry: raw.display().to_string(),
            path: raw.clone(),
            source,
        };
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = header.uid().unwrap_or(0) as libc::uid_t;
        let gid = header.gid().unwrap_or(0) as libc::gid_t;
        let mtime = header.mtime().unwrap_or(0);

        let name_bytes = name.as_bytes();
        if name_bytes == b".wh..wh..opq" {
            self.stats.whiteouts += 1;
            return self.opaque(parents).map_err(werr);
        }
        if let Some(hidden) = name_bytes.strip_prefix(b".wh.") {
            self.stats.whiteouts += 1;
            return self
                .whiteout(parents, OsStr::from_bytes(hidden))
                .map_err(werr);
        }
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            return Ok(());
        }
        if !matches!(
            kind,
            tar::EntryType::Directory
                | tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::Symlink
                | tar::EntryType::Link
        ) {
            self.stats.skipped_special += 1;
            tracing::debug!(entry = %raw.display(), kind = ?kind, "skipping special file");
            return Ok(());
        }
        let link_target = if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            Some(
                entry
                    .link_name()
                    .map_err(|source| UnpackError::Read {
                        layer: self.layer.to_path_buf(),
                        source,
                    })?
                    .unwrap_or_default()
                    .into_owned(),
            )
        } else {
            None
        };
        // A hardlink's target, before the link's own parent (the walk
        // keeps one chain of directories open).
        let link_from = match (kind, &link_target) {
            (tar::EntryType::Link, Some(t)) => {
                let Some(tc) = clean_entry(t) else {
                    return Err(UnpackError::Escape {
                        layer: self.layer.to_path_buf(),
                        entry: raw.display().to_string(),
                    });
                };
                let Some((tname, tparents)) = tc.split_last() else {
                    return Err(UnpackError::Escape {
                        layer: self.layer.to_path_buf(),
                        entry: raw.display().to_string(),
                    });
                };
                let found = self.tree.dir(tparents, false).and_then(|fd| {
                    // SAFETY: fd is open while the tree holds it.
                    let fd = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
                    Ok((fd, cstr(tname)?))
                });
                match found {
                    Ok(f) => Some(f),
                    Err(e) => {
                        tracing::warn!(entry = %raw.display(), target = %t.display(), error = %e, "skipping hardlink whose target is missing");
                        return Ok(());
                    }
                }
            }
            _ => None,
        };
        let dir = self.tree.dir(parents, true).map_err(werr)?;
        let cname = cstr(name).map_err(werr)?;
        match kind {
            tar::EntryType::Directory => {
                // SAFETY: mkdirat with a NUL-terminated name.
                if unsafe { libc::mkdirat(dir, cname.as_ptr(), 0o700) } != 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(werr(e));
                    }
                    match stat_at(dir, &cname).map_err(werr)? {
                        Some(st) if is_kind(&st, libc::S_IFDIR) => {}
                        _ => {
                            remove_at(dir, &cname).map_err(werr)?;
                            // SAFETY: as above.
                            check(unsafe { libc::mkdirat(dir, cname.as_ptr(), 0o700) })
                                .map_err(werr)?;
                        }
                    }
                }
                self.chown(dir, &cname, uid, gid).map_err(werr)?;
                self.dirs.push(DirAttrs {
                    comps: comps.clone(),
                    mode,
                    mtime,
                });
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut file = self.create_file(dir, &cname).map_err(werr)?;
                loop {
                    let n = match entry.read(&mut self.buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(source) => {
                            return Err(UnpackError::Read {
                                layer: self.layer.to_path_buf(),
                                source,
                            })
                        }
                    };
                    file.write_all(&self.buf[..n]).map_err(werr)?;
                    self.stats.bytes += n as u64;
                }
                let fd = file.as_raw_fd();
                // SAFETY: fchown, fchmod and futimens on our open file;
                // chown first, as it clears set-id bits.
                unsafe {
                    if self.root {
                        check(libc::fchown(fd, uid, gid)).map_err(werr)?;
                    }
                    check(libc::fchmod(fd, mode as libc::mode_t)).map_err(werr)?;
                    let t = times(mtime);
                    check(libc::futimens(fd, t.as_ptr())).map_err(werr)?;
                }
            }
            tar::EntryType::Symlink => {
                let target = cstr(link_target.as_deref().unwrap_or(Path::new("")).as_os_str())
                    .map_err(werr)?;
                // SAFETY: symlinkat with NUL-terminated strings.
                let mk = || check(unsafe { libc::symlinkat(target.as_ptr(), dir, cname.as_ptr()) });
                if let Err(e) = mk() {
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(werr(e));
                    }
                    remove_at(dir, &cname).map_err(werr)?;
                    mk().map_err(werr)?;
                }
                self.chown(dir, &cname, uid, gid).map_err(werr)?;
                let t = times(mtime);
                // SAFETY: utimensat on a name in our directory, not
                // following the link.
                check(unsafe {
                    libc::utimensat(dir, cname.as_ptr(), t.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
                })
                .map_err(werr)?;
            }
            tar::EntryType::Link => {
                let (from_dir, from_name) = link_from.expect("resolved above");
                // SAFETY: linkat with NUL-terminated names; flags 0: a
                // symlink target is linked itself, never followed.
                let mk = || {
                    check(unsafe {
                        libc::linkat(
                            from_dir.as_raw_fd(),
                            from_name.as_ptr(),
                            dir,
                            cname.as_ptr(),
                            0,
                        )
                    })
                };
                let mut r = mk();
                if matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EEXIST)) {
                    remove_at(dir, &cname).map_err(werr)?;
                    r = mk();
                }
                if let Err(e) = r {
                    tracing::warn!(entry = %raw.display(), error = %e, "skipping hardlink whose target is missing");
                    return Ok(());
                }
            }
            _ => unreachable!("filtered above"),
        }
        self.stats.entries += 1;
        if self.mode == Whiteouts::Apply {
            self.created.insert(comps);
        }
        Ok(())
    }

    fn chown(
        &self,
        dir: RawFd,
        name: &CString,
        uid: libc::uid_t,
        gid: libc::gid_t,
    ) -> io::Result<()> {
        if !self.root {
            return Ok(());
        }
        // SAFETY: fchownat on a name in our directory, not following it.
        check(unsafe { libc::fchownat(dir, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
    }

    /// A new regular file `name` in `dir`, replacing what is there.
    fn create_file(&self, dir: RawFd, name: &CString) -> io::Result<File> {
        let open = || {
            // SAFETY: openat with a NUL-terminated name.
            let fd = unsafe {
                libc::openat(
                    dir,
                    name.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o600,
                )
            };
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                // SAFETY: a fresh fd we own.
                Ok(unsafe { File::from_raw_fd(fd) })
            }
        };
        match open() {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                remove_at(dir, name)?;
                open()
            }
            r => r,
        }
    }

    fn whiteout(&mut self, parents: &[OsString], hidden: &OsStr) -> io::Result<()> {
        let name = cstr(hidden)?;
        if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.as_bytes().contains(&b'/')
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a whiteout names no entry",
            ));
        }
        match self.mode {
            Whiteouts::Overlay => {
                let dir = self.tree.dir(parents, true)?;
                // SAFETY: mknodat with a NUL-terminated name: a 0/0
                // character device, overlayfs's whiteout (allowed
                // without CAP_MKNOD since Linux 5.8).
                let mk = || check(unsafe { libc::mknodat(dir, name.as_ptr(), libc::S_IFCHR, 0) });
                if let Err(e) = mk() {
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(e);
                    }
                    remove_at(dir, &name)?;
                    mk()?;
                }
                Ok(())
            }
            Whiteouts::Apply => match self.tree.dir(parents, false) {
                Ok(dir) => remove_at(dir, &name),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Ok(()),
                Err(e) => Err(e),
            },
        }
    }

    fn opaque(&mut self, parents: &[OsString]) -> io::Result<()> {
        match self.mode {
            Whiteouts::Overlay => {
                let dir = self.tree.dir(parents, true)?;
                let name = cstr(OsStr::new(OPAQUE_XATTR))?;
                // SAFETY: fsetxattr on an open directory with a value of
                // the length we pass.
                check(unsafe {
                    libc::fsetxattr(
                        dir,
                        name.as_ptr(),
                        b"y".as_ptr() as *const libc::c_void,
                        1,
                        0,
                    )
                })
            }
            Whiteouts::Apply => {
                let dir = match self.tree.dir(parents, false) {
                    Ok(dir) => dir,
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                        return Ok(())
                    }
                    Err(e) => return Err(e),
                };
                let path = PathBuf::from(format!("/proc/self/fd/{dir}"));
                for child in fs::read_dir(&path)? {
                    let child = child?.file_name();
                    let mut c = parents.to_vec();
                    c.push(child.clone());
                    if !self.created.contains(&c) {
                        remove_at(dir, &cstr(&child)?)?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// A layer's bytes, decompressed when gzip (by its magic number).
pub fn decompress<'a>(
    mut reader: impl BufRead + Send + 'a,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    let gzip = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    })
}

/// Reads `reader` to its end on a thread of its own, a few chunks ahead
/// of the caller: inflating a layer overlaps extracting it (as `tar -xz`
/// runs gzip beside tar). An error reaches the caller after the chunks
/// read before it.
pub fn read_ahead(mut reader: impl Read + Send + 'static) -> impl Read {
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(16);
    std::thread::spawn(move || loop {
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0;
        let r = loop {
            match reader.read(&mut buf[n..]) {
                Ok(0) => break Ok(()),
                Ok(k) => {
                    n += k;
                    if n == buf.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        buf.truncate(n);
        let last = n == 0 || r.is_err();
        if n > 0 && tx.send(Ok(buf)).is_err() {
            return;
        }
        if let Err(e) = r {
            let _ = tx.send(Err(e));
        }
        if last {
            return;
        }
    });
    ReadAhead {
        rx,
        chunk: Vec::new(),
        pos: 0,
    }
}

struct ReadAhead {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(c)) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn open_layer(layer: &Path) -> Result<Box<dyn Read + Send>, UnpackError> {
    let read_err = |source| UnpackError::Read {
        layer: layer.to_path_buf(),
        source,
    };
    let file = File::open(layer).map_err(read_err)?;
    decompress(io::BufReader::with_capacity(1 << 20, file)).map_err(read_err)
}

/// Applies one gzip-compressed (or plain) tar layer onto `root`.
pub fn apply_layer(root: &Path, layer: &Path, stats: &mut UnpackStats) -> Result<(), UnpackError> {
    let mut reader = open_layer(layer)?;
    stats.add(&extract(&mut reader, root, Whiteouts::Apply, layer)?);
    Ok(())
}

/// Makes `dest` (which must not exist) with `fill`: the work is done in a
/// sibling temp directory and renamed into place, so a crash or a
/// concurrent unpack never leaves a half-made tree at `dest`; when another
/// process finished the same `dest` first, theirs is used.
pub fn unpack_into_place<T>(
    dest: &Path,
    fill: impl FnOnce(&Path) -> Result<T, UnpackError>,
) -> Result<T, UnpackError> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let werr = |path: &Path, source| UnpackError::Write {
        layer: PathBuf::new(),
        entry: String::new(),
        path: path.to_path_buf(),
        source,
    };
    fs::create_dir_all(parent).map_err(|e| werr(parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(parent)
        .map_err(|e| werr(parent, e))?;
    let out = fill(tmp.path())?;
    // The root's own entry (`./`) may have set its mode; a tree's root is
    // searchable by all.
    let mode = fs::metadata(tmp.path())
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o755);
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode | 0o755))
        .map_err(|e| werr(tmp.path(), e))?;
    let tmp = tmp.keep();
    if let Err(e) = fs::rename(&tmp, dest) {
        let _ = crate::rootfs::remove_tree(&tmp);
        // Another process finished the same tree first: use theirs.
        if !dest.is_dir() {
            return Err(werr(dest, e));
        }
    }
    Ok(out)
}

/// Makes `dir` (created if missing) searchable by its owner alone, when it
/// is ours; a directory of another owner (a shared parent) is left as it
/// is. For the parents of trees that keep an image's setuid files and
/// world-writable directories, which no other user of this machine may
/// reach. Not for a tree a container is started on directly: its setup
/// walks the path as the container's root.
pub fn make_private(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    fs::create_dir_all(dir)?;
    let m = fs::metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    if m.uid() == unsafe { libc::geteuid() } && m.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Removes a tree this module made.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    fs::remove_dir_all(path)
}

/// Unpacks `layers` in order into `dest`, which must not exist, as one
/// merged tree (see [`unpack_into_place`] for atomicity).
pub fn unpack_rootfs(layers: &[PathBuf], dest: &Path) -> Result<UnpackStats, UnpackError> {
    unpack_into_place(dest, |tmp| {
        let mut stats = UnpackStats::default();
        for layer in layers {
            apply_layer(tmp, layer, &mut stats)?;
        }
        Ok(stats)
    })
}

/// [`unpack_rootfs`], then `marker` (a file name at the tree's root) made
/// an empty regular file of ours before the tree is renamed into place:
/// whatever the image put at that name (a symlink to a host file) is
/// removed first, never followed.
pub fn unpack_rootfs_marked(
    layers: &[PathBuf],
    dest: &Path,
    marker: &str,
) -> Result<UnpackStats, UnpackError> {
    unpack_into_place(dest, |tmp| {
        let mut stats = UnpackStats::default();
        for layer in layers {
            apply_layer(tmp, layer, &mut stats)?;
        }
        let path = tmp.join(marker);
        let werr = |source| UnpackError::Write {
            layer: PathBuf::new(),
            entry: marker.to_string(),
            path: path.clone(),
            source,
        };
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path).map_err(werr)?,
            Ok(_) => fs::remove_file(&path).map_err(werr)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(werr(e)),
        }
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o644)
            .open(&path)
            .map_err(werr)?;
        Ok(stats)
    })
}

/// Whether `dest/marker` is a regular file (not followed if a link).
pub fn is_marked(dest: &Path, marker: &str) -> bool {
    fs::symlink_metadata(dest.join(marker)).is_ok_and(|m| m.is_file())
}

/// Unpacks one layer into its own directory `dest` (which must not
/// exist), whiteouts stored for overlayfs.
pub fn unpack_layer_dir(
    reader: &mut dyn Read,
    dest: &Path,
    layer: &Path,
) -> Result<UnpackStats, UnpackError> {
    unpack_into_place(dest, |tmp| extract(reader, tmp, Whiteouts::Overlay, layer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn layer(dir: &Path, name: &str, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> PathBuf {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let bytes = b.into_inner().unwrap();
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        file_with(b, name, data, 0o644, 0, 0, 1_600_000_000);
    }

    fn file_with(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    }

    fn dir(b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32, mtime: u64) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(mode);
        h.set_mtime(mtime);
        h.set_entry_type(tar::EntryType::Directory);
        b.append_data(&mut h, name, &b""[..]).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, name, target).unwrap();
    }

    /// An entry whose name the builder would refuse, written raw.
    fn raw(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &[u8], target: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(if kind == tar::EntryType::Regular {
            1
        } else {
            0
        });
        h.set_mode(0o644);
        h.set_entry_type(kind);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target);
        h.set_cksum();
        let data: &[u8] = if kind == tar::EntryType::Regular {
            b"x"
        } else {
            b""
        };
        b.append(&h, data).unwrap();
    }

    #[test]
    fn another_user_cannot_reach_an_unpacked_setuid_file() {
        let tmp = tempfile::tempdir().unwrap();
        let l = layer(tmp.path(), "l.tar", |b| {
            file_with(b, "usr/bin/x", b"#!/bin/sh\n", 0o4755, 0, 0, 1);
            dir(b, "tmp", 0o1777, 1);
        });
        let shared = tmp.path().join("cache");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
        // What the engine does before unpacking a base layer there.
        let parent = shared.join("layers");
        make_private(&parent).unwrap();
        unpack_dir(&l, &parent.join("abc")).unwrap();
        let mode = fs::metadata(&parent).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "layers/ is {mode:o}");
        // Also when the directory was there before, open to all.
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o755)).unwrap();
        make_private(&parent).unwrap();
        unpack_dir(&l, &parent.join("def")).unwrap();
        let mode = fs::metadata(&parent).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "layers/ is {mode:o}");
        let setuid = fs::metadata(parent.join("def/usr/bin/x"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(setuid & 0o4000, 0o4000, "the image's own mode is kept");
    }

    #[test]
    fn a_base_whose_marker_name_links_to_a_host_file_cannot_truncate_it() {
        // The merged tree's completion marker was written after the tree
        // was in place, through whatever the image left at its name.
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("authorized_keys");
        fs::write(&victim, b"ssh-ed25519 AAAA host key\n").unwrap();
        let target = victim.display().to_string();
        let l = layer(tmp.path(), "l.tar", |b| {
            file(b, "etc/hostname", b"base\n");
            link(b, tar::EntryType::Symlink, ".ftl-complete", &target);
        });
        let dest = tmp.path().join("rootfs/abc");
        unpack_rootfs_marked(&[l], &dest, ".ftl-complete").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"ssh-ed25519 AAAA host key\n");
        let m = fs::symlink_metadata(dest.join(".ftl-complete")).unwrap();
        assert!(m.is_file() && m.len() == 0, "the marker is ftl's own file");
        assert!(is_marked(&dest, ".ftl-complete"));
        // A link at the marker's name does not count as the marker.
        let other = tmp.path().join("other");
        fs::create_dir(&other).unwrap();
        std::os::unix::fs::symlink(&victim, other.join(".ftl-complete")).unwrap();
        assert!(!is_marked(&other, ".ftl-complete"));
    }

    fn unpack_dir(layer: &Path, dest: &Path) -> Result<UnpackStats, UnpackError> {
        let mut r = open_layer(layer)?;
        unpack_layer_dir(&mut r, dest, layer)
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
        assert_eq!(
            fs::metadata(dest.join("etc/a2")).unwrap().ino(),
            fs::metadata(dest.join("etc/a")).unwrap().ino()
        );
        assert_eq!(stats.whiteouts, 2);

        // `..` is refused, leaving nothing at the destination.
        let bad = layer(work.path(), "bad", |b| {
            raw(b, tar::EntryType::Regular, b"../escape", b"");
        });
        let dest2 = work.path().join("rootfs2");
        let err = unpack_rootfs(&[bad], &dest2).unwrap_err();
        assert!(matches!(err, UnpackError::Escape { .. }), "{err}");
        assert!(!dest2.exists());
        assert!(!work.path().join("escape").exists());
    }

    /// Every way out of the target, in both modes: nothing lands outside,
    /// and nothing outside changes.
    #[test]
    fn no_entry_lands_outside_its_directory() {
        let work = tempfile::tempdir().unwrap();
        let outside = work.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), b"s").unwrap();
        let out = outside.display().to_string();
        let escapes: Vec<(&str, PathBuf)> = vec![
            (
                "symlinked parent (absolute)",
                layer(work.path(), "e1", |b| {
                    link(b, tar::EntryType::Symlink, "up", &out);
                    file(b, "up/planted", b"x");
                }),
            ),
            (
                "symlinked parent (relative, climbing)",
                layer(work.path(), "e2", |b| {
                    link(b, tar::EntryType::Symlink, "up", "../../../../../../../..");
                    let rel = format!("up{out}/planted");
                    file(b, &rel, b"x");
                }),
            ),
            (
                "symlinked parent then whiteout",
                layer(work.path(), "e3", |b| {
                    link(b, tar::EntryType::Symlink, "up", &out);
                    file(b, "up/.wh.secret", b"");
                }),
            ),
            (
                "symlinked parent then opaque",
                layer(work.path(), "e4", |b| {
                    link(b, tar::EntryType::Symlink, "up", &out);
                    file(b, "up/.wh..wh..opq", b"");
                }),
            ),
            (
                "hardlink to an absolute path",
                layer(work.path(), "e5", |b| {
                    raw(
                        b,
                        tar::EntryType::Link,
                        b"planted",
                        format!("{out}/secret").as_bytes(),
                    );
                }),
            ),
            (
                "hardlink through a symlinked parent",
                layer(work.path(), "e6", |b| {
                    link(b, tar::EntryType::Symlink, "up", &out);
                    link(b, tar::EntryType::Link, "planted", "up/secret");
                }),
            ),
            (
                "file over a symlink",
                layer(work.path(), "e7", |b| {
                    link(b, tar::EntryType::Symlink, "s", &format!("{out}/secret"));
                    file(b, "s", b"overwritten");
                }),
            ),
            (
                "hardlink target climbing",
                layer(work.path(), "e8", |b| {
                    raw(b, tar::EntryType::Link, b"planted", b"../outside/secret");
                }),
            ),
        ];
        for (i, (what, l)) in escapes.iter().enumerate() {
            for mode in [Whiteouts::Overlay, Whiteouts::Apply] {
                let dest = work.path().join(format!("d{i}-{mode:?}"));
                let r = match mode {
                    Whiteouts::Overlay => unpack_dir(l, &dest),
                    Whiteouts::Apply => unpack_rootfs(std::slice::from_ref(l), &dest),
                };
                let names: Vec<_> = fs::read_dir(&outside)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                assert_eq!(names, ["secret"], "{what} ({mode:?}): {r:?}");
                assert_eq!(fs::read(outside.join("secret")).unwrap(), b"s", "{what}");
                assert_eq!(
                    fs::metadata(outside.join("secret")).unwrap().nlink(),
                    1,
                    "{what} ({mode:?})"
                );
                assert!(xattr_of(&outside).is_none(), "{what} ({mode:?})");
            }
        }
        // Inside the root, a symlinked parent resolves as in a chroot.
        let dest = work.path().join("chroot");
        unpack_dir(&escapes[0].1, &dest).unwrap();
        assert_eq!(
            fs::read(
                dest.join(outside.strip_prefix("/").unwrap())
                    .join("planted")
            )
            .unwrap(),
            b"x"
        );
        assert!(fs::symlink_metadata(dest.join("up"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    fn xattr_of(path: &Path) -> Option<Vec<u8>> {
        let p = CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = CString::new(OPAQUE_XATTR).unwrap();
        let mut buf = [0u8; 16];
        // SAFETY: lgetxattr into a buffer of the length we pass.
        let r = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                n.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        (r >= 0).then(|| buf[..r as usize].to_vec())
    }

    #[test]
    fn a_layer_directory_stores_whiteouts_as_overlayfs_reads_them() {
        let work = tempfile::tempdir().unwrap();
        let l = layer(work.path(), "l", |b| {
            dir(b, "etc/", 0o755, 1_600_000_000);
            file(b, "etc/.wh.gone", b"");
            dir(b, "opq/", 0o755, 1_600_000_000);
            file(b, "opq/.wh..wh..opq", b"");
            file(b, "opq/kept", b"k");
            // A whiteout in a directory the layer does not list.
            file(b, "deep/er/.wh.x", b"");
        });
        let dest = work.path().join("layer");
        let stats = unpack_dir(&l, &dest);
        if !is_root() {
            // trusted.* xattrs need CAP_SYS_ADMIN: only root unpacks layer
            // directories (others use a merged tree).
            assert!(stats.is_err());
            return;
        }
        let stats = stats.unwrap();
        assert_eq!(stats.whiteouts, 3);
        for w in ["etc/gone", "deep/er/x"] {
            let m = fs::symlink_metadata(dest.join(w)).unwrap();
            assert!(m.file_type().is_char_device(), "{w}");
            assert_eq!(m.rdev(), 0, "{w}");
        }
        assert_eq!(xattr_of(&dest.join("opq")).as_deref(), Some(&b"y"[..]));
        assert_eq!(xattr_of(&dest.join("etc")), None);
        assert_eq!(fs::read(dest.join("opq/kept")).unwrap(), b"k");
        assert!(!dest.join("etc/.wh.gone").exists());
    }

    #[test]
    fn modes_owners_mtimes_and_replacements() {
        let work = tempfile::tempdir().unwrap();
        let l = layer(work.path(), "l", |b| {
            dir(b, "ro/", 0o555, 1_500_000_000);
            file_with(b, "ro/suid", b"#!", 0o4755, 1234, 5678, 1_400_000_000);
            link(b, tar::EntryType::Symlink, "ro/link", "suid");
            // Replaced by later entries of the same layer.
            dir(b, "was-dir/", 0o755, 1);
            file(b, "was-dir/inner", b"i");
            file(b, "was-dir", b"now a file");
            file(b, "was-file", b"f");
            dir(b, "was-file/", 0o750, 1_500_000_000);
            // A fifo is skipped.
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Fifo);
            h.set_size(0);
            h.set_mode(0o644);
            b.append_data(&mut h, "fifo", &b""[..]).unwrap();
            // Hardlink to a file of the layer, in another directory.
            link(b, tar::EntryType::Link, "hard", "ro/suid");
            // Hardlink to nothing: skipped.
            link(b, tar::EntryType::Link, "dangling", "nowhere");
        });
        for mode in [Whiteouts::Apply, Whiteouts::Overlay] {
            let dest = work.path().join(format!("{mode:?}"));
            let stats = match mode {
                Whiteouts::Overlay => unpack_dir(&l, &dest).unwrap(),
                Whiteouts::Apply => unpack_rootfs(std::slice::from_ref(&l), &dest).unwrap(),
            };
            assert_eq!(stats.skipped_special, 1);
            let ro = fs::metadata(dest.join("ro")).unwrap();
            assert_eq!(ro.mode() & 0o7777, 0o555);
            assert_eq!(ro.mtime(), 1_500_000_000);
            let suid = fs::symlink_metadata(dest.join("ro/suid")).unwrap();
            assert_eq!(suid.mode() & 0o7777, 0o4755);
            assert_eq!(suid.mtime(), 1_400_000_000);
            if is_root() {
                assert_eq!((suid.uid(), suid.gid()), (1234, 5678));
            }
            assert_eq!(
                fs::read_link(dest.join("ro/link")).unwrap(),
                Path::new("suid")
            );
            assert_eq!(fs::read(dest.join("was-dir")).unwrap(), b"now a file");
            assert!(fs::metadata(dest.join("was-file")).unwrap().is_dir());
            assert_eq!(
                fs::metadata(dest.join("was-file")).unwrap().mode() & 0o777,
                0o750
            );
            assert!(!dest.join("fifo").exists());
            assert_eq!(suid.ino(), fs::metadata(dest.join("hard")).unwrap().ino());
            assert!(!dest.join("dangling").exists());
            assert_eq!(fs::metadata(&dest).unwrap().mode() & 0o777, 0o755);
            // Writable again, so the temp dir can go.
            fs::set_permissions(dest.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn read_ahead_gives_the_bytes_then_the_error() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        read_ahead(io::Cursor::new(data.clone()))
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        let failing = io::Cursor::new(data[..1000].to_vec()).chain(FailingReader);
        let mut r = read_ahead(failing);
        let mut got = vec![0u8; 1000];
        r.read_exact(&mut got).unwrap();
        assert_eq!(got, data[..1000]);
        assert!(r.read(&mut got).is_err());
    }

    struct FailingReader;

    impl Read for FailingReader {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("broken"))
        }
    }

    #[test]
    fn an_interrupted_unpack_leaves_nothing_and_a_finished_one_wins() {
        let work = tempfile::tempdir().unwrap();
        let dest = work.path().join("layers/abc");
        // A truncated gzip stream fails half-way: no `dest`.
        let l = layer(work.path(), "l", |b| {
            for i in 0..50 {
                file(b, &format!("d/f{i}"), &[b'x'; 4096]);
            }
        });
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&fs::read(&l).unwrap()).unwrap();
        let gz = gz.finish().unwrap();
        let mut half =
            read_ahead(decompress(io::Cursor::new(gz[..gz.len() / 2].to_vec())).unwrap());
        assert!(unpack_layer_dir(&mut half, &dest, Path::new("l")).is_err());
        assert!(!dest.exists());
        let left: Vec<_> = fs::read_dir(work.path().join("layers"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // Two unpacks of the same layer: the second finds the first's.
        for _ in 0..2 {
            let mut r = decompress(&gz[..]).unwrap();
            unpack_layer_dir(&mut r, &dest, Path::new("l")).unwrap();
        }
        assert_eq!(fs::read_dir(dest.join("d")).unwrap().count(), 50);
    }
}
