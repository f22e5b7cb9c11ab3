//! Reading files that someone else wrote, by directory file descriptor.
//!
//! Everything a build step leaves (`node_modules`, `target/classes`, a
//! virtualenv) and every file of an upload is read through a [`Dir`]: a
//! directory opened once, below which every path is resolved by the kernel
//! with `openat2(2)`.
//!
//! * What a step left is read **without following any symlink**
//!   ([`Dir::dir`], [`Dir::open_file`], [`Dir::stat`], [`Dir::walk`]):
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, children opened with
//!   `O_NOFOLLOW`. A symlink is reported as one ([`Kind::Symlink`], read
//!   with `readlinkat`) and stored as a link; a directory or file that
//!   turns out to be (or to pass through) a symlink is an error naming it.
//!   A step that swaps `node_modules` for a link to a host directory gets
//!   an error, not a layer of the host's files.
//! * A file of the source is read **beneath the source root**
//!   ([`Dir::open_file_beneath`]): links are followed, but resolution may
//!   never leave the root (`RESOLVE_BENEATH`: a `..` above it or an
//!   absolute link is an error naming the file).
//!
//! The directory a `Dir` is opened on ([`Dir::open`]) is trusted: it is one
//! ftl made (a step's scratch directory, a mount point) or the one the user
//! named. [`Beneath`] pairs such a directory with the untrusted path below
//! it, for layer inputs.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// An error reading below a directory.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    #[error("failed to read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is a symlink, not a {wanted}: refusing to follow it")]
    IsLink { path: PathBuf, wanted: &'static str },
    #[error("{path} passes through the symlink {link}: refusing to follow it")]
    ThroughLink { path: PathBuf, link: PathBuf },
    #[error("{path} is not a {wanted}")]
    WrongKind { path: PathBuf, wanted: &'static str },
    #[error("{path} resolves outside {root}")]
    Escapes { path: PathBuf, root: PathBuf },
    #[error("`{0}` is not a relative path below its directory")]
    BadPath(PathBuf),
}

impl BeneathError {
    /// Whether the path does not exist (and nothing refused it).
    pub fn is_not_found(&self) -> bool {
        matches!(self, BeneathError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// A relative path `rel` below a trusted directory `base`: how a layer
/// names a directory a step left (`base` the step's mount, `rel` what the
/// step wrote below it). `rel` is resolved without following any link;
/// empty means `base` itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beneath {
    pub base: PathBuf,
    pub rel: PathBuf,
}

impl Beneath {
    pub fn new(base: impl Into<PathBuf>, rel: impl Into<PathBuf>) -> Self {
        Beneath {
            base: base.into(),
            rel: rel.into(),
        }
    }

    /// `base` itself.
    pub fn root(base: impl Into<PathBuf>) -> Self {
        Beneath::new(base, PathBuf::new())
    }

    /// The path joined, for messages.
    pub fn path(&self) -> PathBuf {
        self.base.join(&self.rel)
    }

    /// Opens `rel` below `base` as a directory, refusing links.
    pub fn open(&self) -> Result<Dir, BeneathError> {
        Dir::open(&self.base)?.dir(&self.rel)
    }
}

/// What an entry is (never following a link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// A device, socket or fifo.
    Special,
}

/// The `lstat` of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub size: u64,
    pub nlink: u64,
    pub dev: u64,
    pub ino: u64,
    /// The status change time (`st_ctime`, seconds and nanoseconds): any
    /// write or change of metadata moves it, and no process can set it
    /// back.
    pub changed: (i64, i64),
}

impl Node {
    fn from_stat(st: &libc::stat) -> Node {
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Special,
        };
        Node {
            kind,
            mode: st.st_mode & 0o7777,
            size: st.st_size as u64,
            nlink: st.st_nlink,
            dev: st.st_dev,
            ino: st.st_ino,
            changed: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

/// An open directory below which paths are resolved by the kernel.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// Where it was opened, for messages only.
    path: PathBuf,
}

const NO_LINKS: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
const IN_TREE: u64 = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))
}

fn openat2(dirfd: RawFd, path: &Path, flags: i32, resolve: u64) -> io::Result<OwnedFd> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let c = cstr(path)?;
    // SAFETY: open_how is plain data; zero is a valid value of every field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    loop {
        // SAFETY: a valid C string and open_how of the size passed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            // SAFETY: the kernel returned a new descriptor we own.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn fstatat(dirfd: RawFd, name: &CStr, flags: i32) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data, filled by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, C string and out pointer.
    let r = unsafe { libc::fstatat(dirfd, name.as_ptr(), &mut st, flags) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// A path below its directory that names no `..`, root or prefix.
fn check_rel(rel: &Path) -> Result<(), BeneathError> {
    if rel
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        Ok(())
    } else {
        Err(BeneathError::BadPath(rel.to_path_buf()))
    }
}

