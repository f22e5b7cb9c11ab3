//! Size-limited directories for the writable mounts of a container.
//!
//! A bind mount of a host directory lets a container write until the
//! host's filesystem is full. A [`Volume`] is a directory that is the root
//! of a filesystem of its own: ext4 in a sparse image file, on a loop
//! device. A write past its size fails with `ENOSPC` inside the volume,
//! and the host's disk holds at most its size, allocated as it is written
//! (a fresh 16 GiB volume takes 4 MiB). ext4 takes idmapped mounts (the
//! runtime's `ridmap` binds) and serves as an overlayfs upper directory.
//!
//! Making one needs root (a loop device and a mount) and `mkfs.ext4`
//! (e2fsprogs). A volume is private to the process that made it: it holds
//! an exclusive `flock` on the image while the [`Volume`] lives, and
//! dropping it unmounts it and deletes the image. [`reclaim`] removes a
//! volume whose process was killed. Loop devices are attached with
//! `LO_FLAGS_AUTOCLEAR`: one detaches itself when its filesystem is
//! unmounted everywhere, so unmounting is all the cleanup a volume needs,
//! and a process killed between attaching and mounting leaves no device
//! behind. They do direct I/O on the image where the host's filesystem
//! allows it (no second copy of each page in the page cache).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::SandboxError;

