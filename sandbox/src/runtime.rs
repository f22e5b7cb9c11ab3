//! The core runtime: a spec is turned into a [`Plan`] (every path, string and
//! number the container's init needs, computed in the caller), then a child
//! is cloned into new namespaces and runs [`child_main`], which makes only
//! system calls (no allocation, no locks: the caller may be multi-threaded)
//! until it executes the container's program.

use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Spec};

use crate::cgroup::Cgroup;
use crate::error::SandboxError;
use crate::idmap::{idmapped_tree, MOVE_MOUNT_F_EMPTY_PATH};
use crate::seccomp::{self, Program};

/// Where the child writes the failing step before exiting.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ChildError {
    step: u32,
    /// Index of the mount, device or path the step was working on.
    index: u32,
    errno: i32,
}

/// The steps of the child, in order; the index is what the child reports.
const STEPS: &[&str] = &[
    "waiting for the parent",                                            // 0
    "dup2 of stdio",                                                     // 1
    "setns (linux.namespaces[].path)",                                   // 2
    "unshare of the cgroup namespace",                                   // 3
    "setting mount propagation of /",                                    // 4
    "bind mount of the rootfs",                                          // 5
    "creating a mount point",                                            // 6
    "mounting (mounts[])",                                               // 7
    "setting mount options (mounts[])",                                  // 8
    "creating a device (linux.devices)",                                 // 9
    "creating a /dev symlink",                                           // 10
    "pivot_root",                                                        // 11
    "masking a path (linux.maskedPaths)",                                // 12
    "read-only path (linux.readonlyPaths)",                              // 13
    "remounting the root read-only (root.readonly)",                     // 14
    "sethostname (hostname)",                                            // 15
    "bringing up the loopback interface",                                // 16
    "writing a sysctl (linux.sysctl)",                                   // 17
    "setting an rlimit (process.rlimits)",                               // 18
    "dropping bounding capabilities (process.capabilities.bounding)",    // 19
    "setgroups (process.user.additionalGids)",                           // 20
    "setresgid (process.user.gid)",                                      // 21
    "setresuid (process.user.uid)",                                      // 22
    "capset (process.capabilities)",                                     // 23
    "raising ambient capabilities (process.capabilities.ambient)",       // 24
    "setting no_new_privs (process.noNewPrivileges)",                    // 25
    "loading seccomp (linux.seccomp)",                                   // 26
    "chdir (process.cwd)",                                               // 27
    "exec (process.args)",                                               // 28
    "waiting for start",                                                 // 29
    "setting up the console (process.terminal)",                         // 30
    "setdomainname (domainname)",                                        // 31
    "setsid",                                                            // 32
    "receiving idmapped mounts from the parent",                         // 33
    "moving an idmapped mount into place (idmap, dev.ftl.rootfs-idmap)", // 34
];
const STEP_EXEC: u32 = 28;

#[derive(Debug)]
struct MountOp {
    source: Option<CString>,
    target: CString,
    fstype: Option<CString>,
    flags: libc::c_ulong,
    data: Option<CString>,
    /// Flags for a second, remount pass (bind mounts with ro/nosuid/...).
    remount: Option<libc::c_ulong>,
    propagation: libc::c_ulong,
    /// Directories to create before mounting (outermost first).
    mkdirs: Vec<CString>,
    /// Create `target` as an empty file (bind mount of a file).
    file: bool,
    /// sysfs: fall back to a recursive read-only bind of /sys.
    sysfs_fallback: bool,
    /// cgroup: a failure is ignored.
    optional: bool,
    /// `idmap` / `ridmap` (`Some(recursive)`): the parent clones the source
    /// as a detached mount idmapped with the container's user namespace,
    /// and the child moves it onto the target instead of bind mounting.
    idmap: Option<bool>,
}

#[derive(Debug)]
struct Symlink {
    target: CString,
    link: CString,
}

/// Capability sets as bit masks.
#[derive(Debug, Clone, Copy, Default)]
struct CapSets {
    bounding: u64,
    effective: u64,
    permitted: u64,
    inheritable: u64,
    ambient: u64,
}

/// Everything the child needs, computed before clone.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) clone_flags: libc::c_int,
    join: Vec<(OwnedFd, libc::c_int)>,
    pub(crate) userns: bool,
    pub(crate) uid_map: Option<String>,
    pub(crate) gid_map: Option<String>,
    unshare_cgroupns: bool,
    mount_ns: bool,
    root_propagation: libc::c_ulong,
    rootfs: CString,
    rootfs_dot: CString,
    /// What is mounted at `rootfs`: the same path, unless relocated.
    rootfs_src: CString,
    /// `--overlay`: (scratch dir, its upper, its work, overlay options).
    overlay: Option<(CString, CString, CString, CString)>,
    mounts: Vec<MountOp>,
    symlinks: Vec<Symlink>,
    masked: Vec<CString>,
    readonly: Vec<CString>,
    root_readonly: bool,
    hostname: Option<CString>,
    domainname: Option<CString>,
    loopback: bool,
    sysctls: Vec<(CString, CString)>,
    rlimits: Vec<(libc::c_int, libc::rlimit)>,
    umask: Option<libc::mode_t>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    caps: Option<CapSets>,
    last_cap: u32,
    nnp: bool,
    seccomp: Option<Program>,
    cwd: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// Candidate paths for argv[0] (PATH lookup done in advance).
    exec_candidates: Vec<CString>,
    pub(crate) oom_score_adj: Option<i32>,
    /// Cgroup path from the spec, when set.
    pub(crate) cgroups_path: Option<PathBuf>,
    pub(crate) resources: Option<oci_spec::runtime::LinuxResources>,
    /// SIGKILL the init when the thread that started it exits (`run`).
    pub(crate) die_with_parent: bool,
    /// Idmap the root filesystem ([`crate::ROOTFS_IDMAP`]).
    idmap_rootfs: bool,
    /// A user-mode network stack to attach to the new network namespace
    /// before the init is released (`net::prepare`).
    pub(crate) egress: Option<crate::net::Egress>,
}

fn cstr(s: impl AsRef<OsStr>, field: &str) -> Result<CString, SandboxError> {
    CString::new(s.as_ref().as_bytes())
        .map_err(|_| SandboxError::spec(field, "contains a NUL byte"))
}

/// Joins `dest` (absolute, inside the container) onto `root`, resolving
/// symlinks as if `root` were `/`, so that no mount can land outside it.
/// Returns the host path and the directories that do not exist yet.
pub(crate) fn secure_join(root: &Path, dest: &Path) -> PathBuf {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<PathBuf> = dest
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match Path::new(&part).components().next() {
            Some(Component::RootDir) | Some(Component::CurDir) | None => continue,
            Some(Component::ParentDir) => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = resolved.join(&part);
        let host = root.join(&candidate);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() && links < 40 => {
                links += 1;
                if let Ok(target) = fs::read_link(&host) {
                    if target.is_absolute() {
                        resolved = PathBuf::new();
                    }
                    for c in target.components().rev() {
                        pending.push(PathBuf::from(c.as_os_str()));
                    }
                    continue;
                }
                resolved = candidate;
            }
            _ => resolved = candidate,
        }
    }
    root.join(resolved)
}