impl Dir {
    /// Opens a trusted directory (links in `path` are followed: the caller
    /// chose it).
    pub fn open(path: &Path) -> Result<Dir, BeneathError> {
        let fd = openat2(libc::AT_FDCWD, path, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(
            |source| BeneathError::Io {
                path: path.to_path_buf(),
                source,
            },
        )?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Where this directory was opened (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, rel: &Path) -> impl FnOnce(io::Error) -> BeneathError {
        let path = self.path.join(rel);
        move |source| BeneathError::Io { path, source }
    }

    /// The error for an `openat2` of `rel` that failed: a link on the way
    /// (`ELOOP` under `RESOLVE_NO_SYMLINKS`) is named, as is an escape.
    fn explain(&self, rel: &Path, e: io::Error, wanted: &'static str) -> BeneathError {
        let errno = e.raw_os_error();
        if matches!(errno, Some(libc::ELOOP) | Some(libc::ENOTDIR)) {
            // A link on the way (`O_NOFOLLOW | O_DIRECTORY` on a link is
            // ENOTDIR): name the first component that is one.
            let mut at = PathBuf::new();
            for c in rel.components() {
                at.push(c);
                if let Ok(Some(n)) = self.lstat_path(&at) {
                    if n.kind == Kind::Symlink {
                        return if at == rel {
                            BeneathError::IsLink {
                                path: self.path.join(rel),
                                wanted,
                            }
                        } else {
                            BeneathError::ThroughLink {
                                path: self.path.join(rel),
                                link: self.path.join(&at),
                            }
                        };
                    }
                }
            }
        }
        match errno {
            Some(libc::ELOOP) => BeneathError::IsLink {
                path: self.path.join(rel),
                wanted,
            },
            Some(libc::EXDEV) => BeneathError::Escapes {
                path: self.path.join(rel),
                root: self.path.clone(),
            },
            Some(libc::ENOTDIR) => BeneathError::WrongKind {
                path: self.path.join(rel),
                wanted: "directory",
            },
            _ => self.io(rel)(e),
        }
    }

    /// `lstat` of `rel` for messages: components resolved one by one with
    /// `O_NOFOLLOW`; `None` when a parent is not a directory.
    fn lstat_path(&self, rel: &Path) -> io::Result<Option<Node>> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let Some(name) = rel.file_name() else {
            return Ok(None);
        };
        let fd = openat2(
            self.fd.as_raw_fd(),
            parent,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            NO_LINKS,
        );
        let Ok(fd) = fd else { return Ok(None) };
        let st = fstatat(
            fd.as_raw_fd(),
            &cstr(Path::new(name))?,
            libc::AT_SYMLINK_NOFOLLOW,
        )?;
        Ok(Some(Node::from_stat(&st)))
    }

    /// Opens the directory `rel` below this one, following no link on the
    /// way (empty `rel`: this directory again).
    pub fn dir(&self, rel: &Path) -> Result<Dir, BeneathError> {
        check_rel(rel)?;
        let fd = openat2(
            self.fd.as_raw_fd(),
            rel,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            NO_LINKS,
        )
        .map_err(|e| self.explain(rel, e, "directory"))?;
        Ok(Dir {
            fd,
            path: self.path.join(rel),
        })
    }

    /// Opens the regular file `rel` below this one, following no link on
    /// the way. A fifo or device is refused without blocking.
    pub fn open_file(&self, rel: &Path) -> Result<File, BeneathError> {
        check_rel(rel)?;
        let fd = openat2(
            self.fd.as_raw_fd(),
            rel,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
            NO_LINKS,
        )
        .map_err(|e| self.explain(rel, e, "file"))?;
        self.regular(rel, fd)
    }

    /// Opens the regular file `rel` below this one, following links as
    /// long as they resolve below this directory (the way a source file is
    /// read: `requirements.txt -> reqs/base.txt` is fine,
    /// `-> ../../etc/passwd` or `-> /etc/passwd` is an error naming it).
    pub fn open_file_beneath(&self, rel: &Path) -> Result<File, BeneathError> {
        check_rel(rel)?;
        let fd = openat2(
            self.fd.as_raw_fd(),
            rel,
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
            IN_TREE,
        )
        .map_err(|e| self.explain(rel, e, "file"))?;
        self.regular(rel, fd)
    }

    fn regular(&self, rel: &Path, fd: OwnedFd) -> Result<File, BeneathError> {
        let file = File::from(fd);
        let meta = file.metadata().map_err(self.io(rel))?;
        if !meta.is_file() {
            return Err(BeneathError::WrongKind {
                path: self.path.join(rel),
                wanted: "regular file",
            });
        }
        Ok(file)
    }

    /// Reads the regular file `rel` (no links followed).
    pub fn read(&self, rel: &Path) -> Result<Vec<u8>, BeneathError> {
        use std::io::Read;
        let mut out = Vec::new();
        self.open_file(rel)?
            .read_to_end(&mut out)
            .map_err(self.io(rel))?;
        Ok(out)
    }

    /// The parent directory of `rel` (opened without links) and its name.
    fn parent_of<'a>(&self, rel: &'a Path) -> Result<(Option<Dir>, &'a OsStr), BeneathError> {
        check_rel(rel)?;
        let name = rel
            .file_name()
            .ok_or_else(|| BeneathError::BadPath(rel.to_path_buf()))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        if parent.as_os_str().is_empty() {
            Ok((None, name))
        } else {
            Ok((Some(self.dir(parent)?), name))
        }
    }

