//! Egress for a container's own network namespace through a user-mode
//! network stack, as rootless Podman gives it: `slirp4netns` (the default)
//! or `pasta`, attached to the namespace after clone and before the init is
//! released, with the host's loopback, link-local and private ranges and
//! its own addresses made unreachable by policy rules in the namespace.
//!
//! A spec asks for it with the annotation [`NETWORK`] = `"egress"` on a
//! container that has a network namespace of its own; [`NETWORK_STACK`]
//! picks the stack. The runtime writes a `resolv.conf` naming the stack's
//! DNS forwarder (the host's resolver is usually on a private address, so
//! it cannot be reached directly) and mounts it read-only at
//! `/etc/resolv.conf`. The stack runs as long as the container's handle
//! (`Started`) lives; slirp4netns also exits when the process that started
//! it dies (`--exit-fd`), so nothing is left running.
//!
//! What the namespace cannot reach: 0/8, 10/8, 100.64/10, 127/8 (the
//! namespace's own loopback stays), 169.254/16, 172.16/12, 192.168/16,
//! multicast and 240/4, `::1`, `fc00::/7`, `fe80::/10`, `ff00::/8`,
//! `64:ff9b::/96`, and every address of the host with its subnet. A
//! connect there fails at once with `EACCES` (rules of type `prohibit`,
//! evaluated after the namespace's own `local` table). Only UDP (and, for
//! slirp4netns, TCP) port 53 of the DNS forwarder passes. The step never
//! holds CAP_NET_ADMIN, so it cannot change the rules.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxNamespaceType, MountBuilder, Spec};

use crate::error::SandboxError;

/// Annotation: `"egress"` gives the container's network namespace egress
/// through a user-mode network stack (ftl's runtime only).
pub const NETWORK: &str = "dev.ftl.network";
/// Annotation: which stack, `slirp4netns` (default) or `pasta`.
pub const NETWORK_STACK: &str = "dev.ftl.network-stack";
/// Annotation: TCP endpoints (`ADDR:PORT`, comma-separated; `[V6]:PORT`)
/// an egress namespace may reach although their range is blocked: a proxy
/// or a package mirror on a private network, or on the host's loopback.
/// A loopback endpoint is reached at the same address and port inside the
/// namespace, relayed by the runtime to the host's; nothing else of the
/// host's loopback is.
pub const EGRESS_ALLOW: &str = "dev.ftl.egress-allow";

/// A user-mode network stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stack {
    /// slirp4netns (libslirp): runs with every capability dropped but
    /// CAP_NET_BIND_SERVICE, in its own mount namespace under seccomp, and
    /// exits when its starter does.
    #[default]
    Slirp4netns,
    /// pasta (passt): maps L4 sockets without a TCP/IP stack of its own.
    Pasta,
}

impl Stack {
    pub fn name(self) -> &'static str {
        match self {
            Stack::Slirp4netns => "slirp4netns",
            Stack::Pasta => "pasta",
        }
    }

    pub fn from_name(name: &str) -> Option<Stack> {
        match name {
            "slirp4netns" => Some(Stack::Slirp4netns),
            "pasta" => Some(Stack::Pasta),
            _ => None,
        }
    }

    /// The DNS forwarder as seen from the namespace.
    pub fn dns(self) -> Ipv4Addr {
        match self {
            // libslirp's built-in forwarder.
            Stack::Slirp4netns => Ipv4Addr::new(10, 0, 2, 3),
            // Mapped by `--dns-forward`; an address in a blocked range, so
            // nothing but UDP port 53 to it leaves the namespace.
            Stack::Pasta => Ipv4Addr::new(169, 254, 0, 53),
        }
    }
}