fn mount_flags(options: &[String]) -> (libc::c_ulong, libc::c_ulong, Vec<String>, bool, bool) {
    // (flags, propagation, data, bind, clear_ro)
    let mut flags = 0;
    let mut prop = 0;
    let mut data = Vec::new();
    let mut bind = false;
    for o in options {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match o.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "atime" => (0, libc::MS_NOATIME),
            "noatime" => (libc::MS_NOATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "bind" => {
                bind = true;
                (libc::MS_BIND, 0)
            }
            "rbind" => {
                bind = true;
                (libc::MS_BIND | libc::MS_REC, 0)
            }
            "private" => {
                prop = libc::MS_PRIVATE;
                (0, 0)
            }
            "rprivate" => {
                prop = libc::MS_PRIVATE | libc::MS_REC;
                (0, 0)
            }
            "shared" => {
                prop = libc::MS_SHARED;
                (0, 0)
            }
            "rshared" => {
                prop = libc::MS_SHARED | libc::MS_REC;
                (0, 0)
            }
            "slave" => {
                prop = libc::MS_SLAVE;
                (0, 0)
            }
            "rslave" => {
                prop = libc::MS_SLAVE | libc::MS_REC;
                (0, 0)
            }
            "unbindable" => {
                prop = libc::MS_UNBINDABLE;
                (0, 0)
            }
            "runbindable" => {
                prop = libc::MS_UNBINDABLE | libc::MS_REC;
                (0, 0)
            }
            "tmpcopyup" | "defaults" => (0, 0),
            other => {
                data.push(other.to_string());
                (0, 0)
            }
        };
        flags = (flags | set) & !clear;
    }
    let clear_ro = options.iter().any(|o| o == "rw");
    (flags, prop, data, bind, clear_ro)
}

fn propagation_flag(name: &str) -> Result<libc::c_ulong, SandboxError> {
    Ok(match name {
        "" | "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        other => {
            return Err(SandboxError::spec(
                "linux.rootfsPropagation",
                format!("unknown propagation {other:?}"),
            ))
        }
    })
}

fn rlimit_resource(t: PosixRlimitType) -> libc::c_int {
    (match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }) as libc::c_int
}

fn cap_mask(
    set: &Option<oci_spec::runtime::Capabilities>,
    field: &str,
) -> Result<u64, SandboxError> {
    let mut mask = 0u64;
    for c in set.iter().flatten() {
        let name = serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let cap: caps::Capability = name
            .parse()
            .map_err(|_| SandboxError::spec(field, format!("unknown capability {name}")))?;
        mask |= 1u64 << cap.index();
    }
    Ok(mask)
}