const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;
const LOOP_MAJOR: u64 = 7;
/// The block size of every volume (and of its loop device).
const BLOCK: u64 = 4096;
/// The smallest volume: ext4 needs a few MiB of its own.
pub const MIN_BYTES: u64 = 16 << 20;

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>` (`LOOP_CONFIGURE`, Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn sys(what: impl Into<String>, e: io::Error) -> SandboxError {
    SandboxError::sys(what, e)
}

fn cpath(p: &Path) -> Result<CString, SandboxError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        sys(
            format!("{} contains a NUL byte", p.display()),
            io::Error::from(io::ErrorKind::InvalidInput),
        )
    })
}

/// A private volume mounted at a directory; see the [module](self).
#[derive(Debug)]
pub struct Volume {
    mountpoint: PathBuf,
    image: PathBuf,
    /// An exclusive `flock` on the image while this process owns it.
    _lock: File,
    bytes: u64,
}

impl Volume {
    /// Makes a volume of `bytes` (rounded down to 4 KiB; at least
    /// [`MIN_BYTES`]) in the sparse file `image` (which must not exist) and
    /// mounts it on the directory `mountpoint` (created if missing, mode
    /// 0700), `nosuid,nodev`.
    pub fn create(image: &Path, mountpoint: &Path, bytes: u64) -> Result<Volume, SandboxError> {
        let bytes = checked_size(bytes)?;
        // Made and locked under a temporary name, then renamed: a
        // `reclaim` never sees an unlocked image of a live volume.
        let making = image.with_file_name(format!(
            "{}.new",
            image.file_name().unwrap_or_default().to_string_lossy()
        ));
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&making)
            .map_err(|e| sys(format!("creating {}", making.display()), e))?;
        let made = (|| {
            lock.try_lock()
                .map_err(|e| sys(format!("locking {}", making.display()), e.into()))?;
            lock.set_len(bytes)
                .map_err(|e| sys(format!("sizing {}", making.display()), e))?;
            mkfs(&making)?;
            fs::rename(&making, image).map_err(|e| sys(format!("renaming {}", making.display()), e))
        })();
        if let Err(e) = made {
            let _ = fs::remove_file(&making);
            return Err(e);
        }
        let volume = Volume {
            mountpoint: mountpoint.to_path_buf(),
            image: image.to_path_buf(),
            _lock: lock,
            bytes,
        };
        fs::create_dir_all(mountpoint)
            .and_then(|()| fs::set_permissions(mountpoint, fs::Permissions::from_mode(0o700)))
            .map_err(|e| sys(format!("creating {}", mountpoint.display()), e))?;
        let dev = attach(image)?;
        mount_ext4(&dev.path, mountpoint, "noinit_itable")?;
        drop(dev);
        clean_root(mountpoint, 0o700)?;
        Ok(volume)
    }

    /// The directory the volume is mounted on.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Its size in bytes, as asked for.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = unmount(&self.mountpoint);
        let _ = fs::remove_file(&self.image);
        let _ = fs::remove_dir(&self.mountpoint);
    }
}

fn checked_size(bytes: u64) -> Result<u64, SandboxError> {
    let bytes = bytes / BLOCK * BLOCK;
    if bytes < MIN_BYTES {
        return Err(sys(
            format!(
                "a volume of {bytes} bytes is too small (at least {} MiB)",
                MIN_BYTES >> 20
            ),
            io::Error::from(io::ErrorKind::InvalidInput),
        ));
    }
    Ok(bytes)
}

/// `mkfs.ext4` of e2fsprogs, wherever it is installed.
fn mkfs_program() -> PathBuf {
    let in_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    in_path
        .into_iter()
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("mkfs.ext4"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("mkfs.ext4"))
}

/// Makes the filesystem in `image`: 4 KiB blocks, an inode per 8 KiB
/// (trees of many small files: `node_modules`), no reserved blocks, no
/// journal (a volume does not outlive its process), and nothing written
/// that is not needed now (inode tables are left to read as zeros: the
/// file is sparse).
fn mkfs(image: &Path) -> Result<(), SandboxError> {
    let mut cmd = Command::new(mkfs_program());
    cmd.args(["-q", "-F", "-m", "0", "-b", "4096", "-i", "8192"]);
    cmd.args(["-O", "^has_journal"]);
    cmd.args([
        "-E",
        "lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0",
    ]);
    cmd.arg(image);
    let out = cmd
        .output()
        .map_err(|e| sys("running mkfs.ext4 (install e2fsprogs)", e))?;
    if !out.status.success() {
        return Err(sys(
            format!(
                "mkfs.ext4 {} failed: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            io::Error::other("mkfs.ext4 failed"),
        ));
    }
    Ok(())
}

/// The mounted filesystem's root: no `lost+found` (a step's directory is
/// empty), the given mode.
fn clean_root(mountpoint: &Path, mode: u32) -> Result<(), SandboxError> {
    let _ = fs::remove_dir(mountpoint.join("lost+found"));
    fs::set_permissions(mountpoint, fs::Permissions::from_mode(mode))
        .map_err(|e| sys(format!("chmod {}", mountpoint.display()), e))
}

/// An attached loop device, open.
struct LoopDev {
    path: PathBuf,
    _fd: OwnedFd,
}

/// Attaches `image` to a free loop device (autoclear, direct I/O where the
/// host's filesystem takes it).
fn attach(image: &Path) -> Result<LoopDev, SandboxError> {
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|e| sys(format!("opening {}", image.display()), e))?;
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| sys("opening /dev/loop-control (loop devices need root)", e))?;
    let mut name = [0u8; 64];
    let bytes = image.as_os_str().as_bytes();
    let n = bytes.len().min(63);
    name[..n].copy_from_slice(&bytes[..n]);
    let mut last = io::Error::from(io::ErrorKind::ResourceBusy);
    for _ in 0..32 {
        // SAFETY: an ioctl without arguments on our descriptor.
        let nr = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if nr < 0 {
            return Err(sys(
                "finding a free loop device",
                io::Error::last_os_error(),
            ));
        }
        let path = PathBuf::from(format!("/dev/loop{nr}"));
        let dev = match open_loop(&path, nr as u64) {
            Ok(f) => f,
            Err(e) => return Err(sys(format!("opening {}", path.display()), e)),
        };
        let mut flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
        loop {
            let config = LoopConfig {
                fd: backing.as_raw_fd() as u32,
                block_size: BLOCK as u32,
                info: LoopInfo64 {
                    lo_device: 0,
                    lo_inode: 0,
                    lo_rdevice: 0,
                    lo_offset: 0,
                    lo_sizelimit: 0,
                    lo_number: 0,
                    lo_encrypt_type: 0,
                    lo_encrypt_key_size: 0,
                    lo_flags: flags,
                    lo_file_name: name,
                    lo_crypt_name: [0; 64],
                    lo_encrypt_key: [0; 32],
                    lo_init: [0; 2],
                },
                reserved: [0; 8],
            };
            // SAFETY: LOOP_CONFIGURE reads a `struct loop_config` we own.
            let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE as _, &config) };
            if rc == 0 {
                return Ok(LoopDev {
                    path,
                    _fd: dev.into(),
                });
            }
            last = io::Error::last_os_error();
            match last.raw_os_error() {
                // The host's filesystem does no direct I/O: buffered.
                Some(libc::EINVAL) if flags & LO_FLAGS_DIRECT_IO != 0 => {
                    flags &= !LO_FLAGS_DIRECT_IO;
                }
                _ => break,
            }
        }
        // Taken by another process meanwhile: the next free one.
        if last.raw_os_error() != Some(libc::EBUSY) {
            break;
        }
    }
    Err(sys(
        format!("attaching {} to a loop device", image.display()),
        last,
    ))
}

/// Opens `/dev/loopN`, making the node where `/dev` is not a devtmpfs (a
/// container's static `/dev`).
fn open_loop(path: &Path, nr: u64) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL");
            // SAFETY: mknod on a NUL-terminated path.
            let rc = unsafe {
                libc::mknod(
                    c.as_ptr(),
                    libc::S_IFBLK | 0o600,
                    libc::makedev(LOOP_MAJOR as u32, nr as u32),
                )
            };
            if rc != 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(e);
                }
            }
            open()
        }
        r => r,
    }
}

fn mount_ext4(dev: &Path, mountpoint: &Path, data: &str) -> Result<(), SandboxError> {
    let (src, dst) = (cpath(dev)?, cpath(mountpoint)?);
    let data = CString::new(data).expect("no NUL");
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            c"ext4".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr() as *const libc::c_void,
        )
    };
    if rc != 0 {
        return Err(sys(
            format!("mounting {} on {}", dev.display(), mountpoint.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Unmounts the volume at `mountpoint` (lazily: a process that still has a
/// file open there keeps it until it closes it; the loop device detaches
/// then). Not mounted is not an error.
pub fn unmount(mountpoint: &Path) -> Result<(), SandboxError> {
    let c = cpath(mountpoint)?;
    // SAFETY: umount2 on a NUL-terminated path.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            return Err(sys(format!("unmounting {}", mountpoint.display()), e));
        }
    }
    Ok(())
}

/// The image file behind the loop device of filesystem `dev` (a
/// `st_dev`), or `None` when it is not on a loop device.
fn backing_file(dev: u64) -> Option<PathBuf> {
    if libc::major(dev) as u64 != LOOP_MAJOR {
        return None;
    }
    let text = fs::read_to_string(format!(
        "/sys/dev/block/{}:{}/loop/backing_file",
        libc::major(dev),
        libc::minor(dev)
    ))
    .ok()?;
    Some(PathBuf::from(text.trim_end_matches('\n')))
}

/// The absolute path of `p` with its parent's links resolved (as the
/// kernel names a loop device's backing file).
fn canonical(p: &Path) -> PathBuf {
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => fs::canonicalize(parent)
            .map(|d| d.join(name))
            .unwrap_or_else(|_| p.to_path_buf()),
        _ => p.to_path_buf(),
    }
}

/// Whether a volume of `image` is mounted on `mountpoint`.
pub fn is_mounted(image: &Path, mountpoint: &Path) -> bool {
    is_mountpoint(mountpoint)
        && fs::metadata(mountpoint)
            .ok()
            .and_then(|m| backing_file(m.dev()))
            .is_some_and(|b| b == canonical(image))
}

/// Whether `dir` is on another filesystem than its parent.
fn is_mountpoint(dir: &Path) -> bool {
    match (fs::metadata(dir), dir.parent().map(fs::metadata)) {
        (Ok(d), Some(Ok(p))) => d.dev() != p.dev(),
        _ => false,
    }
}

/// Removes the private volume `image` mounted on `mountpoint` if the
/// process that made it is gone (its lock is free): unmounts it, removes
/// the directory and the image. Returns whether it did. A volume that was
/// being made (`IMAGE.new`) goes the same way.
pub fn reclaim(image: &Path, mountpoint: &Path) -> Result<bool, SandboxError> {
    let Ok(file) = OpenOptions::new().read(true).open(image) else {
        return Ok(false);
    };
    if file.try_lock().is_err() {
        return Ok(false);
    }
    if is_mounted(image, mountpoint) {
        unmount(mountpoint)?;
    }
    if mountpoint.is_dir() {
        fs::remove_dir_all(mountpoint)
            .map_err(|e| sys(format!("removing {}", mountpoint.display()), e))?;
    }
    fs::remove_file(image).map_err(|e| sys(format!("removing {}", image.display()), e))?;
    Ok(true)
}

/// Space of the filesystem holding `path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Its size in bytes.
    pub bytes: u64,
    /// Bytes an unprivileged writer can still write.
    pub available: u64,
    /// Inodes still free.
    pub files_available: u64,
}

impl Usage {
    /// Whether a write has run out of space there: less than 8 MiB left
    /// (ext4 refuses a write with some hundred KiB still free, held for
    /// its metadata), or no inode left.
    pub fn is_full(&self) -> bool {
        self.available < 8 << 20 || self.files_available == 0
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        self.bytes.saturating_sub(self.available)
    }
}

/// The space of the filesystem holding `path`.
pub fn usage(path: &Path) -> Result<Usage, SandboxError> {
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| sys(format!("statvfs {}", path.display()), e.into()))?;
    let frag = st.fragment_size() as u64;
    Ok(Usage {
        bytes: st.blocks() as u64 * frag,
        available: st.blocks_available() as u64 * frag,
        files_available: st.files_available() as u64,
    })
}