/// The IPv4 ranges an egress namespace cannot reach (besides the host's
/// own addresses and subnets).
pub const BLOCKED_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// The IPv6 ranges an egress namespace cannot reach.
pub const BLOCKED_V6: &[(std::net::Ipv6Addr, u8)] = &[
    (std::net::Ipv6Addr::LOCALHOST, 128),
    (std::net::Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    (std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    (std::net::Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
    (std::net::Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96),
];

/// What the runtime needs to give one container egress.
#[derive(Debug, Clone)]
pub(crate) struct Egress {
    pub(crate) stack: Stack,
    /// The container has a user namespace of its own: the stack joins it.
    userns: bool,
    /// The container's state directory (resolv.conf, the stack's log).
    dir: PathBuf,
    /// [`EGRESS_ALLOW`].
    allow: Vec<SocketAddr>,
}

/// Parses [`EGRESS_ALLOW`]'s value.
pub fn parse_allow(value: &str) -> Result<Vec<SocketAddr>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<SocketAddr>()
                .map_err(|_| format!("{s:?} is not ADDRESS:PORT"))
                .and_then(|a| {
                    if a.port() == 0 || a.ip().is_unspecified() {
                        Err(format!("{s:?}: no address and port to allow"))
                    } else {
                        Ok(a)
                    }
                })
        })
        .collect()
}

fn err(stack: Stack, message: impl Into<String>) -> SandboxError {
    SandboxError::NetworkStack {
        stack: stack.name(),
        message: message.into(),
    }
}

/// Reads the egress annotations of `spec`; when egress is asked for, writes
/// the container's `resolv.conf` and `hosts` into `dir` and mounts them
/// read-only over the rootfs's (in the returned copy of the spec).
pub(crate) fn prepare(
    spec: &Spec,
    rootfs: &Path,
    dir: &Path,
) -> Result<Option<(Spec, Egress)>, SandboxError> {
    let annotations = spec.annotations().clone().unwrap_or_default();
    match annotations.get(NETWORK).map(String::as_str) {
        None | Some("" | "none") => return Ok(None),
        Some("egress") => {}
        Some(other) => {
            return Err(SandboxError::spec(
                format!("annotations[{NETWORK}]"),
                format!("unknown network {other:?}: use \"egress\""),
            ))
        }
    }
    let stack = match annotations.get(NETWORK_STACK) {
        None => Stack::default(),
        Some(name) => Stack::from_name(name).ok_or_else(|| {
            SandboxError::spec(
                format!("annotations[{NETWORK_STACK}]"),
                format!("unknown network stack {name:?}: use slirp4netns or pasta"),
            )
        })?,
    };
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let has = |t: LinuxNamespaceType| {
        namespaces
            .iter()
            .any(|n| n.typ() == t && n.path().is_none())
    };
    if !has(LinuxNamespaceType::Network) {
        return Err(SandboxError::spec(
            format!("annotations[{NETWORK}]"),
            "egress needs a new network namespace (linux.namespaces)",
        ));
    }
    let userns = has(LinuxNamespaceType::User);
    let allow = match annotations.get(EGRESS_ALLOW) {
        None => Vec::new(),
        Some(v) => parse_allow(v)
            .map_err(|e| SandboxError::spec(format!("annotations[{EGRESS_ALLOW}]"), e))?,
    };
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        fs::write(&path, text).map_err(|source| SandboxError::State {
            path: path.clone(),
            source,
        })?;
        Ok::<_, SandboxError>(path)
    };
    let resolv = write(
        "resolv.conf",
        format!("nameserver {}\noptions edns0\n", stack.dns()),
    )?;
    let hostname = spec
        .hostname()
        .clone()
        .unwrap_or_else(|| "localhost".into());
    let hosts = write(
        "hosts",
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
    )?;
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (target, source) in [("/etc/resolv.conf", resolv), ("/etc/hosts", hosts)] {
        ensure_mount_point(rootfs, target);
        mounts.push(
            MountBuilder::default()
                .destination(target)
                .typ("bind")
                .source(source)
                .options(
                    ["rbind", "ro", "nosuid", "nodev", "noexec"]
                        .map(String::from)
                        .to_vec(),
                )
                .build()
                .expect("valid mount"),
        );
    }
    let mut spec = spec.clone();
    spec.set_mounts(Some(mounts));
    Ok(Some((
        spec,
        Egress {
            stack,
            userns,
            dir: dir.to_path_buf(),
            allow,
        },
    )))
}

