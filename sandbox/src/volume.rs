//! Size-limited directories for the writable mounts of a container.
//!
//! A bind mount of a host directory lets a container write until the
//! host's filesystem is full. A volume is a directory that is the root of
//! a filesystem of its own: ext4 in a sparse image file, on a loop device.
//! A write past its size fails with `ENOSPC` inside the volume, and the
//! host's disk holds at most its size, allocated as it is written (a fresh
//! 16 GiB volume takes 4 MiB). ext4 takes idmapped mounts (the runtime's
//! `ridmap` binds) and serves as an overlayfs upper directory.
//!
//! Making one needs root (a loop device and a mount) and `mkfs.ext4`
//! (e2fsprogs). Two kinds:
//!
//! - [`Volume::create`]: a fresh, private volume (a build step's scratch),
//!   unmounted and its image deleted when the value is dropped. Its owner
//!   holds an exclusive `flock` on the image while it lives, so that
//!   [`reclaim`] can tell a volume whose process was killed and remove it.
//! - [`mount_shared`]: a volume that persists (a package cache), mounted in
//!   place by whichever process needs it first, shared by all, and
//!   [`unmount`]ed by the caller when nobody uses it (the caller keeps its
//!   own record of users; the image stays). A process that mounts it finds
//!   a loop device already attached to the image (kept alive by a
//!   container that still has it mounted) and uses that: an ext4 image
//!   mounted through two loop devices at once would be corrupted.
//!
//! Loop devices are attached with `LO_FLAGS_AUTOCLEAR`: one detaches
//! itself when its filesystem is unmounted everywhere, so unmounting is all
//! the cleanup a volume needs, and a process killed between attaching and
//! mounting leaves no device behind. They do direct I/O on the image where
//! the host's filesystem allows it (no second copy in the page cache).

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
const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;
const LOOP_MAJOR: u64 = 7;
/// `EXT4_IOC_RESIZE_FS`: `_IOW('f', 16, __u64)`.
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;
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
            mkfs(&making, false)?;
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
/// (trees of many small files: `node_modules`), no reserved blocks, and
/// nothing written that is not needed now (inode tables and journal are
/// left to read as zeros: the file is sparse). A `journal` for volumes
/// that outlive a process (a crash of the machine leaves them
/// consistent); scratch needs none.
fn mkfs(image: &Path, journal: bool) -> Result<(), SandboxError> {
    let mut cmd = Command::new(mkfs_program());
    cmd.args(["-q", "-F", "-m", "0", "-b", "4096", "-i", "8192"]);
    if !journal {
        cmd.args(["-O", "^has_journal"]);
    }
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

/// A loop device already attached to `image` (kept by a mount somewhere,
/// such as a container's copy of it).
fn attached(image: &Path) -> Option<PathBuf> {
    let want = canonical(image);
    let ino = fs::metadata(image).ok()?.ino();
    fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .find_map(|e| {
            let b = fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            (Path::new(b.trim_end_matches('\n')) == want).then_some(())?;
            let dev = PathBuf::from("/dev").join(e.file_name());
            // The path names the file; the inode proves it is this one and
            // not one deleted and made again under the same name.
            let f = File::open(&dev).ok()?;
            // SAFETY: all-zero bytes are a valid `struct loop_info64`.
            let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
            // SAFETY: LOOP_GET_STATUS64 fills a `struct loop_info64` we own.
            let rc = unsafe { libc::ioctl(f.as_raw_fd(), 0x4C05 as _, &mut info) };
            (rc == 0 && info.lo_inode == ino).then_some(dev)
        })
}

/// Mounts the shared volume `image` on `mountpoint` unless it is mounted
/// there; makes the image (`bytes`, with a journal) if it does not exist,
/// and grows it (online) when `bytes` is larger than it is. Whatever the
/// directory holds while it is not mounted is removed first when
/// `clear_unmounted` (a cache's contents from before it was a volume, that
/// the mount would hide). Returns whether it mounted it now. Concurrent
/// callers are serialized by a lock on the image.
pub fn mount_shared(
    image: &Path,
    mountpoint: &Path,
    bytes: u64,
    clear_unmounted: bool,
) -> Result<bool, SandboxError> {
    let bytes = checked_size(bytes)?;
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(image)
        .map_err(|e| sys(format!("opening {}", image.display()), e))?;
    lock.lock()
        .map_err(|e| sys(format!("locking {}", image.display()), e))?;
    if is_mounted(image, mountpoint) {
        grow(image, &lock, mountpoint, bytes)?;
        return Ok(false);
    }
    fs::create_dir_all(mountpoint)
        .map_err(|e| sys(format!("creating {}", mountpoint.display()), e))?;
    if is_mountpoint(mountpoint) {
        // Never clear, nor mount over, what another filesystem holds.
        return Err(sys(
            format!(
                "{} is a mount of something other than {}",
                mountpoint.display(),
                image.display()
            ),
            io::Error::from(io::ErrorKind::ResourceBusy),
        ));
    }
    if clear_unmounted {
        clear_dir(mountpoint)?;
    }
    const DATA: &str = "noinit_itable,discard";
    let fresh = |lock: &File| -> Result<(), SandboxError> {
        lock.set_len(0)
            .and_then(|()| lock.set_len(bytes))
            .map_err(|e| sys(format!("sizing {}", image.display()), e))?;
        mkfs(image, true)
    };
    let len = lock
        .metadata()
        .map_err(|e| sys(format!("reading {}", image.display()), e))?
        .len();
    if len == 0 {
        fresh(&lock)?;
    }
    if let Some(dev) = attached(image) {
        // Mounted elsewhere (a container's copy): the same device, so the
        // same filesystem, never a second one on the same image.
        mount_ext4(&dev, mountpoint, DATA)?;
    } else {
        let dev = attach(image)?;
        if let Err(e) = mount_ext4(&dev.path, mountpoint, DATA) {
            // An image left unusable (a crash while it was made): a cache
            // may start empty.
            tracing::warn!(image = %image.display(), error = %e, "remaking a volume that does not mount");
            drop(dev);
            fresh(&lock)?;
            let dev = attach(image)?;
            mount_ext4(&dev.path, mountpoint, DATA)?;
        }
    }
    clean_root(mountpoint, 0o755)?;
    grow(image, &lock, mountpoint, bytes)?;
    Ok(true)
}

/// Grows the mounted volume to `bytes` if it is smaller (never shrinks).
fn grow(image: &Path, file: &File, mountpoint: &Path, bytes: u64) -> Result<(), SandboxError> {
    let len = file
        .metadata()
        .map_err(|e| sys(format!("reading {}", image.display()), e))?
        .len();
    if bytes <= len {
        return Ok(());
    }
    file.set_len(bytes)
        .map_err(|e| sys(format!("sizing {}", image.display()), e))?;
    let dev_id = fs::metadata(mountpoint)
        .map_err(|e| sys(format!("reading {}", mountpoint.display()), e))?
        .dev();
    let name = fs::read_link(format!(
        "/sys/dev/block/{}:{}",
        libc::major(dev_id),
        libc::minor(dev_id)
    ))
    .ok()
    .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
    .unwrap_or_default();
    let dev = format!("/dev/{name}");
    let loopdev = File::open(&dev).map_err(|e| sys(format!("opening {dev}"), e))?;
    // SAFETY: LOOP_SET_CAPACITY takes no argument.
    if unsafe { libc::ioctl(loopdev.as_raw_fd(), LOOP_SET_CAPACITY as _, 0) } != 0 {
        return Err(sys(
            format!("resizing {dev} to {}", image.display()),
            io::Error::last_os_error(),
        ));
    }
    let root =
        File::open(mountpoint).map_err(|e| sys(format!("opening {}", mountpoint.display()), e))?;
    let blocks: u64 = bytes / BLOCK;
    // SAFETY: EXT4_IOC_RESIZE_FS reads a u64 we own.
    if unsafe { libc::ioctl(root.as_raw_fd(), EXT4_IOC_RESIZE_FS as _, &blocks) } != 0 {
        return Err(sys(
            format!("growing the filesystem on {}", mountpoint.display()),
            io::Error::last_os_error(),
        ));
    }
    tracing::info!(volume = %mountpoint.display(), bytes, "grew a volume");
    Ok(())
}

/// Removes the entries of `dir`.
fn clear_dir(dir: &Path) -> Result<(), SandboxError> {
    for entry in fs::read_dir(dir)
        .map_err(|e| sys(format!("reading {}", dir.display()), e))?
        .flatten()
    {
        let path = entry.path();
        let r = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        r.map_err(|e| sys(format!("removing {}", path.display()), e))?;
    }
    Ok(())
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
