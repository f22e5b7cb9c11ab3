//! Reading bundles and building the spec of an ftl build step.

use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroup,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use crate::error::SandboxError;

/// Reads `bundle/config.json`, checks the fields a runtime cannot do without
/// and returns the spec with the absolute path of its root filesystem.
pub fn load_bundle(bundle: &Path) -> Result<(Spec, PathBuf), SandboxError> {
    let path = bundle.join("config.json");
    let text = fs::read_to_string(&path).map_err(|source| SandboxError::MissingConfig {
        bundle: bundle.to_path_buf(),
        source,
    })?;
    let spec = parse_config(&text, &path)?;
    let rootfs = rootfs_of(&spec, bundle)?;
    Ok((spec, rootfs))
}

/// Parses a `config.json` text, with errors that name the bad field.
pub fn parse_config(text: &str, path: &Path) -> Result<Spec, SandboxError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| SandboxError::InvalidConfig {
            path: path.to_path_buf(),
            message: format!("not valid JSON: {e}"),
        })?;
    validate_value(&value)?;
    serde_json::from_value(value).map_err(|e| SandboxError::InvalidConfig {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

const NAMESPACE_TYPES: &[&str] = &[
    "pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time",
];

fn validate_value(v: &serde_json::Value) -> Result<(), SandboxError> {
    if !v.is_object() {
        return Err(SandboxError::spec(
            "(root)",
            "config.json must hold a JSON object",
        ));
    }
    if v.get("ociVersion").and_then(|x| x.as_str()).is_none() {
        return Err(SandboxError::spec("ociVersion", "missing"));
    }
    match v.pointer("/root/path") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => {}
        _ => return Err(SandboxError::spec("root.path", "missing")),
    }
    let Some(process) = v.get("process") else {
        return Err(SandboxError::spec("process", "missing"));
    };
    match process.get("args").and_then(|a| a.as_array()) {
        Some(a) if !a.is_empty() && a[0].as_str().is_some_and(|s| !s.is_empty()) => {}
        _ => return Err(SandboxError::spec("process.args", "must name a program")),
    }
    if process.get("cwd").and_then(|c| c.as_str()).is_none() {
        return Err(SandboxError::spec("process.cwd", "missing"));
    }
    if let Some(nss) = v.pointer("/linux/namespaces").and_then(|n| n.as_array()) {
        for (i, ns) in nss.iter().enumerate() {
            let t = ns.get("type").and_then(|t| t.as_str()).unwrap_or("");
            if !NAMESPACE_TYPES.contains(&t) {
                return Err(SandboxError::spec(
                    format!("linux.namespaces[{i}].type"),
                    format!("unknown namespace type {t:?}"),
                ));
            }
        }
    }
    if let Some(mounts) = v.get("mounts").and_then(|m| m.as_array()) {
        for (i, m) in mounts.iter().enumerate() {
            if m.get("destination").and_then(|d| d.as_str()).is_none() {
                return Err(SandboxError::spec(
                    format!("mounts[{i}].destination"),
                    "missing",
                ));
            }
        }
    }
    Ok(())
}

/// The absolute root filesystem of `spec`, relative paths taken from `bundle`.
pub fn rootfs_of(spec: &Spec, bundle: &Path) -> Result<PathBuf, SandboxError> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| SandboxError::spec("root.path", "missing"))?;
    let p = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    if !p.is_dir() {
        return Err(SandboxError::MissingRootfs { path: p });
    }
    Ok(p)
}

/// A host path mounted into a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub host: PathBuf,
    /// Absolute path inside the container.
    pub target: String,
    pub writable: bool,
}

/// The network a step gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// A new network namespace with only loopback, up (as `runsc --network=none`).
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// A new network namespace with egress through a user-mode network
    /// stack (ftl's runtime: [`crate::NETWORK`]) that cannot reach the
    /// host's loopback, link-local or private ranges. DNS goes to the
    /// stack's forwarder. An external runtime gets loopback only.
    Egress(crate::Stack),
}