/// Creates the empty file `rootfs/etc/NAME` a file is mounted on, from the
/// host's side: container root in a user namespace may not write the
/// rootfs's `/etc`. Never follows a link of the rootfs: a `/etc` that is
/// one, or a `NAME` that exists in any form, is left to the runtime.
fn ensure_mount_point(rootfs: &Path, target: &str) {
    use std::os::unix::ffi::OsStrExt;
    let Some(name) = target.strip_prefix("/etc/") else {
        return;
    };
    let etc = rootfs.join("etc");
    let Ok(etc) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(&etc)
    else {
        return;
    };
    let Ok(name) = std::ffi::CString::new(OsStr::new(name).as_bytes()) else {
        return;
    };
    // SAFETY: openat on our directory fd with a valid C string.
    let fd = unsafe {
        libc::openat(
            etc.as_raw_fd(),
            name.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o644,
        )
    };
    if fd >= 0 {
        // SAFETY: a fresh fd we own.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// A running stack; killed (and reaped) when dropped.
#[derive(Debug)]
pub(crate) struct Attached {
    child: Child,
    /// slirp4netns's `--exit-fd`: closing it makes it exit.
    exit: Option<OwnedFd>,
    /// Relays of allowed loopback endpoints.
    relays: Vec<Relay>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        for r in &self.relays {
            r.stop();
        }
        drop(self.exit.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| SandboxError::sys("creating a pipe", e))
}

impl Egress {
    /// Starts the stack on the network namespace of `pid` (joining its user
    /// namespace when it has one), waits until the namespace is configured
    /// and installs the rules that block the host's ranges.
    pub(crate) fn attach(&self, pid: libc::pid_t) -> Result<Attached, SandboxError> {
        let stack = self.stack;
        let log_path = self.dir.join(format!("{}.log", stack.name()));
        let log = fs::File::create(&log_path).map_err(|source| SandboxError::State {
            path: log_path.clone(),
            source,
        })?;
        let ns = |kind: &str| format!("/proc/{pid}/ns/{kind}");
        let mut cmd = Command::new(stack.name());
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let mut inherit: Vec<RawFd> = Vec::new();
        let mut exit = None;
        let mut ready = None;
        let mut held: Vec<OwnedFd> = Vec::new();
        let pid_file = self.dir.join("pasta.pid");
        match stack {
            Stack::Slirp4netns => {
                let (ready_r, ready_w) = pipe()?;
                let (exit_r, exit_w) = pipe()?;
                cmd.args([
                    "--configure",
                    "--mtu=65520",
                    "--disable-host-loopback",
                    "--enable-sandbox",
                    "--enable-seccomp",
                ]);
                cmd.arg(format!("--ready-fd={}", ready_w.as_raw_fd()));
                cmd.arg(format!("--exit-fd={}", exit_r.as_raw_fd()));
                if self.userns {
                    cmd.arg(format!("--userns-path={}", ns("user")));
                }
                cmd.arg(pid.to_string()).arg("tap0");
                inherit.extend([ready_w.as_raw_fd(), exit_r.as_raw_fd()]);
                ready = Some((ready_r, ready_w, exit_r));
                exit = Some(exit_w);
            }
            Stack::Pasta => {
                // As root pasta would switch to nobody, who may not enter
                // the namespaces; in the container's user namespace it is
                // no more than the container's root.
                cmd.args([
                    "--runas=0",
                    "--foreground",
                    "--config-net",
                    "--ipv4-only",
                    "--no-map-gw",
                    "-t",
                    "none",
                    "-u",
                    "none",
                    "-T",
                    "none",
                    "-U",
                    "none",
                ]);
                cmd.arg(format!("--dns-forward={}", stack.dns()));
                cmd.arg("--pid").arg(&pid_file);
                // pasta drops its capabilities before it opens the paths it
                // is given, and may then not open another process's
                // namespaces: it gets them open, as its own descriptors.
                let open = |kind: &str| {
                    fs::File::open(ns(kind))
                        .map(OwnedFd::from)
                        .map_err(|e| SandboxError::sys(format!("opening {}", ns(kind)), e))
                };
                let net = open("net")?;
                cmd.arg(format!("--netns=/proc/self/fd/{}", net.as_raw_fd()));
                inherit.push(net.as_raw_fd());
                held.push(net);
                if self.userns {
                    let user = open("user")?;
                    cmd.arg(format!("--userns=/proc/self/fd/{}", user.as_raw_fd()));
                    inherit.push(user.as_raw_fd());
                    held.push(user);
                } else {
                    cmd.arg("--netns-only");
                }
            }
        }
        // SAFETY: only fcntl between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &inherit {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            err(
                stack,
                format!("cannot start {} (is it installed?): {e}", stack.name()),
            )
        })?;
        drop(held);
        let mut attached = Attached {
            child,
            exit,
            relays: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let log_tail = || {
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            let text = text.trim();
            if text.is_empty() {
                String::new()
            } else {
                format!(": {text}")
            }
        };
        match ready {
            Some((ready_r, ready_w, exit_r)) => {
                drop(ready_w);
                drop(exit_r);
                let mut fds = [nix::poll::PollFd::new(
                    std::os::fd::AsFd::as_fd(&ready_r),
                    nix::poll::PollFlags::POLLIN,
                )];
                let ready_in_time = matches!(
                    nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10_000u16)),
                    Ok(1)
                );
                let mut f = fs::File::from(ready_r);
                let mut b = [0u8; 1];
                if !ready_in_time || !matches!(f.read(&mut b), Ok(1)) {
                    let _ = attached.child.wait();
                    return Err(err(
                        stack,
                        format!("exited before it was ready{}", log_tail()),
                    ));
                }
            }
            None => loop {
                if fs::metadata(&pid_file).is_ok_and(|m| m.len() > 0) {
                    break;
                }
                if let Ok(Some(st)) = attached.child.try_wait() {
                    return Err(err(stack, format!("exited with {st}{}", log_tail())));
                }
                if Instant::now() >= deadline {
                    return Err(err(stack, "not ready within 10 s"));
                }
                std::thread::sleep(Duration::from_millis(1));
            },
        }
        block_host_ranges(pid, stack, &self.allow).map_err(|e| {
            err(
                stack,
                format!("blocking the host's addresses in the namespace: {e}"),
            )
        })?;
        for &addr in self.allow.iter().filter(|a| a.ip().is_loopback()) {
            let relay = Relay::start(pid, addr)
                .map_err(|e| err(stack, format!("relaying {addr} into the namespace: {e}")))?;
            attached.relays.push(relay);
        }
        tracing::debug!(pid, stack = stack.name(), "egress attached");
        Ok(attached)
    }
}