fn last_cap() -> u32 {
    fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// The default devices every container gets.
pub(crate) const DEFAULT_DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

impl Plan {
    /// Computes the plan for `spec` with its root filesystem at `rootfs`.
    pub(crate) fn new(spec: &Spec, rootfs: &Path) -> Result<Plan, SandboxError> {
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| SandboxError::spec("process", "missing"))?;
        let args = process.args().clone().unwrap_or_default();
        if args.is_empty() || args[0].is_empty() {
            return Err(SandboxError::spec("process.args", "must name a program"));
        }
        let linux = spec.linux().clone().unwrap_or_default();
        let euid = nix::unistd::geteuid().as_raw();
        let egid = nix::unistd::getegid().as_raw();

        let mut clone_flags = 0;
        let mut join = Vec::new();
        let mut unshare_cgroupns = false;
        let mut userns = false;
        let mut mount_ns = false;
        let mut new_netns = false;
        for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
            let flag = match ns.typ() {
                LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
                LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
                LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
                LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
                LinuxNamespaceType::User => libc::CLONE_NEWUSER,
                LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
                LinuxNamespaceType::Network => libc::CLONE_NEWNET,
                LinuxNamespaceType::Time => {
                    return Err(SandboxError::spec(
                        format!("linux.namespaces[{i}].type"),
                        "time namespaces are not supported",
                    ))
                }
            };
            if flag == libc::CLONE_NEWNS {
                mount_ns = true;
            }
            if let Some(path) = ns.path() {
                if flag == libc::CLONE_NEWPID || flag == libc::CLONE_NEWUSER {
                    return Err(SandboxError::spec(
                        format!("linux.namespaces[{i}].path"),
                        "joining an existing pid or user namespace is not supported",
                    ));
                }
                let fd = fs::File::open(path).map_err(|source| SandboxError::Sys {
                    what: format!(
                        "opening namespace {} (linux.namespaces[{i}].path)",
                        path.display()
                    ),
                    source,
                })?;
                join.push((OwnedFd::from(fd), flag));
                continue;
            }
            match flag {
                libc::CLONE_NEWCGROUP => unshare_cgroupns = true,
                libc::CLONE_NEWUSER => {
                    userns = true;
                    clone_flags |= flag;
                }
                libc::CLONE_NEWNET => {
                    new_netns = true;
                    clone_flags |= flag;
                }
                _ => clone_flags |= flag,
            }
        }
        if !mount_ns {
            return Err(SandboxError::spec(
                "linux.namespaces",
                "a mount namespace is required",
            ));
        }

        let map = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>, own: u32| match maps {
            Some(m) if !m.is_empty() => m
                .iter()
                .map(|e| format!("{} {} {}\n", e.container_id(), e.host_id(), e.size()))
                .collect::<String>(),
            _ => format!("0 {own} 1\n"),
        };
        let (uid_map, gid_map) = if userns {
            (
                Some(map(linux.uid_mappings(), euid)),
                Some(map(linux.gid_mappings(), egid)),
            )
        } else {
            (None, None)
        };

        let rootfs = fs::canonicalize(rootfs).map_err(|_| SandboxError::MissingRootfs {
            path: rootfs.to_path_buf(),
        })?;
        if !rootfs.is_dir() {
            return Err(SandboxError::MissingRootfs { path: rootfs });
        }

        // Mounts.
        let mut mounts = Vec::new();
        let spec_mounts = spec.mounts().clone().unwrap_or_default();
        let has_mount = |d: &str| spec_mounts.iter().any(|m| m.destination() == Path::new(d));
        let mut all: Vec<oci_spec::runtime::Mount> = Vec::new();
        if !has_mount("/dev") {
            all.push(
                oci_spec::runtime::MountBuilder::default()
                    .destination("/dev")
                    .typ("tmpfs")
                    .source("tmpfs")
                    .options(vec![
                        "nosuid".into(),
                        "strictatime".into(),
                        "mode=755".into(),
                        "size=65536k".into(),
                    ])
                    .build()
                    .expect("valid mount"),
            );
        }
        all.extend(spec_mounts.iter().cloned());
        if !has_mount("/dev/pts") {
            let mut opts: Vec<String> = vec![
                "nosuid".into(),
                "noexec".into(),
                "newinstance".into(),
                "ptmxmode=0666".into(),
                "mode=0620".into(),
            ];
            if !userns {
                opts.push("gid=5".into());
            }
            all.push(
                oci_spec::runtime::MountBuilder::default()
                    .destination("/dev/pts")
                    .typ("devpts")
                    .source("devpts")
                    .options(opts)
                    .build()
                    .expect("valid mount"),
            );
        }
        if !has_mount("/dev/shm") {
            all.push(
                oci_spec::runtime::MountBuilder::default()
                    .destination("/dev/shm")
                    .typ("tmpfs")
                    .source("shm")
                    .options(vec![
                        "nosuid".into(),
                        "noexec".into(),
                        "nodev".into(),
                        "mode=1777".into(),
                        "size=65536k".into(),
                    ])
                    .build()
                    .expect("valid mount"),
            );
        }
        let offset = if has_mount("/dev") { 0 } else { 1 };
        for (i, m) in all.iter().enumerate() {
            let field = format!("mounts[{}]", i as isize - offset as isize);
            let dest = m.destination();
            if !dest.is_absolute() {
                return Err(SandboxError::spec(
                    format!("{field}.destination"),
                    format!("{} is not absolute", dest.display()),
                ));
            }
            let target = secure_join(&rootfs, dest);
            let mut opts = m.options().clone().unwrap_or_default();
            let idmap = if opts.iter().any(|o| o == "ridmap") {
                Some(true)
            } else if opts.iter().any(|o| o == "idmap") {
                Some(false)
            } else {
                None
            };
            opts.retain(|o| o != "idmap" && o != "ridmap");
            let (mut flags, propagation, data, bind_opt, _) = mount_flags(&opts);
            let typ = m.typ().clone().unwrap_or_default();
            let bind = bind_opt || typ == "bind";
            if bind {
                flags |= libc::MS_BIND;
            }
            if idmap.is_some() && (!bind || !userns) {
                return Err(SandboxError::spec(
                    format!("{field}.options"),
                    "idmap needs a bind mount and a new user namespace",
                ));
            }
            let mut source = m.source().clone();
            if bind {
                let src = source.clone().ok_or_else(|| {
                    SandboxError::spec(format!("{field}.source"), "a bind mount needs a source")
                })?;
                if !src.exists() {
                    return Err(SandboxError::spec(
                        format!("{field}.source"),
                        format!("{} does not exist", src.display()),
                    ));
                }
                source = Some(fs::canonicalize(&src).unwrap_or(src));
            }
            let is_file = bind
                && source
                    .as_ref()
                    .and_then(|s| fs::metadata(s).ok())
                    .is_some_and(|md| !md.is_dir());
            // Directories to create, from the rootfs down.
            let mut mkdirs = Vec::new();
            let mut cur = target.clone();
            let dir_end = if is_file {
                cur.pop();
                cur.clone()
            } else {
                cur.clone()
            };
            let mut chain = Vec::new();
            let mut c = dir_end;
            while c.starts_with(&rootfs) && c != rootfs {
                chain.push(c.clone());
                if !c.pop() {
                    break;
                }
            }
            for d in chain.into_iter().rev() {
                mkdirs.push(cstr(&d, &field)?);
            }
            let remount = if bind {
                let extra = flags & !(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT);
                if extra != 0 {
                    let mut locked = 0;
                    if userns {
                        if let Some(src) = &source {
                            if let Ok(st) = nix::sys::statvfs::statvfs(src.as_path()) {
                                use nix::sys::statvfs::FsFlags;
                                let f = st.flags();
                                if f.contains(FsFlags::ST_NOSUID) {
                                    locked |= libc::MS_NOSUID;
                                }
                                if f.contains(FsFlags::ST_NODEV) {
                                    locked |= libc::MS_NODEV;
                                }
                                if f.contains(FsFlags::ST_NOEXEC) {
                                    locked |= libc::MS_NOEXEC;
                                }
                            }
                        }
                    }
                    Some(libc::MS_BIND | libc::MS_REMOUNT | extra | locked)
                } else {
                    None
                }
            } else {
                None
            };
            let fstype = if bind || typ.is_empty() {
                None
            } else if typ == "cgroup" {
                Some(cstr("cgroup2", &field)?)
            } else {
                Some(cstr(&typ, &field)?)
            };
            let mount_flags = if bind {
                flags & (libc::MS_BIND | libc::MS_REC)
            } else {
                flags
            };
            mounts.push(MountOp {
                source: match &source {
                    Some(s) => Some(cstr(s, &format!("{field}.source"))?),
                    None => Some(cstr(&typ, &field)?),
                },
                target: cstr(&target, &format!("{field}.destination"))?,
                fstype,
                flags: mount_flags,
                data: if data.is_empty() {
                    None
                } else {
                    Some(cstr(data.join(","), &format!("{field}.options"))?)
                },
                remount,
                propagation,
                mkdirs,
                file: is_file,
                sysfs_fallback: typ == "sysfs",
                optional: typ == "cgroup",
                idmap,
            });
            let _ = cur;
        }
        // Default devices, then the spec's devices, as bind mounts of the
        // host's nodes (works with and without a user namespace).
        let dev_dir = secure_join(&rootfs, Path::new("/dev"));
        let mut device_paths: Vec<PathBuf> = DEFAULT_DEVICES
            .iter()
            .map(|d| PathBuf::from(format!("/dev/{d}")))
            .collect();
        for (i, d) in linux.devices().iter().flatten().enumerate() {
            let p = d.path().clone();
            if !p.starts_with("/dev") {
                return Err(SandboxError::spec(
                    format!("linux.devices[{i}].path"),
                    format!("{} is not under /dev", p.display()),
                ));
            }
            if !device_paths.contains(&p) {
                device_paths.push(p);
            }
        }
        for p in device_paths {
            if !p.exists() {
                tracing::debug!(device = %p.display(), "host has no such device, skipped");
                continue;
            }
            let target = secure_join(&rootfs, &p);
            let mut mkdirs = Vec::new();
            if let Some(parent) = target.parent() {
                if parent != dev_dir {
                    mkdirs.push(cstr(parent, "linux.devices")?);
                }
            }
            mounts.push(MountOp {
                source: Some(cstr(&p, "linux.devices")?),
                target: cstr(&target, "linux.devices")?,
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
                remount: None,
                propagation: 0,
                mkdirs,
                file: true,
                sysfs_fallback: false,
                optional: false,
                idmap: None,
            });
        }
        let mut symlinks = Vec::new();
        for (target, link) in [
            ("/proc/self/fd", "fd"),
            ("/proc/self/fd/0", "stdin"),
            ("/proc/self/fd/1", "stdout"),
            ("/proc/self/fd/2", "stderr"),
            ("pts/ptmx", "ptmx"),
        ] {
            if link == "ptmx"
                && linux
                    .devices()
                    .iter()
                    .flatten()
                    .any(|d| d.path() == Path::new("/dev/ptmx"))
            {
                continue;
            }
            symlinks.push(Symlink {
                target: cstr(target, "dev")?,
                link: cstr(dev_dir.join(link), "dev")?,
            });
        }
        if fs::metadata("/proc/kcore").is_ok() {
            symlinks.push(Symlink {
                target: cstr("/proc/kcore", "dev")?,
                link: cstr(dev_dir.join("core"), "dev")?,
            });
        }

        let masked = linux
            .masked_paths()
            .iter()
            .flatten()
            .map(|p| cstr(p, "linux.maskedPaths"))
            .collect::<Result<Vec<_>, _>>()?;
        let readonly = linux
            .readonly_paths()
            .iter()
            .flatten()
            .map(|p| cstr(p, "linux.readonlyPaths"))
            .collect::<Result<Vec<_>, _>>()?;

        let root_propagation =
            propagation_flag(linux.rootfs_propagation().as_deref().unwrap_or(""))?;

        let hostname = match spec.hostname() {
            Some(h) if !h.is_empty() => {
                if clone_flags & libc::CLONE_NEWUTS == 0 {
                    return Err(SandboxError::spec(
                        "hostname",
                        "setting the hostname needs a uts namespace",
                    ));
                }
                Some(cstr(h, "hostname")?)
            }
            _ => None,
        };
        let domainname = match spec.domainname() {
            Some(h) if !h.is_empty() => Some(cstr(h, "domainname")?),
            _ => None,
        };

        let mut sysctls = Vec::new();
        for (k, v) in linux.sysctl().iter().flatten() {
            let path = format!("/proc/sys/{}", k.replace('.', "/"));
            sysctls.push((cstr(path, "linux.sysctl")?, cstr(v, "linux.sysctl")?));
        }

        let mut rlimits = Vec::new();
        for r in process.rlimits().iter().flatten() {
            rlimits.push((
                rlimit_resource(r.typ()),
                libc::rlimit {
                    rlim_cur: r.soft(),
                    rlim_max: r.hard(),
                },
            ));
        }

        let user = process.user();
        let caps = match process.capabilities() {
            Some(c) => Some(CapSets {
                bounding: cap_mask(c.bounding(), "process.capabilities.bounding")?,
                effective: cap_mask(c.effective(), "process.capabilities.effective")?,
                permitted: cap_mask(c.permitted(), "process.capabilities.permitted")?,
                inheritable: cap_mask(c.inheritable(), "process.capabilities.inheritable")?,
                ambient: cap_mask(c.ambient(), "process.capabilities.ambient")?,
            }),
            None => Some(CapSets::default()),
        };

        let seccomp = match linux.seccomp() {
            Some(s) => Some(seccomp::compile(s)?),
            None => None,
        };

        let env: Vec<String> = process.env().clone().unwrap_or_default();
        let argv = args
            .iter()
            .map(|a| cstr(a, "process.args"))
            .collect::<Result<Vec<_>, _>>()?;
        let envp = env
            .iter()
            .map(|a| cstr(a, "process.env"))
            .collect::<Result<Vec<_>, _>>()?;
        let prog = &args[0];
        let exec_candidates = if prog.contains('/') {
            vec![cstr(prog, "process.args")?]
        } else {
            let path = env
                .iter()
                .rev()
                .find_map(|e| e.strip_prefix("PATH="))
                .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
            path.split(':')
                .filter(|d| !d.is_empty())
                .map(|d| {
                    cstr(
                        format!("{}/{}", d.trim_end_matches('/'), prog),
                        "process.args",
                    )
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let idmap_rootfs = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(crate::ROOTFS_IDMAP))
            .is_some_and(|v| v == "true");
        if idmap_rootfs && !userns {
            return Err(SandboxError::spec(
                format!("annotations.{}", crate::ROOTFS_IDMAP),
                "idmapping the root filesystem needs a new user namespace",
            ));
        }
        let cwd = process.cwd();
        if !cwd.is_absolute() {
            return Err(SandboxError::spec(
                "process.cwd",
                format!("{} is not absolute", cwd.display()),
            ));
        }

        Ok(Plan {
            clone_flags,
            join,
            userns,
            uid_map,
            gid_map,
            unshare_cgroupns,
            mount_ns,
            root_propagation,
            rootfs_dot: cstr(".", "root.path")?,
            overlay: None,
            rootfs: cstr(&rootfs, "root.path")?,
            rootfs_src: cstr(&rootfs, "root.path")?,
            mounts,
            symlinks,
            masked,
            readonly,
            root_readonly: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
            hostname,
            domainname,
            loopback: new_netns,
            sysctls,
            rlimits,
            umask: user.umask(),
            uid: user.uid(),
            gid: user.gid(),
            groups: user.additional_gids().clone().unwrap_or_default(),
            caps,
            last_cap: last_cap(),
            nnp: process.no_new_privileges().unwrap_or(false),
            seccomp,
            cwd: cstr(cwd, "process.cwd")?,
            argv,
            envp,
            exec_candidates,
            oom_score_adj: process.oom_score_adj(),
            cgroups_path: linux.cgroups_path().clone(),
            resources: linux.resources().clone(),
            die_with_parent: false,
            idmap_rootfs,
            egress: None,
        })
    }

    /// How many idmapped mounts the parent hands the child: the rootfs
    /// first, then the mounts with `idmap` in their order.
    fn idmap_count(&self) -> usize {
        usize::from(self.idmap_rootfs) + self.mounts.iter().filter(|m| m.idmap.is_some()).count()
    }

    /// The plan of a process started in the namespaces of a running
    /// container (`exec`): the caller has joined them already, so nothing
    /// is created or mounted; only the process part of `spec` applies.
    pub(crate) fn for_exec(spec: &Spec, rootfs: &Path) -> Result<Plan, SandboxError> {
        let mut spec = spec.clone();
        spec.set_mounts(None);
        spec.set_hostname(None);
        spec.set_domainname(None);
        if let Some(linux) = spec.linux_mut() {
            linux.set_devices(None);
            linux.set_masked_paths(None);
            linux.set_readonly_paths(None);
            linux.set_sysctl(None);
            linux.set_resources(None);
            linux.set_uid_mappings(None);
            linux.set_gid_mappings(None);
            linux.set_namespaces(Some(vec![
                oci_spec::runtime::LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Mount)
                    .build()
                    .expect("valid namespace"),
            ]));
        }
        let mut plan = Plan::new(&spec, rootfs)?;
        plan.clone_flags = 0;
        plan.mount_ns = false;
        plan.mounts.clear();
        plan.symlinks.clear();
        plan.root_readonly = false;
        plan.loopback = false;
        plan.userns = false;
        plan.uid_map = None;
        plan.gid_map = None;
        plan.unshare_cgroupns = false;
        plan.idmap_rootfs = false;
        Ok(plan)
    }

    /// Builds the container's root at `at` (an empty directory) instead
    /// of on the rootfs itself: needed when the rootfs is the host's `/`
    /// (`do`), which cannot be pivoted into in place.
    pub(crate) fn relocate(&mut self, at: &Path) -> Result<(), SandboxError> {
        let from = self.rootfs.as_bytes().to_vec();
        let to = at.as_os_str().as_bytes().to_vec();
        let move_path = |c: &mut CString| -> Result<(), SandboxError> {
            let b = c.as_bytes();
            if b.starts_with(&from) {
                let rest = &b[from.len()..];
                let mut v = to.clone();
                if !rest.is_empty() && !rest.starts_with(b"/") && !v.ends_with(b"/") {
                    v.push(b'/');
                }
                v.extend_from_slice(rest);
                *c = CString::new(v)
                    .map_err(|_| SandboxError::spec("root.path", "contains a NUL byte"))?;
            }
            Ok(())
        };
        for m in &mut self.mounts {
            move_path(&mut m.target)?;
            for d in &mut m.mkdirs {
                move_path(d)?;
            }
        }
        for l in &mut self.symlinks {
            move_path(&mut l.link)?;
        }
        self.rootfs = cstr(at, "root.path")?;
        Ok(())
    }

    /// Puts a tmpfs-backed overlay over the root filesystem (`--overlay`):
    /// the container can write anywhere the spec allows, the rootfs on
    /// disk is never changed. `scratch` is an empty host directory.
    pub(crate) fn set_overlay(&mut self, scratch: &Path) -> Result<(), SandboxError> {
        if self.idmap_rootfs {
            return Err(SandboxError::spec(
                format!("annotations.{}", crate::ROOTFS_IDMAP),
                "an idmapped root filesystem cannot be overlaid (--overlay)",
            ));
        }
        let root = self.rootfs_src.to_string_lossy().into_owned();
        let up = scratch.join("upper");
        let wk = scratch.join("work");
        let opts = format!(
            "lowerdir={root},upperdir={},workdir={}",
            up.display(),
            wk.display()
        );
        self.overlay = Some((
            cstr(scratch, "--overlay")?,
            cstr(&up, "--overlay")?,
            cstr(&wk, "--overlay")?,
            cstr(opts, "--overlay")?,
        ));
        Ok(())
    }

    /// Adds rlimits standing in for cgroup limits on a host without cgroups.
    pub(crate) fn add_fallback_rlimits(&mut self) {
        let Some(r) = &self.resources else { return };
        if let Some(limit) = r.memory().as_ref().and_then(|m| m.limit()) {
            if limit > 0
                && !self
                    .rlimits
                    .iter()
                    .any(|(k, _)| *k == libc::RLIMIT_AS as libc::c_int)
            {
                self.rlimits.push((
                    libc::RLIMIT_AS as libc::c_int,
                    libc::rlimit {
                        rlim_cur: limit as u64,
                        rlim_max: limit as u64,
                    },
                ));
            }
        }
        if let Some(p) = r.pids() {
            if p.limit() > 0
                && !self
                    .rlimits
                    .iter()
                    .any(|(k, _)| *k == libc::RLIMIT_NPROC as libc::c_int)
            {
                self.rlimits.push((
                    libc::RLIMIT_NPROC as libc::c_int,
                    libc::rlimit {
                        rlim_cur: p.limit() as u64,
                        rlim_max: p.limit() as u64,
                    },
                ));
            }
        }
    }
}