/// Resource limits of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Memory (and memory+swap) limit in bytes.
    pub memory_bytes: Option<i64>,
    /// Maximum number of tasks (processes and threads).
    pub pids: Option<i64>,
    /// CPU quota in microseconds per `cpu_period_us`.
    pub cpu_quota_us: Option<i64>,
    pub cpu_period_us: Option<u64>,
    pub cpu_shares: Option<u64>,
    /// RLIMIT_NOFILE (soft = hard).
    pub open_files: u64,
    /// Size of the step's `/tmp` (a tmpfs) in bytes; writing past it fails
    /// with ENOSPC. Its pages count toward the memory limit.
    pub tmp_bytes: u64,
}

/// The default size of a step's `/tmp`: 1 GiB.
pub const DEFAULT_TMP_BYTES: u64 = 1 << 30;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: Some(4 << 30),
            pids: Some(4096),
            cpu_quota_us: None,
            cpu_period_us: None,
            cpu_shares: None,
            open_files: 65536,
            tmp_bytes: DEFAULT_TMP_BYTES,
        }
    }
}

/// What a build step needs; turned into a spec by [`spec_for_step`].
#[derive(Debug, Clone)]
pub struct StepSpec {
    pub rootfs: PathBuf,
    pub args: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub cwd: String,
    pub mounts: Vec<BindMount>,
    pub network: Network,
    pub limits: Limits,
    pub hostname: String,
    pub uid: u32,
    pub gid: u32,
    /// When the caller is root: the host ids the step's ids map to (its
    /// root is `ids.uid`, never host root), with the root filesystem and
    /// bind mounts idmapped so that host ownership reads unchanged inside.
    /// `None` keeps the caller's ids (no user namespace for root): only for
    /// commands the caller runs on its own behalf (`runsc do`). A caller
    /// that is not root always gets a user namespace mapping its own ids.
    pub ids: Option<IdRange>,
    /// With [`Network::Egress`]: TCP endpoints the step may reach although
    /// their range is blocked (a proxy, a package mirror on a private
    /// network or the host's loopback; see [`crate::net::EGRESS_ALLOW`]).
    pub egress_allow: Vec<std::net::SocketAddr>,
}

/// A range of host user and group ids that a step's ids `0..size` map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// The host uid of the step's root.
    pub uid: u32,
    /// The host gid of the step's root group.
    pub gid: u32,
    /// How many ids are mapped (65536 covers `nobody`).
    pub size: u32,
}

impl IdRange {
    /// The default range, `1879048192` (`0x70000000`) for 65536 ids: in the
    /// range systemd leaves unused (above the one `systemd-nspawn` picks
    /// from, below 2^31), so that no user or container of the host owns it.
    pub const DEFAULT: IdRange = IdRange {
        uid: 0x7000_0000,
        gid: 0x7000_0000,
        size: 65536,
    };

    /// Parses `HOST[:SIZE]` (uid and gid alike), as `--userns-range` takes it.
    pub fn parse(text: &str) -> Result<IdRange, SandboxError> {
        let bad = |why: &str| SandboxError::InvalidIdRange {
            text: text.to_string(),
            why: why.to_string(),
        };
        let (host, size) = text.split_once(':').unwrap_or((text, "65536"));
        let host: u32 = host
            .trim()
            .parse()
            .map_err(|_| bad("HOST is not a number"))?;
        let size: u32 = size
            .trim()
            .parse()
            .map_err(|_| bad("SIZE is not a number"))?;
        IdRange {
            uid: host,
            gid: host,
            size,
        }
        .checked(text)
    }

    /// The first subordinate range of `user` in `/etc/subuid` and
    /// `/etc/subgid` (as `newuidmap` reads them), of at least 65536 ids
    /// when there is one.
    pub fn for_user(user: &str) -> Result<IdRange, SandboxError> {
        Self::for_user_in(user, Path::new("/etc/subuid"), Path::new("/etc/subgid"))
    }