/// Runs `f` on a thread that has joined the network namespace of `pid`.
fn in_netns<T: Send>(pid: libc::pid_t, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on this thread only (CLONE_NEWNET is per thread).
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}

/// Connects to `addr` from inside the network namespace of `pid` (a
/// container's loopback, say); the stream works from any thread.
pub fn connect_in_netns(pid: i32, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    in_netns(pid, || TcpStream::connect_timeout(&addr, timeout))
}

/// The host's own addresses with their prefix lengths.
fn host_addresses() -> Vec<(IpAddr, u8)> {
    let mut out = Vec::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return out;
    };
    for a in addrs {
        let (Some(addr), Some(mask)) = (a.address, a.netmask) else {
            continue;
        };
        if let (Some(ip), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            out.push((IpAddr::V4(ip.ip()), u32::from(m.ip()).count_ones() as u8));
        } else if let (Some(ip), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            out.push((IpAddr::V6(ip.ip()), u128::from(m.ip()).count_ones() as u8));
        }
    }
    out
}

fn network_of(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

/// One FIB rule: `to dst/len [ipproto P dport N] prohibit | lookup main`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    dst: IpAddr,
    len: u8,
    /// `Some((proto, port))`: only that protocol's port, looked up in main
    /// (the DNS forwarder, an allowed endpoint); `None`: prohibit.
    pass: Option<(u8, u16)>,
    priority: u32,
}

