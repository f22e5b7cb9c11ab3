//! Idmapped mounts (`mount_setattr(2)` with `MOUNT_ATTR_IDMAP`): a view of
//! a directory in which the ids on disk are shifted through a user
//! namespace's mapping, so that files owned by host root read as owned by
//! a container's root whose host id is unprivileged, and what that root
//! writes lands on disk as host root's. The runtime makes them for the
//! `idmap`/`ridmap` mount options and [`crate::ROOTFS_IDMAP`]; callers that
//! assemble a root filesystem themselves (an overlay for verification) use
//! [`UserNs`] and [`bind_idmapped`] before any container exists.

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::SandboxError;
use crate::spec::IdRange;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
pub(crate) const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(2)` of the detached tree `fd`: sets `attr_set` (with the
/// user namespace `userns_fd` for an idmap), recursively with
/// [`AT_RECURSIVE`] in `rec`.
fn set_attr(fd: &OwnedFd, attr_set: u64, userns_fd: u64, rec: libc::c_uint) -> io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd,
    };
    // SAFETY: mount_setattr on our fd with a correctly sized struct.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | rec,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A detached clone of `source` (recursive or not), idmapped with the user
/// namespace `userns`.
pub(crate) fn idmapped_tree(
    source: &CStr,
    recursive: bool,
    userns: RawFd,
) -> Result<OwnedFd, SandboxError> {
    let what = |step: &str| {
        format!(
            "{step} for an idmapped mount of {}",
            source.to_string_lossy()
        )
    };
    let rec = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: open_tree on a NUL-terminated path.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | rec,
        )
    };
    if fd < 0 {
        return Err(SandboxError::sys(
            what("open_tree"),
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    if let Err(e) = set_attr(&fd, MOUNT_ATTR_IDMAP, userns as u64, rec) {
        let hint = if e.raw_os_error() == Some(libc::EINVAL) {
            " (the filesystem does not support idmapped mounts)"
        } else {
            ""
        };
        return Err(SandboxError::sys(
            format!("{}{hint}", what("mount_setattr")),
            e,
        ));
    }
    Ok(fd)
}

/// A user namespace that holds a mapping and nothing else (its one process
/// has exited): what an idmapped mount is made with before the container
/// that will use the same mapping exists.
#[derive(Debug)]
pub struct UserNs(OwnedFd);

impl UserNs {
    /// A user namespace mapping ids `0..ids.size` to `ids.uid`/`ids.gid`.
    /// Needs root (writing a mapping of other ids).
    pub fn new(ids: &IdRange) -> Result<UserNs, SandboxError> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| SandboxError::sys("creating a pipe", e))?;
        // SAFETY: clone without CLONE_VM behaves like fork; the child only
        // reads from the pipe and exits.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if pid < 0 {
            return Err(SandboxError::sys(
                "creating a user namespace for idmapped mounts",
                io::Error::last_os_error(),
            ));
        }
        if pid == 0 {
            // SAFETY: raw system calls only, then _exit.
            // The child's copy of the write end must go, or the read
            // never sees the parent close its own.
            unsafe {
                libc::close(w.as_raw_fd());
                let mut b = [0u8; 1];
                libc::read(r.as_raw_fd(), b.as_mut_ptr() as *mut libc::c_void, 1);
                libc::_exit(0);
            }
        }
        drop(r);
        let pid = pid as libc::pid_t;
        let result = (|| {
            let write = |file: &str, map: String| {
                fs::write(format!("/proc/{pid}/{file}"), map).map_err(|source| SandboxError::Sys {
                    what: format!("writing {file} of a user namespace for idmapped mounts"),
                    source,
                })
            };
            write("uid_map", format!("0 {} {}\n", ids.uid, ids.size))?;
            write("gid_map", format!("0 {} {}\n", ids.gid, ids.size))?;
            fs::File::open(format!("/proc/{pid}/ns/user"))
                .map(|f| UserNs(OwnedFd::from(f)))
                .map_err(|e| SandboxError::sys("opening a user namespace for idmapped mounts", e))
        })();
        drop(w);
        let mut st = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        result
    }
}

/// Mounts a read-only idmapped view of `source` (recursively) at `target`,
/// with the mapping of `ns` (a lower layer of an overlay: nothing is
/// written through it, and a view left mounted by a killed process cannot
/// be a way to delete or change the shared tree behind it).
pub fn bind_idmapped(source: &Path, target: &Path, ns: &UserNs) -> Result<(), SandboxError> {
    let src = CString::new(source.as_os_str().as_bytes())
        .map_err(|_| SandboxError::spec("idmap", "a path contains a NUL byte"))?;
    let dst = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| SandboxError::spec("idmap", "a path contains a NUL byte"))?;
    let tree = idmapped_tree(&src, true, ns.0.as_raw_fd())?;
    set_attr(&tree, MOUNT_ATTR_RDONLY, 0, AT_RECURSIVE).map_err(|e| {
        SandboxError::sys(
            format!("making the idmapped view of {} read-only", source.display()),
            e,
        )
    })?;
    // SAFETY: move_mount of our detached mount onto a NUL-terminated path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(SandboxError::sys(
            format!(
                "mounting an idmapped view of {} at {}",
                source.display(),
                target.display()
            ),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A detached clone of `source` without an idmap (see `idmapped_tree`).
pub(crate) fn plain_tree(source: &CStr, recursive: bool) -> Result<OwnedFd, SandboxError> {
    let rec = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: open_tree on a NUL-terminated path.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | rec,
        )
    };
    if fd < 0 {
        return Err(SandboxError::sys(
            format!("open_tree of {}", source.to_string_lossy()),
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// An error and its sources on one line.
pub(crate) fn chain(e: &SandboxError) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