/// The file descriptors the child wires up.
#[derive(Debug, Default)]
pub(crate) struct ChildIo {
    /// Dup'ed onto 0, 1, 2 when set.
    pub(crate) stdio: [Option<RawFd>; 3],
    /// A connected socket to send the pty master to (`--console-socket`).
    pub(crate) console: Option<RawFd>,
    /// Read end of the start gate (`create` then `start`).
    pub(crate) gate: Option<RawFd>,
    /// Keep fds 3..3+n open (`--preserve-fds`).
    pub(crate) preserve_fds: u32,
}

/// A started (or created) container init.
#[derive(Debug)]
pub(crate) struct Child {
    pub(crate) pid: libc::pid_t,
    pub(crate) pidfd: OwnedFd,
    /// The network stack of an egress container: stopped when dropped.
    pub(crate) net: Option<crate::net::Attached>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| SandboxError::sys("creating a pipe", e))
}

// glibc's set*id and setgroups wrappers apply the change to every thread of
// the process (nptl's setxid broadcast). In a child cloned from a
// multi-threaded process (the tokio runtime of `ftl build`, the worker pool
// of `ftl serve`) the other threads are copies that never run, and the
// wrapper waits for them forever. The child has one thread: the raw system
// calls are exactly what it needs.
unsafe fn raw_setgroups(n: usize, groups: *const libc::gid_t) -> libc::c_int {
    // SAFETY: the caller passes a valid array of n gids.
    unsafe { libc::syscall(libc::SYS_setgroups, n, groups) as libc::c_int }
}