    fn for_user_in(user: &str, subuid: &Path, subgid: &Path) -> Result<IdRange, SandboxError> {
        let uid_of = nix::unistd::User::from_name(user)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw().to_string());
        let pick = |file: &Path| -> Result<(u32, u32), SandboxError> {
            let text = fs::read_to_string(file).map_err(|source| SandboxError::Sys {
                what: format!(
                    "reading {} for the subordinate ids of {user}",
                    file.display()
                ),
                source,
            })?;
            let ranges: Vec<(u32, u32)> = text
                .lines()
                .filter_map(|l| {
                    let mut f = l.trim().split(':');
                    let (name, start, count) = (f.next()?, f.next()?, f.next()?);
                    (name == user || Some(name) == uid_of.as_deref())
                        .then(|| Some((start.parse().ok()?, count.parse().ok()?)))
                        .flatten()
                })
                .collect();
            ranges
                .iter()
                .find(|(_, n)| *n >= 65536)
                .or(ranges.first())
                .copied()
                .ok_or_else(|| SandboxError::InvalidIdRange {
                    text: user.to_string(),
                    why: format!("{} has no range for {user}", file.display()),
                })
        };
        let (uid, usize) = pick(subuid)?;
        let (gid, gsize) = pick(subgid)?;
        IdRange {
            uid,
            gid,
            size: usize.min(gsize),
        }
        .checked(user)
    }

    fn checked(self, text: &str) -> Result<IdRange, SandboxError> {
        let bad = |why: &str| SandboxError::InvalidIdRange {
            text: text.to_string(),
            why: why.to_string(),
        };
        if self.uid == 0 || self.gid == 0 {
            return Err(bad("the range must not start at host root (0)"));
        }
        if self.size == 0 {
            return Err(bad("the range is empty"));
        }
        if self.uid.checked_add(self.size).is_none() || self.gid.checked_add(self.size).is_none() {
            return Err(bad("the range passes the largest id"));
        }
        Ok(self)
    }

    /// `0 HOST SIZE`, as in `/proc/PID/uid_map` (for reports).
    pub fn uid_map(&self) -> String {
        format!("0 {} {}", self.uid, self.size)
    }
}

impl StepSpec {
    pub fn new(
        rootfs: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        StepSpec {
            rootfs: rootfs.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cwd: "/".into(),
            mounts: Vec::new(),
            network: Network::None,
            limits: Limits::default(),
            hostname: "ftl".into(),
            uid: 0,
            gid: 0,
            ids: Some(IdRange::DEFAULT),
            egress_allow: Vec::new(),
        }
    }
}

/// Docker's default capability set.
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The capabilities of ftl's own build and verify steps: Docker's default
/// set without `CAP_NET_RAW` (raw sockets: sniffing, spoofing) and
/// `CAP_MKNOD` (device nodes).
pub const STEP_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The character devices a step may use, as `(major, minor)` (`None`: any
/// minor): null, zero, full, random, urandom, tty, ptmx and the ptys of its
/// private devpts. The devices cgroup of a step allows these and nothing
/// else (no `mknod`, no block device).
pub const STEP_DEVICES: &[(i64, Option<i64>)] = &[
    (1, Some(3)),
    (1, Some(5)),
    (1, Some(7)),
    (1, Some(8)),
    (1, Some(9)),
    (5, Some(0)),
    (5, Some(2)),
    (136, None),
];

/// The device cgroup rules of a step: deny everything, then allow
/// [`STEP_DEVICES`] for reading and writing.
pub fn step_device_rules() -> Vec<LinuxDeviceCgroup> {
    let mut rules = vec![LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .expect("valid device rule")];
    for (major, minor) in STEP_DEVICES {
        let mut rule = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(*major)
            .access("rw");
        if let Some(minor) = minor {
            rule = rule.minor(*minor);
        }
        rules.push(rule.build().expect("valid device rule"));
    }
    rules
}

/// An annotation (`"true"`) asking ftl's runtime to idmap the root
/// filesystem with the container's user namespace, as the `idmap` mount
/// option does for a mount: files owned by host root read as owned by the
/// container's root. runtime-spec has no field for it; other runtimes
/// ignore it.
pub const ROOTFS_IDMAP: &str = "dev.ftl.rootfs-idmap";

/// runc's default masked paths.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's default read-only paths.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .expect("valid mount")
}

/// The standard mounts of a container: proc, /dev, devpts, shm, mqueue, sysfs.
pub fn default_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
    ]
}

/// The namespaces of a default container; a user namespace is added when
/// the caller is not root.
pub fn default_namespaces(network: Network) -> Vec<oci_spec::runtime::LinuxNamespace> {
    let mut types = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ];
    if network != Network::Host {
        types.push(LinuxNamespaceType::Network);
    }
    if !nix::unistd::geteuid().is_root() {
        types.push(LinuxNamespaceType::User);
    }
    types
        .into_iter()
        .map(|t| {
            LinuxNamespaceBuilder::default()
                .typ(t)
                .build()
                .expect("valid namespace")
        })
        .collect()
}