/// The rules of an egress namespace: the DNS forwarder's port 53 and the
/// allowed endpoints that are not loopback (those are relayed) first, then
/// every blocked range, the host's addresses and their subnets.
fn rules(stack: Stack, allow: &[SocketAddr]) -> Vec<Rule> {
    let dns = IpAddr::V4(stack.dns());
    let mut protos = vec![libc::IPPROTO_UDP as u8];
    if stack == Stack::Slirp4netns {
        protos.push(libc::IPPROTO_TCP as u8);
    }
    let mut out: Vec<Rule> = protos
        .into_iter()
        .map(|p| Rule {
            dst: dns,
            len: 32,
            pass: Some((p, 53)),
            priority: 100,
        })
        .collect();
    out.extend(
        allow
            .iter()
            .filter(|a| !a.ip().is_loopback())
            .map(|a| Rule {
                dst: a.ip(),
                len: if a.is_ipv4() { 32 } else { 128 },
                pass: Some((libc::IPPROTO_TCP as u8, a.port())),
                priority: 100,
            }),
    );
    let mut blocked: Vec<(IpAddr, u8)> = BLOCKED_V4
        .iter()
        .map(|&(a, l)| (IpAddr::V4(a), l))
        .chain(BLOCKED_V6.iter().map(|&(a, l)| (IpAddr::V6(a), l)))
        .collect();
    blocked.push((dns, 32));
    for (ip, len) in host_addresses() {
        let full = if ip.is_ipv4() { 32 } else { 128 };
        blocked.push((ip, full));
        if len > 0 && len < full {
            blocked.push((network_of(ip, len), len));
        }
    }
    blocked.sort_by_key(|&(a, l)| (a, l));
    blocked.dedup();
    out.extend(blocked.into_iter().map(|(dst, len)| Rule {
        dst,
        len,
        pass: None,
        priority: 200,
    }));
    out
}

const FR_ACT_TO_TBL: u8 = 1;
const FR_ACT_PROHIBIT: u8 = 8;
const FRA_DST: u16 = 1;
const FRA_PRIORITY: u16 = 6;
const FRA_IP_PROTO: u16 = 22;
const FRA_DPORT_RANGE: u16 = 24;
const RT_TABLE_MAIN: u8 = 254;

fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// An `RTM_NEWRULE` request for `rule`.
fn rule_message(rule: &Rule, seq: u32) -> Vec<u8> {
    let (family, addr): (u8, Vec<u8>) = match rule.dst {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let mut m = Vec::with_capacity(96);
    m.extend_from_slice(&[0u8; 16]); // nlmsghdr, filled below
    let (table, action) = match rule.pass {
        Some(_) => (RT_TABLE_MAIN, FR_ACT_TO_TBL),
        None => (0, FR_ACT_PROHIBIT),
    };
    // struct fib_rule_hdr
    m.extend_from_slice(&[family, rule.len, 0, 0, table, 0, 0, action]);
    m.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut m, FRA_DST, &addr);
    attr(&mut m, FRA_PRIORITY, &rule.priority.to_ne_bytes());
    if let Some((proto, port)) = rule.pass {
        attr(&mut m, FRA_IP_PROTO, &[proto]);
        let mut range = port.to_ne_bytes().to_vec();
        range.extend_from_slice(&port.to_ne_bytes());
        attr(&mut m, FRA_DPORT_RANGE, &range);
    }
    let len = m.len() as u32;
    let flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m[4..6].copy_from_slice(&libc::RTM_NEWRULE.to_ne_bytes());
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

/// Installs [`rules`] in the network namespace of `pid`.
fn block_host_ranges(pid: libc::pid_t, stack: Stack, allow: &[SocketAddr]) -> io::Result<()> {
    let rules = rules(stack, allow);
    in_netns(pid, move || {
        // SAFETY: a fresh socket we own.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is ours.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        for (i, rule) in rules.iter().enumerate() {
            let msg = rule_message(rule, i as u32 + 1);
            // SAFETY: sending our buffer on our socket (the kernel is the
            // default destination of a netlink socket).
            let n = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = [0u8; 1024];
            // SAFETY: receiving into our buffer.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            // nlmsghdr (16 bytes), then struct nlmsgerr's error code.
            let n = n as usize;
            let kind = (n >= 20).then(|| u16::from_ne_bytes([buf[4], buf[5]]));
            if kind != Some(libc::NLMSG_ERROR as u16) {
                return Err(io::Error::other("unexpected netlink answer"));
            }
            let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            if code != 0 {
                let e = io::Error::from_raw_os_error(-code);
                // No IPv6 in this kernel: nothing to block there.
                if rule.dst.is_ipv6() && e.raw_os_error() == Some(libc::EAFNOSUPPORT) {
                    continue;
                }
                return Err(io::Error::new(
                    e.kind(),
                    format!("rule to {}/{}: {e}", rule.dst, rule.len),
                ));
            }
        }
        Ok(())
    })
}