unsafe fn raw_setresgid(r: libc::gid_t, e: libc::gid_t, s: libc::gid_t) -> libc::c_int {
    // SAFETY: plain integers.
    unsafe { libc::syscall(libc::SYS_setresgid, r, e, s) as libc::c_int }
}

unsafe fn raw_setresuid(r: libc::uid_t, e: libc::uid_t, s: libc::uid_t) -> libc::c_int {
    // SAFETY: plain integers.
    unsafe { libc::syscall(libc::SYS_setresuid, r, e, s) as libc::c_int }
}

/// Clones the child, finishes the parent's share of the setup (id maps,
/// cgroup, oom score) and waits until the child has executed the program or
/// reported a setup error. With a gate, returns once setup is done and the
/// child waits on the gate.
pub(crate) fn launch(
    plan: &Plan,
    io: &ChildIo,
    cgroup: Option<&Cgroup>,
) -> Result<Child, SandboxError> {
    let (go_r, go_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    // Idmapped mounts are made by the parent (it needs CAP_SYS_ADMIN in the
    // initial user namespace) once the child's id maps are written, and
    // passed to the child over a socket; the child's buffers are allocated
    // here, before clone.
    let idmaps = plan.idmap_count();
    let idmap_sock = if idmaps > 0 {
        let (a, b) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| SandboxError::sys("creating a socket pair", e))?;
        Some((a, b))
    } else {
        None
    };
    let mut idmap_fds: Vec<libc::c_int> = vec![-1; idmaps];
    // SAFETY: CMSG_SPACE is a pure computation.
    let cmsg_space =
        unsafe { libc::CMSG_SPACE((idmaps * std::mem::size_of::<libc::c_int>()) as u32) as usize };
    let mut idmap_cmsg: Vec<u64> = vec![0; cmsg_space.div_ceil(8).max(1)];
    let argv: Vec<*const libc::c_char> = plan
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = plan
        .envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let ctx = ChildCtx {
        plan,
        argv: &argv,
        envp: &envp,
        io,
        go: go_r.as_raw_fd(),
        err: err_w.as_raw_fd(),
        ready: ready_w.as_raw_fd(),
        idmap_sock: idmap_sock.as_ref().map_or(-1, |(_, b)| b.as_raw_fd()),
        idmap_fds: idmap_fds.as_mut_ptr(),
        idmap_len: idmaps,
        idmap_cmsg: idmap_cmsg.as_mut_ptr() as *mut libc::c_void,
        idmap_cmsg_len: cmsg_space,
    };
    // SAFETY: clone without CLONE_VM behaves like fork; the child only runs
    // child_main, which makes system calls on data prepared above and never
    // returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (plan.clone_flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(SandboxError::sys(
            format!("clone with flags {:#x}", plan.clone_flags),
            io::Error::last_os_error(),
        ));
    }
    if pid == 0 {
        // SAFETY: see above.
        unsafe { child_main(&ctx) }
    }
    let pid = pid as libc::pid_t;
    drop(go_r);
    drop(err_w);
    drop(ready_w);
    // SAFETY: pidfd_open on our own child.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let pidfd = if pidfd >= 0 {
        // SAFETY: a fresh fd we own.
        unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) }
    } else {
        let e = io::Error::last_os_error();
        kill_and_reap(pid);
        return Err(SandboxError::sys("pidfd_open", e));
    };
    let mut child = Child {
        pid,
        pidfd,
        net: None,
    };
    let fail = |e: SandboxError| {
        kill_and_reap(pid);
        e
    };
    if plan.userns {
        if let Some(m) = &plan.uid_map {
            fs::write(format!("/proc/{pid}/uid_map"), m).map_err(|source| {
                fail(SandboxError::Sys {
                    what: "writing uid_map (linux.uidMappings)".into(),
                    source,
                })
            })?;
        }
        if nix::unistd::geteuid().as_raw() != 0 {
            let _ = fs::write(format!("/proc/{pid}/setgroups"), "deny");
        }
        if let Some(m) = &plan.gid_map {
            fs::write(format!("/proc/{pid}/gid_map"), m).map_err(|source| {
                fail(SandboxError::Sys {
                    what: "writing gid_map (linux.gidMappings)".into(),
                    source,
                })
            })?;
        }
    }
    if let Some((ours, theirs)) = idmap_sock {
        drop(theirs);
        let trees = idmapped_trees(plan, pid).map_err(fail)?;
        send_fds(&ours, &trees).map_err(fail)?;
    }
    if let Some(cg) = cgroup {
        cg.add(pid).map_err(fail)?;
    }
    if let Some(adj) = plan.oom_score_adj {
        fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string()).map_err(|source| {
            fail(SandboxError::Sys {
                what: "writing oom_score_adj (process.oomScoreAdj)".into(),
                source,
            })
        })?;
    }
    if let Some(egress) = &plan.egress {
        child.net = Some(egress.attach(pid).map_err(fail)?);
    }
    // Release the child.
    nix::unistd::write(&go_w, &[1])
        .map_err(|e| fail(SandboxError::sys("releasing the child", e)))?;
    drop(go_w);
    if io.gate.is_some() {
        // Wait until setup is done (a byte on ready) or failed (err).
        let mut b = [0u8; 1];
        let n = nix::unistd::read(&ready_r, &mut b).unwrap_or(0);
        if n == 1 {
            return Ok(child);
        }
    }
    drop(ready_r);
    let mut buf = [0u8; std::mem::size_of::<ChildError>()];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(&err_r, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    if got == 0 {
        return Ok(child);
    }
    // SAFETY: ChildError is plain data of exactly this size.
    let ce: ChildError = unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const ChildError) };
    kill_and_reap(pid);
    let source = io::Error::from_raw_os_error(ce.errno);
    if ce.step == STEP_EXEC {
        return Err(SandboxError::Exec {
            program: plan
                .argv
                .first()
                .map(|a| a.to_string_lossy().into_owned())
                .unwrap_or_default(),
            source,
        });
    }
    let mut step = STEPS
        .get(ce.step as usize)
        .copied()
        .unwrap_or("unknown step")
        .to_string();
    if ce.step == 6 || ce.step == 7 || ce.step == 8 || (ce.step == 34 && ce.index > 0) {
        if let Some(m) = plan.mounts.get(ce.index as usize) {
            step = format!("{step}: {}", m.target.to_string_lossy());
        }
    }
    if ce.step == 12 {
        if let Some(m) = plan.masked.get(ce.index as usize) {
            step = format!("{step}: {}", m.to_string_lossy());
        }
    }
    if ce.step == 13 {
        if let Some(m) = plan.readonly.get(ce.index as usize) {
            step = format!("{step}: {}", m.to_string_lossy());
        }
    }
    Err(SandboxError::Setup { step, source })
}