/// The spec of one ftl build step: read-only root, tmpfs `/tmp`, proc, a
/// minimal `/dev`, ftl's default seccomp profile, Docker's default
/// capabilities but CAP_NET_RAW (no raw or packet sockets),
/// `noNewPrivileges`, and the given limits.
pub fn spec_for_step(step: &StepSpec) -> Spec {
    let caps: oci_spec::runtime::Capabilities = STEP_CAPABILITIES.iter().copied().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(oci_spec::runtime::Capabilities::new())
        .ambient(oci_spec::runtime::Capabilities::new())
        .build()
        .expect("valid capabilities");
    // Raising a hard limit needs CAP_SYS_RESOURCE, which the caller may
    // lack: never ask for more than the caller has.
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, h)| h)
        .unwrap_or(u64::MAX);
    let nofile = step.limits.open_files.min(hard);
    let rlimits = vec![PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(nofile)
        .hard(nofile)
        .build()
        .expect("valid rlimit")];
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(step.uid)
                .gid(step.gid)
                .build()
                .expect("valid user"),
        )
        .args(step.args.clone())
        .env(step.env.clone())
        .cwd(step.cwd.clone())
        .capabilities(capabilities)
        .rlimits(rlimits)
        .no_new_privileges(true)
        .build()
        .expect("valid process");

    let root = nix::unistd::geteuid().is_root();
    // As root, a user namespace whose root is `ids.uid`, with the root
    // filesystem and every bind mount idmapped to it.
    let mapped = step.ids.filter(|_| root);
    let mut mounts = default_mounts();
    // ftl's runtime binds the standard nodes onto /dev: nothing made on
    // the tmpfs itself is a usable device (runc, which mknods them, cannot
    // use nodev there; `example_spec` keeps its options).
    for m in mounts
        .iter_mut()
        .filter(|m| m.destination() == Path::new("/dev"))
    {
        if let Some(o) = m.options_mut() {
            o.insert(1, "nodev".to_string());
        }
    }
    let tmp_size = format!("size={}", step.limits.tmp_bytes);
    mounts.push(mount(
        "/tmp",
        "tmpfs",
        "tmpfs",
        &["nosuid", "nodev", "mode=1777", &tmp_size],
    ));
    if step.network == Network::Host {
        for f in ["/etc/resolv.conf", "/etc/hosts"] {
            if Path::new(f).exists() {
                let mut opts = vec!["rbind", "ro", "nosuid", "nodev", "noexec"];
                if mapped.is_some() {
                    opts.push("ridmap");
                }
                mounts.push(mount(f, "bind", f, &opts));
            }
        }
    }
    for m in &step.mounts {
        let mut opts = vec!["rbind", "nosuid", "nodev"];
        opts.push(if m.writable { "rw" } else { "ro" });
        if mapped.is_some() {
            opts.push("ridmap");
        }
        mounts.push(mount(&m.target, "bind", &m.host.to_string_lossy(), &opts));
    }

    let mut resources = LinuxResourcesBuilder::default().devices(step_device_rules());
    if let Some(mem) = step.limits.memory_bytes {
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(mem)
                .swap(mem)
                .build()
                .expect("valid memory"),
        );
    }
    if let Some(p) = step.limits.pids {
        resources = resources.pids(
            LinuxPidsBuilder::default()
                .limit(p)
                .build()
                .expect("valid pids"),
        );
    }
    if step.limits.cpu_quota_us.is_some() || step.limits.cpu_shares.is_some() {
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(q) = step.limits.cpu_quota_us {
            cpu = cpu
                .quota(q)
                .period(step.limits.cpu_period_us.unwrap_or(100_000));
        }
        if let Some(s) = step.limits.cpu_shares {
            cpu = cpu.shares(s);
        }
        resources = resources.cpu(cpu.build().expect("valid cpu"));
    }
    let mut namespaces = default_namespaces(step.network);
    if mapped.is_some() {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .build()
                .expect("valid namespace"),
        );
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .resources(resources.build().expect("valid resources"))
        .seccomp(crate::seccomp::default_profile());
    let map = |host: u32, size: u32| {
        oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(host)
            .size(size)
            .build()
            .expect("valid id mapping")
    };
    let mut annotations = std::collections::HashMap::new();
    if let Some(ids) = mapped {
        linux = linux
            .uid_mappings(vec![map(ids.uid, ids.size)])
            .gid_mappings(vec![map(ids.gid, ids.size)]);
        annotations.insert(ROOTFS_IDMAP.to_string(), "true".to_string());
    } else if !root {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        linux = linux
            .uid_mappings(vec![map(uid, 1)])
            .gid_mappings(vec![map(gid, 1)]);
    }
    if let Network::Egress(stack) = step.network {
        annotations.insert(crate::NETWORK.to_string(), "egress".to_string());
        annotations.insert(crate::NETWORK_STACK.to_string(), stack.name().to_string());
        if !step.egress_allow.is_empty() {
            let list: Vec<String> = step.egress_allow.iter().map(|a| a.to_string()).collect();
            annotations.insert(crate::net::EGRESS_ALLOW.to_string(), list.join(","));
        }
    }
    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(step.rootfs.clone())
                .readonly(true)
                .build()
                .expect("valid root"),
        )
        .hostname(step.hostname.clone())
        .process(process)
        .mounts(mounts)
        .linux(linux.build().expect("valid linux"))
        .build()
        .expect("valid spec");
    if !annotations.is_empty() {
        spec.set_annotations(Some(annotations));
    }
    spec
}