    /// `lstat` of `rel`: its parents must be directories, not links; `rel`
    /// itself may be anything. `None` when it does not exist.
    pub fn stat(&self, rel: &Path) -> Result<Option<Node>, BeneathError> {
        let (parent, name) = match self.parent_of(rel) {
            Ok(p) => p,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let d = parent.as_ref().unwrap_or(self);
        match d.stat_name(name) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(rel)(e)),
        }
    }

    fn stat_name(&self, name: &OsStr) -> io::Result<Node> {
        let st = fstatat(
            self.fd.as_raw_fd(),
            &cstr(Path::new(name))?,
            libc::AT_SYMLINK_NOFOLLOW,
        )?;
        Ok(Node::from_stat(&st))
    }

    /// The target of the symlink `rel` (its parents not links).
    pub fn read_link(&self, rel: &Path) -> Result<PathBuf, BeneathError> {
        let (parent, name) = self.parent_of(rel)?;
        let d = parent.as_ref().unwrap_or(self);
        d.read_link_name(name).map_err(self.io(rel))
    }

    fn read_link_name(&self, name: &OsStr) -> io::Result<PathBuf> {
        let c = cstr(Path::new(name))?;
        let mut buf = vec![0u8; 256];
        loop {
            // SAFETY: valid descriptor, C string and buffer of that length.
            let n = unsafe {
                libc::readlinkat(
                    self.fd.as_raw_fd(),
                    c.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            if n < buf.len() {
                buf.truncate(n);
                return Ok(PathBuf::from(OsString::from_vec(buf)));
            }
            buf.resize(buf.len() * 2, 0);
        }
    }

    /// The names in this directory, sorted (`.` and `..` left out).
    pub fn names(&self) -> Result<Vec<OsString>, BeneathError> {
        let err = self.io(Path::new(""));
        // A fresh open file description: its offset is its own.
        let fd = openat2(
            self.fd.as_raw_fd(),
            Path::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
            NO_LINKS,
        )
        .map_err(|e| BeneathError::Io {
            path: self.path.clone(),
            source: e,
        })?;
        let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
        // SAFETY: fdopendir takes ownership of the descriptor.
        let dirp = unsafe { libc::fdopendir(raw) };
        if dirp.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: still ours when fdopendir failed.
            unsafe { libc::close(raw) };
            return Err(err(e));
        }
        let mut out = Vec::new();
        let result = loop {
            // SAFETY: errno is thread-local.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: a valid DIR stream.
            let ent = unsafe { libc::readdir64(dirp) };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                break if e.raw_os_error().unwrap_or(0) == 0 {
                    Ok(())
                } else {
                    Err(e)
                };
            }
            // SAFETY: d_name is a NUL-terminated name within the entry.
            let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
            let bytes = name.to_bytes();
            if bytes != b"." && bytes != b".." {
                out.push(OsString::from_vec(bytes.to_vec()));
            }
        };
        // SAFETY: closes the stream and its descriptor, once.
        unsafe { libc::closedir(dirp) };
        result.map_err(err)?;
        out.sort();
        Ok(out)
    }

    /// Visits every entry below this directory, depth first in name order,
    /// with its path relative to this directory and its `lstat`. Links are
    /// reported, never followed; `visit` returning `false` for a directory
    /// skips its contents.
    pub fn walk<E: From<BeneathError>>(
        &self,
        visit: &mut dyn FnMut(&Path, &Node) -> Result<bool, E>,
    ) -> Result<(), E> {
        self.walk_below(Path::new(""), visit)
    }

    fn walk_below<E: From<BeneathError>>(
        &self,
        prefix: &Path,
        visit: &mut dyn FnMut(&Path, &Node) -> Result<bool, E>,
    ) -> Result<(), E> {
        for name in self.names()? {
            let rel = prefix.join(&name);
            let node = match self.stat_name(&name) {
                Ok(n) => n,
                // Gone since it was listed.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(BeneathError::Io {
                        path: self.path.join(&name),
                        source: e,
                    }
                    .into())
                }
            };
            if visit(&rel, &node)? && node.kind == Kind::Dir {
                let child = self.dir(Path::new(&name))?;
                child.walk_below(&rel, visit)?;
            }
        }
        Ok(())
    }

    /// Copies the entries `paths` (relative, parents first: files, links
    /// and directories without their contents) from below this directory
    /// to `dest`, which ftl made: directories are created, links recreated
    /// as links, regular files copied with their permission bits; anything
    /// else is skipped. No link below this directory is followed.
    pub fn copy_entries(&self, paths: &[PathBuf], dest: &Path) -> Result<(), BeneathError> {
        let io_at = |p: &Path| {
            let p = p.to_path_buf();
            move |source| BeneathError::Io { path: p, source }
        };
        std::fs::create_dir_all(dest).map_err(io_at(dest))?;
        for rel in paths {
            let Some(node) = self.stat(rel)? else {
                return Err(self.io(rel)(io::ErrorKind::NotFound.into()));
            };
            let to = dest.join(rel);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(io_at(parent))?;
            }
            match node.kind {
                Kind::Dir => std::fs::create_dir_all(&to).map_err(io_at(&to))?,
                Kind::Symlink => {
                    let target = self.read_link(rel)?;
                    std::os::unix::fs::symlink(target, &to).map_err(io_at(&to))?;
                }
                Kind::File => self.copy_file(rel, &to)?,
                Kind::Special => {}
            }
        }
        Ok(())
    }

    /// Copies the regular file `rel` (no links followed) to the new file
    /// `to`, with its permission bits.
    pub fn copy_file(&self, rel: &Path, to: &Path) -> Result<(), BeneathError> {
        let mut from = self.open_file(rel)?;
        let mode = from.metadata().map_err(self.io(rel))?.permissions().mode();
        let io_to = |source| BeneathError::Io {
            path: to.to_path_buf(),
            source,
        };
        let mut out = File::create(to).map_err(io_to)?;
        io::copy(&mut from, &mut out).map_err(io_to)?;
        out.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(io_to)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn walk_reports_links_and_never_follows_them() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret"), b"host secret").unwrap();
        let out = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(out.path().join("a/b")).unwrap();
        std::fs::write(out.path().join("a/b/f"), b"f").unwrap();
        symlink(host.path(), out.path().join("a/host")).unwrap();
        let dir = Dir::open(out.path()).unwrap();
        let mut seen = Vec::new();
        dir.walk::<BeneathError>(&mut |rel, n| {
            seen.push((rel.display().to_string(), n.kind));
            Ok(true)
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                ("a".to_string(), Kind::Dir),
                ("a/b".into(), Kind::Dir),
                ("a/b/f".into(), Kind::File),
                ("a/host".into(), Kind::Symlink),
            ]
        );
        assert_eq!(dir.read_link(Path::new("a/host")).unwrap(), host.path());
        let e = dir.read(Path::new("a/host/secret")).unwrap_err();
        assert!(matches!(e, BeneathError::ThroughLink { .. }), "{e}");
        let e = dir.dir(Path::new("a/host")).unwrap_err();
        assert!(matches!(e, BeneathError::IsLink { .. }), "{e}");
        assert!(e
            .to_string()
            .ends_with("is a symlink, not a directory: refusing to follow it"));
        assert!(dir.stat(Path::new("a/host/secret")).is_err());
        assert_eq!(dir.stat(Path::new("a/nope")).unwrap(), None);
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let out = tempfile::tempdir().unwrap();
        let p = cstr(&out.path().join("fifo")).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(p.as_ptr(), 0o644) }, 0);
        let dir = Dir::open(out.path()).unwrap();
        let e = dir.open_file(Path::new("fifo")).unwrap_err();
        assert!(matches!(e, BeneathError::WrongKind { .. }), "{e}");
    }
}