pub(crate) fn kill_and_reap(pid: libc::pid_t) {
    // SAFETY: plain syscalls on our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
    }
}

struct ChildCtx<'a> {
    plan: &'a Plan,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    io: &'a ChildIo,
    go: RawFd,
    err: RawFd,
    ready: RawFd,
    /// The child's end of the socket the idmapped mounts arrive on (-1: none).
    idmap_sock: RawFd,
    /// Where the child puts them: `idmap_len` slots, allocated before clone.
    idmap_fds: *mut libc::c_int,
    idmap_len: usize,
    /// The control message buffer for receiving them.
    idmap_cmsg: *mut libc::c_void,
    idmap_cmsg_len: usize,
}

/// The idmapped mounts of `plan` for the child `pid`, in the order the
/// child uses them (see [`Plan::idmap_count`]).
fn idmapped_trees(plan: &Plan, pid: libc::pid_t) -> Result<Vec<OwnedFd>, SandboxError> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/user"))
        .map_err(|e| SandboxError::sys("opening the container's user namespace", e))?;
    let mut trees = Vec::new();
    if plan.idmap_rootfs {
        let tree = match idmapped_tree(&plan.rootfs_src, true, ns.as_raw_fd()) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %crate::idmap::chain(&e), "root filesystem bound without idmap");
                crate::idmap::plain_tree(&plan.rootfs_src, true)?
            }
        };
        trees.push(tree);
    }
    for m in &plan.mounts {
        if let (Some(rec), Some(src)) = (m.idmap, &m.source) {
            // A tree holding a filesystem that cannot be idmapped (procfs
            // under a recursive bind of `/`) is bound as it is: its files
            // read as owned by nobody, as without idmap.
            let tree = match idmapped_tree(src, rec, ns.as_raw_fd()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(error = %crate::idmap::chain(&e), "bound without idmap");
                    crate::idmap::plain_tree(src, rec)?
                }
            };
            trees.push(tree);
        }
    }
    Ok(trees)
}

/// Sends `fds` in one message over `sock`.
fn send_fds(sock: &OwnedFd, fds: &[OwnedFd]) -> Result<(), SandboxError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let iov = [std::io::IoSlice::new(b"m")];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| SandboxError::sys("passing idmapped mounts to the container", e))?;
    Ok(())
}

/// Receives the idmapped mounts into `ctx.idmap_fds`, without allocating.
unsafe fn recv_idmaps(ctx: &ChildCtx<'_>) -> bool {
    // SAFETY: buffers were allocated by the parent before clone for exactly
    // this message.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr() as *mut libc::c_void,
            iov_len: 1,
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctx.idmap_cmsg;
        msg.msg_controllen = ctx.idmap_cmsg_len as _;
        if libc::recvmsg(ctx.idmap_sock, &mut msg, libc::MSG_CMSG_CLOEXEC) != 1 {
            return false;
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return false;
        }
        let data = libc::CMSG_DATA(cmsg) as *const libc::c_int;
        let n = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
            / std::mem::size_of::<libc::c_int>();
        if n != ctx.idmap_len {
            return false;
        }
        for i in 0..n {
            *ctx.idmap_fds.add(i) = std::ptr::read_unaligned(data.add(i));
        }
        libc::close(ctx.idmap_sock);
        true
    }
}