/// A TCP relay from an address of a container's network namespace to the
/// same address of the host's (an allowed loopback endpoint): a listener
/// bound inside the namespace, served by a thread of the runtime that
/// connects on the host's side and copies both ways. Stopped when dropped
/// with its container's network stack.
#[derive(Debug)]
struct Relay {
    listener: std::net::TcpListener,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    fn start(pid: libc::pid_t, addr: SocketAddr) -> io::Result<Relay> {
        let listener = in_netns(pid, || std::net::TcpListener::bind(addr))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (l, s) = (listener.try_clone()?, stop.clone());
        let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        std::thread::Builder::new()
            .name(format!("ftl-relay-{addr}"))
            .spawn(move || {
                use std::sync::atomic::Ordering::{Relaxed, SeqCst};
                for conn in l.incoming() {
                    if s.load(Relaxed) {
                        return;
                    }
                    let inside = match conn {
                        Ok(c) => c,
                        // Out of descriptors, say: wait, never spin.
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    };
                    // Each connection is two threads and four descriptors
                    // of the caller's process: a step gets a few at once.
                    if open.fetch_add(1, SeqCst) >= RELAY_CONNECTIONS {
                        open.fetch_sub(1, SeqCst);
                        drop(inside);
                        continue;
                    }
                    let done = open.clone();
                    let spawned = std::thread::Builder::new()
                        .name("ftl-relay-conn".into())
                        .spawn(move || {
                            if let Ok(host) =
                                TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                            {
                                pump(inside, host);
                            }
                            done.fetch_sub(1, SeqCst);
                        });
                    if spawned.is_err() {
                        open.fetch_sub(1, SeqCst);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })?;
        Ok(Relay { listener, stop })
    }

    fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wakes the accepting thread: it sees the flag and returns.
        // SAFETY: shutdown on a socket we own.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
}

/// How many connections one relay carries at once; more are closed as
/// they come (a package manager opens a handful).
const RELAY_CONNECTIONS: usize = 32;

/// Copies `a` to `b` and `b` to `a` until either side closes.
fn pump(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let one_way = |mut from: TcpStream, mut to: TcpStream| {
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    };
    let t = std::thread::spawn(move || one_way(a2, b));
    one_way(b2, a);
    let _ = t.join();
}

/// Whether `program` can be found on PATH.
pub fn stack_available(stack: Stack) -> bool {
    let name = OsStr::new(stack.name());
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_let_only_dns_through_and_block_the_private_ranges() {
        let r = rules(Stack::Slirp4netns, &[]);
        assert_eq!(r[0].dst, IpAddr::V4(Ipv4Addr::new(10, 0, 2, 3)));
        assert_eq!(r[0].pass, Some((libc::IPPROTO_UDP as u8, 53)));
        assert_eq!(r[1].pass, Some((libc::IPPROTO_TCP as u8, 53)));
        for (a, l) in [("10.0.0.0", 8), ("127.0.0.0", 8), ("169.254.0.0", 16)] {
            assert!(
                r.iter().any(|x| x.dst == a.parse::<IpAddr>().unwrap()
                    && x.len == l
                    && x.pass.is_none()),
                "{a}/{l}"
            );
        }
        assert!(r.iter().all(|x| x.pass.is_some() || x.priority > 100));
        let p = rules(Stack::Pasta, &[]);
        assert_eq!(p.iter().filter(|x| x.pass.is_some()).count(), 1);
    }

    #[test]
    fn an_allowed_endpoint_passes_its_port_only_and_loopback_is_relayed() {
        let allow = parse_allow("10.1.2.3:3128, 127.0.0.1:4873").unwrap();
        let r = rules(Stack::Slirp4netns, &allow);
        let passes: Vec<_> = r.iter().filter(|x| x.pass.is_some()).collect();
        assert_eq!(passes.len(), 3, "{passes:?}");
        assert_eq!(passes[2].dst, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(passes[2].pass, Some((libc::IPPROTO_TCP as u8, 3128)));
        assert!(passes.iter().all(|x| x.priority < 200));
        assert!(parse_allow("10.1.2.3").is_err());
        assert!(parse_allow("0.0.0.0:80").is_err());
        assert!(parse_allow("10.1.2.3:0").is_err());
    }

    #[test]
    fn network_of_masks_the_host_bits() {
        assert_eq!(
            network_of("192.0.2.7".parse().unwrap(), 24),
            "192.0.2.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            network_of("fd00::2".parse().unwrap(), 64),
            "fd00::".parse::<IpAddr>().unwrap()
        );
    }
}