/// The uid mapping of a spec's user namespace (`0 HOST SIZE`, one line per
/// entry, joined by `, `), or `None` without one: what a step's report
/// shows.
pub fn uid_map_of(spec: &Spec) -> Option<String> {
    let linux = spec.linux().as_ref()?;
    linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::User)
        .then(|| {
            linux
                .uid_mappings()
                .iter()
                .flatten()
                .map(|m| format!("{} {} {}", m.container_id(), m.host_id(), m.size()))
                .collect::<Vec<_>>()
                .join(", ")
        })
}

/// A spec like `runc spec` writes: `sh` in `rootfs`, runc's defaults.
pub fn example_spec(rootless: bool) -> Spec {
    let mut step = StepSpec::new("rootfs", ["sh"]);
    step.env.push("TERM=xterm".into());
    step.hostname = "runsc".into();
    // What `runc spec` writes: no mapped range for root, Docker's
    // capabilities, no size on /tmp, a /dev runc can mknod in.
    step.ids = None;
    let mut spec = spec_for_step(&step);
    spec.set_annotations(None);
    if let Some(mounts) = spec.mounts_mut() {
        for m in mounts.iter_mut() {
            let dest = m.destination().clone();
            if let Some(o) = m.options_mut() {
                if dest == Path::new("/tmp") {
                    o.retain(|o| !o.starts_with("size="));
                } else if dest == Path::new("/dev") {
                    o.retain(|o| o != "nodev");
                }
            }
        }
    }
    if let Some(p) = spec.process_mut() {
        let caps: oci_spec::runtime::Capabilities = DEFAULT_CAPABILITIES.iter().copied().collect();
        if let Some(mut c) = p.capabilities().clone() {
            c.set_bounding(Some(caps.clone()));
            c.set_effective(Some(caps.clone()));
            c.set_permitted(Some(caps));
            p.set_capabilities(Some(c));
        }
    }
    if let Some(linux) = spec.linux_mut() {
        linux.set_seccomp(None);
        linux.set_resources(None);
        let mut ns = default_namespaces(Network::None);
        if rootless && !ns.iter().any(|n| n.typ() == LinuxNamespaceType::User) {
            ns.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::User)
                    .build()
                    .expect("valid namespace"),
            );
        }
        linux.set_namespaces(Some(ns));
    }
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(true));
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_namespace_names_the_field() {
        let text = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"args":["sh"],"cwd":"/"},"linux":{"namespaces":[{"type":"pid"},{"type":"bogus"}]}}"#;
        let e = parse_config(text, Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("linux.namespaces[1].type"), "{e}");
    }

    #[test]
    fn empty_args_names_the_field() {
        let text =
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"args":[],"cwd":"/"}}"#;
        let e = parse_config(text, Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("process.args"), "{e}");
    }

    #[test]
    fn step_spec_round_trips_through_json() {
        let spec = spec_for_step(&StepSpec::new("/tmp/rootfs", ["echo", "hi"]));
        let text = serde_json::to_string(&spec).unwrap();
        let back = parse_config(&text, Path::new("x")).unwrap();
        assert_eq!(back, spec);
    }
}