/// Moves the detached mount `fd` onto `target`.
unsafe fn move_mount_onto(fd: libc::c_int, target: *const libc::c_char) -> bool {
    // SAFETY: move_mount of a detached mount fd onto a NUL-terminated path.
    unsafe {
        let r = libc::syscall(
            libc::SYS_move_mount,
            fd,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target,
            MOVE_MOUNT_F_EMPTY_PATH,
        );
        libc::close(fd);
        r == 0
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Reports a failed step to the parent and exits. Never returns.
unsafe fn die(ctx: &ChildCtx<'_>, step: u32, index: u32, errno: i32) -> ! {
    let ce = ChildError { step, index, errno };
    // SAFETY: writing a plain struct to our pipe, then _exit.
    unsafe {
        libc::write(
            ctx.err,
            &ce as *const ChildError as *const libc::c_void,
            std::mem::size_of::<ChildError>(),
        );
        libc::_exit(127)
    }
}

fn opt_ptr(c: &Option<CString>) -> *const libc::c_char {
    c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

unsafe fn sys_mount(
    src: *const libc::c_char,
    dst: *const libc::c_char,
    fstype: *const libc::c_char,
    flags: libc::c_ulong,
    data: *const libc::c_char,
) -> bool {
    // SAFETY: pointers are NUL-terminated strings or null.
    unsafe { libc::mount(src, dst, fstype, flags, data as *const libc::c_void) == 0 }
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// The container's init, between clone and exec.
///
/// # Safety
/// Runs in a freshly cloned child of a possibly multi-threaded parent: it
/// must only make system calls on pre-computed data.
unsafe fn child_main(ctx: &ChildCtx<'_>) -> ! {
    let plan = ctx.plan;
    let io = ctx.io;
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: everything below is raw system calls on data owned by `plan`,
    // which stays alive in this address space until exec.
    unsafe {
        // Rust ignores SIGPIPE and the caller may block signals: both would
        // survive exec. The container starts with default dispositions and
        // nothing blocked, as under runc.
        #[repr(C)]
        struct KSigaction {
            handler: usize,
            flags: u64,
            restorer: usize,
            mask: u64,
        }
        let dfl = KSigaction {
            handler: libc::SIG_DFL,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                // Raw: glibc refuses its internal signals (32, 33).
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &dfl as *const KSigaction,
                    std::ptr::null_mut::<KSigaction>(),
                    8usize,
                );
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if plan.die_with_parent {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        }
        let mut b = [0u8; 1];
        if libc::read(ctx.go, b.as_mut_ptr() as *mut libc::c_void, 1) != 1 {
            die(ctx, 0, 0, errno());
        }
        if ctx.idmap_len > 0 && !recv_idmaps(ctx) {
            die(ctx, 33, 0, errno());
        }
        let mut next_idmap = 0usize;
        for (i, fd) in io.stdio.iter().enumerate() {
            if let Some(fd) = fd {
                if *fd != i as RawFd && libc::dup2(*fd, i as RawFd) < 0 {
                    die(ctx, 1, i as u32, errno());
                }
            }
        }
        if plan.userns {
            // Become root in the new user namespace for the setup.
            if raw_setresgid(0, 0, 0) != 0 || raw_setresuid(0, 0, 0) != 0 {
                die(ctx, 22, 0, errno());
            }
            // A change of credentials clears the parent-death signal.
            if plan.die_with_parent {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            }
        }
        for (i, (fd, flag)) in plan.join.iter().enumerate() {
            if libc::setns(fd.as_raw_fd(), *flag) != 0 {
                die(ctx, 2, i as u32, errno());
            }
        }
        if plan.unshare_cgroupns && libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
            die(ctx, 3, 0, errno());
        }
        if plan.mount_ns {
            if !sys_mount(null, c"/".as_ptr(), null, plan.root_propagation, null) {
                die(ctx, 4, 0, errno());
            }
            if let Some((scratch, upper, work, opts)) = &plan.overlay {
                // A tmpfs upper layer: writes never reach the rootfs, and
                // go away with the mount namespace.
                if !sys_mount(
                    c"tmpfs".as_ptr(),
                    scratch.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    c"mode=0700".as_ptr(),
                ) || libc::mkdir(upper.as_ptr(), 0o755) != 0
                    || libc::mkdir(work.as_ptr(), 0o755) != 0
                    || !sys_mount(
                        c"overlay".as_ptr(),
                        plan.rootfs.as_ptr(),
                        c"overlay".as_ptr(),
                        0,
                        opts.as_ptr(),
                    )
                {
                    die(ctx, 5, 1, errno());
                }
            } else if plan.idmap_rootfs {
                let fd = *ctx.idmap_fds;
                next_idmap = 1;
                if !move_mount_onto(fd, plan.rootfs.as_ptr()) {
                    die(ctx, 34, 0, errno());
                }
            } else if !sys_mount(
                plan.rootfs_src.as_ptr(),
                plan.rootfs.as_ptr(),
                null,
                libc::MS_BIND | libc::MS_REC,
                null,
            ) {
                die(ctx, 5, 0, errno());
            }
            for (i, m) in plan.mounts.iter().enumerate() {
                let i = i as u32;
                for d in &m.mkdirs {
                    if libc::mkdir(d.as_ptr(), 0o755) != 0 && errno() != libc::EEXIST {
                        die(ctx, 6, i, errno());
                    }
                }
                if m.file {
                    // O_EXCL: an existing file is left alone, even one the
                    // container's root (in a user namespace) may not write.
                    let fd = libc::open(
                        m.target.as_ptr(),
                        libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_RDONLY
                            | libc::O_CLOEXEC
                            | libc::O_NOFOLLOW,
                        0o644,
                    );
                    if fd < 0 && errno() != libc::EEXIST && errno() != libc::EISDIR {
                        die(ctx, 6, i, errno());
                    }
                    if fd >= 0 {
                        libc::close(fd);
                    }
                }
                let ok = if m.idmap.is_some() {
                    let fd = *ctx.idmap_fds.add(next_idmap);
                    next_idmap += 1;
                    if !move_mount_onto(fd, m.target.as_ptr()) {
                        die(ctx, 34, i, errno());
                    }
                    true
                } else {
                    sys_mount(
                        opt_ptr(&m.source),
                        m.target.as_ptr(),
                        opt_ptr(&m.fstype),
                        m.flags,
                        opt_ptr(&m.data),
                    )
                };
                if !ok {
                    let e = errno();
                    if m.optional {
                        continue;
                    }
                    if m.sysfs_fallback
                        && sys_mount(
                            c"/sys".as_ptr(),
                            m.target.as_ptr(),
                            null,
                            libc::MS_BIND | libc::MS_REC,
                            null,
                        )
                    {
                        sys_mount(
                            null,
                            m.target.as_ptr(),
                            null,
                            libc::MS_BIND
                                | libc::MS_REMOUNT
                                | libc::MS_RDONLY
                                | libc::MS_NOSUID
                                | libc::MS_NODEV
                                | libc::MS_NOEXEC,
                            null,
                        );
                        continue;
                    }
                    die(ctx, 7, i, e);
                }
                if let Some(flags) = m.remount {
                    if !sys_mount(null, m.target.as_ptr(), null, flags, null) {
                        die(ctx, 8, i, errno());
                    }
                }
                if m.propagation != 0
                    && !sys_mount(null, m.target.as_ptr(), null, m.propagation, null)
                {
                    die(ctx, 8, i, errno());
                }
            }
            for (i, s) in plan.symlinks.iter().enumerate() {
                if libc::symlink(s.target.as_ptr(), s.link.as_ptr()) != 0 && errno() != libc::EEXIST
                {
                    die(ctx, 10, i as u32, errno());
                }
            }
            // pivot_root into the rootfs, then drop the old root.
            if libc::chdir(plan.rootfs.as_ptr()) != 0 {
                die(ctx, 11, 0, errno());
            }
            let dot = plan.rootfs_dot.as_ptr();
            if libc::syscall(libc::SYS_pivot_root, dot, dot) != 0 {
                die(ctx, 11, 0, errno());
            }
            if !sys_mount(null, dot, null, libc::MS_SLAVE | libc::MS_REC, null) {
                die(ctx, 11, 1, errno());
            }
            if libc::umount2(dot, libc::MNT_DETACH) != 0 {
                die(ctx, 11, 2, errno());
            }
            if libc::chdir(c"/".as_ptr()) != 0 {
                die(ctx, 11, 3, errno());
            }
            for (i, p) in plan.masked.iter().enumerate() {
                let mut st: libc::stat = std::mem::zeroed();
                if libc::stat(p.as_ptr(), &mut st) != 0 {
                    continue;
                }
                let ok = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    sys_mount(
                        c"tmpfs".as_ptr(),
                        p.as_ptr(),
                        c"tmpfs".as_ptr(),
                        libc::MS_RDONLY,
                        null,
                    )
                } else {
                    sys_mount(c"/dev/null".as_ptr(), p.as_ptr(), null, libc::MS_BIND, null)
                };
                if !ok {
                    die(ctx, 12, i as u32, errno());
                }
            }
            for (i, p) in plan.readonly.iter().enumerate() {
                if !sys_mount(
                    p.as_ptr(),
                    p.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REC,
                    null,
                ) {
                    if errno() == libc::ENOENT {
                        continue;
                    }
                    die(ctx, 13, i as u32, errno());
                }
                let locked = locked_flags(p.as_ptr());
                if !sys_mount(
                    null,
                    p.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC | locked,
                    null,
                ) {
                    die(ctx, 13, i as u32, errno());
                }
            }
            if plan.root_readonly {
                let locked = locked_flags(c"/".as_ptr());
                if !sys_mount(
                    null,
                    c"/".as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | locked,
                    null,
                ) {
                    die(ctx, 14, 0, errno());
                }
            }
        }
        if let Some(h) = &plan.hostname {
            if libc::sethostname(h.as_ptr(), h.as_bytes().len()) != 0 {
                die(ctx, 15, 0, errno());
            }
        }
        if let Some(h) = &plan.domainname {
            if libc::setdomainname(h.as_ptr(), h.as_bytes().len()) != 0 {
                die(ctx, 31, 0, errno());
            }
        }
        if plan.loopback {
            let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if s < 0 {
                die(ctx, 16, 0, errno());
            }
            let mut req = IfReq {
                name: [0; 16],
                flags: 0,
                _pad: [0; 22],
            };
            req.name[0] = b'l';
            req.name[1] = b'o';
            if libc::ioctl(s, libc::SIOCGIFFLAGS as _, &mut req) != 0 {
                die(ctx, 16, 1, errno());
            }
            req.flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(s, libc::SIOCSIFFLAGS as _, &mut req) != 0 {
                die(ctx, 16, 2, errno());
            }
            libc::close(s);
        }
        for (i, (path, value)) in plan.sysctls.iter().enumerate() {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0
                || libc::write(
                    fd,
                    value.as_ptr() as *const libc::c_void,
                    value.as_bytes().len(),
                ) < 0
            {
                die(ctx, 17, i as u32, errno());
            }
            libc::close(fd);
        }
        for (i, (res, lim)) in plan.rlimits.iter().enumerate() {
            if libc::prlimit(0, *res as _, lim, std::ptr::null_mut()) != 0 {
                die(ctx, 18, i as u32, errno());
            }
        }
        if let Some(sock) = io.console {
            // A pty from the container's devpts; the master goes to the
            // console socket, the slave becomes stdio.
            let master = libc::open(
                c"/dev/ptmx".as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            if master < 0 {
                die(ctx, 30, 0, errno());
            }
            let mut unlock: libc::c_int = 0;
            if libc::ioctl(master, libc::TIOCSPTLCK, &mut unlock) != 0 {
                die(ctx, 30, 1, errno());
            }
            let slave = libc::ioctl(master, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY);
            if slave < 0 {
                die(ctx, 30, 2, errno());
            }
            if !send_fd(sock, master) {
                die(ctx, 30, 3, errno());
            }
            libc::close(master);
            if libc::setsid() < 0 {
                die(ctx, 32, 0, errno());
            }
            if libc::ioctl(slave, libc::TIOCSCTTY, 0) != 0 {
                die(ctx, 30, 4, errno());
            }
            for fd in 0..3 {
                if libc::dup2(slave, fd) < 0 {
                    die(ctx, 30, 5, errno());
                }
            }
            if slave > 2 {
                libc::close(slave);
            }
            libc::close(sock);
        } else if libc::setsid() < 0 {
            die(ctx, 32, 0, errno());
        }
        if !plan.nnp {
            // Without no_new_privs, seccomp needs CAP_SYS_ADMIN: load it
            // while the init still has it.
            if let Some(p) = &plan.seccomp {
                if seccomp::load_raw(p) != 0 {
                    die(ctx, 26, 0, errno());
                }
            }
        }
        if let Some(caps) = &plan.caps {
            for cap in 0..=plan.last_cap {
                if caps.bounding & (1u64 << cap) == 0
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                    && errno() != libc::EINVAL
                {
                    die(ctx, 19, cap, errno());
                }
            }
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
        }
        if raw_setgroups(plan.groups.len(), plan.groups.as_ptr()) != 0
            && !(plan.userns && plan.groups.is_empty())
        {
            die(ctx, 20, 0, errno());
        }
        if raw_setresgid(plan.gid, plan.gid, plan.gid) != 0 {
            die(ctx, 21, 0, errno());
        }
        if raw_setresuid(plan.uid, plan.uid, plan.uid) != 0 {
            die(ctx, 22, 0, errno());
        }
        // Cleared by the change of credentials: a step whose ftl is killed
        // must not run on (holding its mounts) with nobody to stop it.
        if plan.die_with_parent {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        }
        if let Some(caps) = &plan.caps {
            #[repr(C)]
            struct Header {
                version: u32,
                pid: i32,
            }
            #[repr(C)]
            #[derive(Clone, Copy)]
            struct Data {
                effective: u32,
                permitted: u32,
                inheritable: u32,
            }
            let hdr = Header {
                version: 0x2008_0522,
                pid: 0,
            };
            let data = [
                Data {
                    effective: caps.effective as u32,
                    permitted: caps.permitted as u32,
                    inheritable: caps.inheritable as u32,
                },
                Data {
                    effective: (caps.effective >> 32) as u32,
                    permitted: (caps.permitted >> 32) as u32,
                    inheritable: (caps.inheritable >> 32) as u32,
                },
            ];
            if libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) != 0 {
                die(ctx, 23, 0, errno());
            }
            for cap in 0..=plan.last_cap {
                if caps.ambient & (1u64 << cap) != 0
                    && libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                        cap as libc::c_ulong,
                        0,
                        0,
                    ) != 0
                {
                    // As runc: an ambient capability the other sets do not
                    // allow is skipped.
                    continue;
                }
            }
        }
        if plan.nnp && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            die(ctx, 25, 0, errno());
        }
        if let Some(mask) = plan.umask {
            libc::umask(mask);
        } else {
            libc::umask(0o022);
        }
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            die(ctx, 27, 0, errno());
        }
        // Fail now, not after `start`, when the program does not exist.
        if !plan
            .exec_candidates
            .iter()
            .any(|c| libc::access(c.as_ptr(), libc::X_OK) == 0)
        {
            let e = errno();
            die(
                ctx,
                STEP_EXEC,
                0,
                if e == libc::EACCES { e } else { libc::ENOENT },
            );
        }
        if let Some(gate) = io.gate {
            // Setup is done: tell the parent, then wait for `start`.
            libc::write(ctx.ready, b"r".as_ptr() as *const libc::c_void, 1);
            let mut b = [0u8; 1];
            loop {
                let n = libc::read(gate, b.as_mut_ptr() as *mut libc::c_void, 1);
                if n == 1 {
                    break;
                }
                if n < 0 && errno() == libc::EINTR {
                    continue;
                }
                die(ctx, 29, 0, errno());
            }
        }
        if plan.nnp {
            if let Some(p) = &plan.seccomp {
                if seccomp::load_raw(p) != 0 {
                    die(ctx, 26, 0, errno());
                }
            }
        }
        // Everything but stdio (and preserved fds) is closed at exec.
        libc::syscall(
            libc::SYS_close_range,
            3 + io.preserve_fds,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        // The pipes to the parent must survive until exec: they are CLOEXEC.
        let mut last = libc::ENOENT;
        for cand in &plan.exec_candidates {
            // ETXTBSY: a process forked (by another thread of the caller)
            // while the caller was writing this file still holds it open
            // for writing until its own exec, milliseconds away: retry for
            // up to a second.
            let mut busy = 0;
            loop {
                libc::execve(cand.as_ptr(), ctx.argv.as_ptr(), ctx.envp.as_ptr());
                if errno() != libc::ETXTBSY || busy == 100 {
                    break;
                }
                busy += 1;
                let pause = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 10_000_000,
                };
                libc::nanosleep(&pause, std::ptr::null_mut());
            }
            match errno() {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => last = libc::EACCES,
                e => {
                    last = e;
                    break;
                }
            }
        }
        die(ctx, STEP_EXEC, 0, last)
    }
}

/// The kernel's `struct statfs` (64-bit layout).
#[repr(C)]
struct KStatfs {
    counts: [i64; 7],
    fsid: [i32; 2],
    namelen: i64,
    frsize: i64,
    flags: i64,
    spare: [i64; 4],
}

/// The nosuid/nodev/noexec flags of the mount holding `path`: a remount in
/// a user namespace must keep them.
unsafe fn locked_flags(path: *const libc::c_char) -> libc::c_ulong {
    // SAFETY: statfs into a correctly sized buffer.
    unsafe {
        let mut sf: KStatfs = std::mem::zeroed();
        if libc::syscall(libc::SYS_statfs, path, &mut sf as *mut KStatfs) != 0 {
            return 0;
        }
        (sf.flags as libc::c_ulong) & (libc::ST_NOSUID | libc::ST_NODEV | libc::ST_NOEXEC)
    }
}

/// Sends `fd` over the unix socket `sock` (SCM_RIGHTS), without allocating.
unsafe fn send_fd(sock: RawFd, fd: RawFd) -> bool {
    // SAFETY: a stack buffer large enough for one fd's control message.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr() as *mut libc::c_void,
            iov_len: 1,
        };
        let mut cbuf = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
        libc::sendmsg(sock, &msg, 0) >= 0
    }
}

/// The host path of a container path, for messages.
#[allow(dead_code)]
pub(crate) fn display_c(c: &CStr) -> String {
    c.to_string_lossy().into_owned()
}
