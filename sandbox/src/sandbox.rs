//! The library API: run a container to completion, or start one and stop it
//! later, on ftl's own runtime or an external one.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use oci_spec::runtime::Spec;

use crate::cgroup::Cgroup;
use crate::error::SandboxError;
use crate::external::ExternalRuntime;
use crate::runtime::{self, Child, ChildIo, Plan};
use crate::state::{self, ContainerState};

/// Where a container's bundle comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A bundle directory with `config.json` (and usually `rootfs/`).
    Bundle(PathBuf),
    /// A root filesystem and a spec in memory (`root.path` is ignored).
    Rootfs { rootfs: PathBuf, spec: Box<Spec> },
}

/// What the container's stdin, stdout and stderr are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stdio {
    /// The caller's own descriptors.
    Inherit,
    /// `/dev/null`.
    Null,
    /// Pipes, collected into [`Outcome::stdout`] and [`Outcome::stderr`]
    /// (stdin is `/dev/null`).
    #[default]
    Capture,
}

/// One container to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Container id, unique under `state_root`: `[A-Za-z0-9_.+-]`.
    pub id: String,
    pub source: Source,
    pub stdio: Stdio,
    /// Wall-clock limit; the whole process tree is killed when it passes.
    pub timeout: Option<Duration>,
    /// Directory of container state (see [`state::default_root`]).
    pub state_root: PathBuf,
    /// Do not create cgroups (limits then fall back to rlimits).
    pub ignore_cgroups: bool,
    /// [`Sandbox::spawn`]: kill the container when the spawning thread
    /// exits (as [`Sandbox::run`] always does), for a caller that waits for
    /// it on that thread.
    pub die_with_parent: bool,
}

impl RunRequest {
    /// A request with capture, no timeout, and the default state root.
    pub fn new(id: impl Into<String>, source: Source) -> Self {
        RunRequest {
            id: id.into(),
            source,
            stdio: Stdio::Capture,
            timeout: None,
            state_root: state::default_root(),
            ignore_cgroups: false,
            die_with_parent: false,
        }
    }

    /// Runs `spec` on `rootfs`.
    pub fn from_spec(id: impl Into<String>, rootfs: impl Into<PathBuf>, spec: Spec) -> Self {
        Self::new(
            id,
            Source::Rootfs {
                rootfs: rootfs.into(),
                spec: Box::new(spec),
            },
        )
    }

    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    pub fn with_stdio(mut self, s: Stdio) -> Self {
        self.stdio = s;
        self
    }

    pub fn dying_with_parent(mut self) -> Self {
        self.die_with_parent = true;
        self
    }

    pub fn with_state_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.state_root = root.into();
        self
    }

    pub(crate) fn resolve(&self) -> Result<(Spec, PathBuf, PathBuf), SandboxError> {
        match &self.source {
            Source::Bundle(b) => {
                let (spec, rootfs) = crate::spec::load_bundle(b)?;
                Ok((spec, rootfs, b.clone()))
            }
            Source::Rootfs { rootfs, spec } => {
                if !rootfs.is_dir() {
                    return Err(SandboxError::MissingRootfs {
                        path: rootfs.clone(),
                    });
                }
                let bundle = rootfs.parent().unwrap_or(Path::new("/")).to_path_buf();
                Ok(((**spec).clone(), rootfs.clone(), bundle))
            }
        }
    }
}

/// How a container ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Exit code, when the init exited.
    pub code: Option<i32>,
    /// Signal, when the init was killed by one.
    pub signal: Option<i32>,
    /// A process of the container was killed by the out-of-memory killer.
    pub oom_killed: bool,
    /// The timeout passed and the tree was killed.
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub duration: Duration,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The shell convention: the code, or 128 + signal.
    pub fn exit_status(&self) -> i32 {
        self.code.or(self.signal.map(|s| 128 + s)).unwrap_or(255)
    }
}

/// Which runtime runs containers.
#[derive(Debug, Clone, Default)]
pub enum Sandbox {
    /// ftl's own runtime, in this process.
    #[default]
    Embedded,
    /// An external OCI runtime binary (runsc, runc, crun).
    External(ExternalRuntime),
}

impl Sandbox {
    /// `ftl` (or empty) for the embedded runtime; `runsc`, `runc`, `crun` or
    /// a path for an external one (`--sandbox-runtime`).
    pub fn from_name(name: &str) -> Sandbox {
        match name {
            "" | "ftl" | "embedded" => Sandbox::Embedded,
            other => Sandbox::External(ExternalRuntime::new(other)),
        }
    }

    /// Runs a container to completion.
    pub fn run(&self, req: &RunRequest) -> Result<Outcome, SandboxError> {
        match self {
            Sandbox::Embedded => run_embedded(req),
            Sandbox::External(ext) => ext.run(req),
        }
    }

    /// Starts a container and returns at once; the container is torn down
    /// when the [`Running`] is dropped.
    pub fn spawn(&self, req: &RunRequest) -> Result<Running, SandboxError> {
        match self {
            Sandbox::Embedded => spawn_embedded(req),
            Sandbox::External(ext) => ext.spawn(req),
        }
    }
}

/// Signals caught by [`forward_signals`], not yet passed on (bit n = signal n).
static PENDING_SIGNALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn record_signal(sig: libc::c_int) {
    PENDING_SIGNALS.fetch_or(
        1u64 << (sig as u64 & 63),
        std::sync::atomic::Ordering::SeqCst,
    );
}

/// Makes this process pass TERM, INT, HUP, QUIT, USR1 and USR2 on to the
/// container it waits for (the command line's foreground `run` and `do`,
/// as runsc and runc do).
pub(crate) fn forward_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(record_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        // SAFETY: the handler only touches an atomic.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

/// A started container and what its host side holds.
pub(crate) struct Started {
    pub(crate) child: Child,
    pub(crate) cgroup: Option<Cgroup>,
    pub(crate) state_root: PathBuf,
    pub(crate) id: String,
    pub(crate) stdout: Option<OwnedFd>,
    pub(crate) stderr: Option<OwnedFd>,
    pub(crate) started_at: Instant,
}

/// Options of [`start`] that do not come from the spec.
#[derive(Debug, Default)]
pub(crate) struct StartOptions {
    pub(crate) id: String,
    pub(crate) state_root: PathBuf,
    pub(crate) bundle: PathBuf,
    pub(crate) ignore_cgroups: bool,
    pub(crate) stdio: Stdio,
    pub(crate) gate: Option<RawFd>,
    pub(crate) console: Option<RawFd>,
    pub(crate) preserve_fds: u32,
    pub(crate) die_with_parent: bool,
    pub(crate) monitor_pid: Option<i32>,
    /// Overlay the rootfs with tmpfs (`--overlay`).
    pub(crate) overlay: bool,
}

fn open_null() -> Result<OwnedFd, SandboxError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| SandboxError::sys("opening /dev/null", e))
}

/// Prepares, clones and records a container. On error nothing is left.
pub(crate) fn start(
    spec: &Spec,
    rootfs: &Path,
    opts: &StartOptions,
) -> Result<Started, SandboxError> {
    let dir = state::create_dir(&opts.state_root, &opts.id)?;
    let cleanup = |cg: Option<&Cgroup>| {
        if let Some(cg) = cg {
            cg.destroy();
        }
        state::remove(&opts.state_root, &opts.id);
    };
    let (egress_spec, egress) = match crate::net::prepare(spec, rootfs, &dir) {
        Ok(Some((s, e))) => (Some(s), Some(e)),
        Ok(None) => (None, None),
        Err(e) => {
            cleanup(None);
            return Err(e);
        }
    };
    let mut plan = match Plan::new(egress_spec.as_ref().unwrap_or(spec), rootfs) {
        Ok(p) => p,
        Err(e) => {
            cleanup(None);
            return Err(e);
        }
    };
    plan.die_with_parent = opts.die_with_parent;
    plan.egress = egress;
    if rootfs.canonicalize().is_ok_and(|r| r == Path::new("/")) {
        let at = dir.join("root");
        let r = std::fs::create_dir(&at)
            .map_err(|source| SandboxError::State {
                path: at.clone(),
                source,
            })
            .and_then(|()| plan.relocate(&at));
        if let Err(e) = r {
            cleanup(None);
            return Err(e);
        }
    }
    if opts.overlay {
        let scratch = dir.join("overlay");
        let r = std::fs::create_dir(&scratch)
            .map_err(|source| SandboxError::State {
                path: scratch.clone(),
                source,
            })
            .and_then(|()| plan.set_overlay(&scratch));
        if let Err(e) = r {
            cleanup(None);
            return Err(e);
        }
    }
    let cgroup = if opts.ignore_cgroups {
        plan.add_fallback_rlimits();
        None
    } else {
        let path = plan
            .cgroups_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("ftl-{}", opts.id)));
        let freezer = plan.clone_flags & libc::CLONE_NEWPID == 0;
        match Cgroup::create_with(&path, plan.resources.as_ref(), freezer) {
            Ok(Some(cg)) => Some(cg),
            Ok(None) => {
                tracing::warn!("no cgroups on this host: limits enforced by rlimits only");
                plan.add_fallback_rlimits();
                None
            }
            Err(e) => {
                let cause = std::error::Error::source(&e)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                tracing::warn!(error = %format!("{e}{cause}"), "cgroups not usable: limits enforced by rlimits only");
                plan.add_fallback_rlimits();
                None
            }
        }
    };
    let result = (|| {
        let mut keep: Vec<OwnedFd> = Vec::new();
        let mut io = ChildIo {
            console: opts.console,
            gate: opts.gate,
            preserve_fds: opts.preserve_fds,
            ..Default::default()
        };
        let (mut out_r, mut err_r) = (None, None);
        match opts.stdio {
            Stdio::Inherit => {}
            Stdio::Null => {
                let n = open_null()?;
                io.stdio = [Some(n.as_raw_fd()); 3];
                keep.push(n);
            }
            Stdio::Capture => {
                let n = open_null()?;
                let (or, ow) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| SandboxError::sys("creating a pipe", e))?;
                let (er, ew) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| SandboxError::sys("creating a pipe", e))?;
                io.stdio = [
                    Some(n.as_raw_fd()),
                    Some(ow.as_raw_fd()),
                    Some(ew.as_raw_fd()),
                ];
                keep.extend([n, ow, ew]);
                out_r = Some(or);
                err_r = Some(er);
            }
        }
        let child = runtime::launch(&plan, &io, cgroup.as_ref())?;
        drop(keep);
        Ok::<_, SandboxError>((child, out_r, err_r))
    })();
    let (child, stdout, stderr) = match result {
        Ok(x) => x,
        Err(e) => {
            cleanup(cgroup.as_ref());
            return Err(e);
        }
    };
    let st = ContainerState {
        id: opts.id.clone(),
        pid: child.pid,
        pid_start: state::process_start_time(child.pid).unwrap_or(0),
        bundle: opts.bundle.clone(),
        rootfs: rootfs.to_path_buf(),
        created: state::now_rfc3339(),
        status: if opts.gate.is_some() {
            "created"
        } else {
            "running"
        }
        .into(),
        cgroup: cgroup.clone(),
        gate_fd: opts.gate,
        monitor_pid: opts.monitor_pid,
        annotations: spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        owner: String::new(),
        exit_code: None,
    };
    if let Err(e) = state::save(&opts.state_root, &st) {
        runtime::kill_and_reap(child.pid);
        cleanup(cgroup.as_ref());
        return Err(e);
    }
    tracing::debug!(id = %opts.id, pid = child.pid, dir = %dir.display(), "container started");
    Ok(Started {
        child,
        cgroup,
        state_root: opts.state_root.clone(),
        id: opts.id.clone(),
        stdout,
        stderr,
        started_at: Instant::now(),
    })
}

/// The init's wait status, decoded.
pub(crate) fn decode(status: libc::c_int) -> (Option<i32>, Option<i32>) {
    if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    }
}

fn waitpid_nohang(pid: libc::pid_t) -> Option<libc::c_int> {
    let mut st = 0;
    // SAFETY: waitpid on our own child.
    let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG | libc::__WALL) };
    (r == pid).then_some(st)
}

impl Started {
    /// Kills every process of the container.
    pub(crate) fn kill_tree(&self) {
        // SAFETY: pidfd_send_signal on a pidfd we own.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.child.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::c_void>(),
                0,
            );
        }
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
    }

    /// Waits for the init, collecting captured output; kills the tree at
    /// `deadline`.
    pub(crate) fn wait(&mut self, deadline: Option<Instant>) -> Outcome {
        let mut out = Capture::default();
        let mut err = Capture::default();
        let mut status = None;
        let mut timed_out = false;
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let pending = PENDING_SIGNALS.swap(0, std::sync::atomic::Ordering::SeqCst);
            if pending != 0 && status.is_none() {
                for sig in 1..64 {
                    if pending & (1u64 << sig) != 0 {
                        tracing::debug!(id = %self.id, sig, "forwarding signal");
                        // SAFETY: pidfd_send_signal on a pidfd we own.
                        unsafe {
                            libc::syscall(
                                libc::SYS_pidfd_send_signal,
                                self.child.pidfd.as_raw_fd(),
                                sig as libc::c_int,
                                std::ptr::null::<libc::c_void>(),
                                0,
                            );
                        }
                    }
                }
            }
            let mut fds: Vec<nix::poll::PollFd> = Vec::new();
            let mut kinds = Vec::new();
            if status.is_none() {
                fds.push(nix::poll::PollFd::new(
                    self.child.pidfd.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                ));
                kinds.push(0);
            }
            if let Some(f) = &self.stdout {
                fds.push(nix::poll::PollFd::new(
                    f.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                ));
                kinds.push(1);
            }
            if let Some(f) = &self.stderr {
                fds.push(nix::poll::PollFd::new(
                    f.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                ));
                kinds.push(2);
            }
            if fds.is_empty() {
                break;
            }
            let now = Instant::now();
            let until = match (status.is_none(), deadline, drain_deadline) {
                (true, Some(d), _) if !timed_out => Some(d),
                (false, _, Some(d)) => Some(d),
                _ => None,
            };
            let timeout = match until {
                Some(d) if d <= now => nix::poll::PollTimeout::ZERO,
                Some(d) => {
                    nix::poll::PollTimeout::try_from((d - now).as_millis().min(60_000) as i32 + 1)
                        .unwrap_or(nix::poll::PollTimeout::MAX)
                }
                None => nix::poll::PollTimeout::NONE,
            };
            let n = match nix::poll::poll(&mut fds, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => 0,
            };
            let ready: Vec<(i32, bool)> = fds
                .iter()
                .zip(&kinds)
                .map(|(f, k)| (*k, f.revents().is_some_and(|r| !r.is_empty())))
                .collect();
            drop(fds);
            if n == 0 {
                if status.is_none() {
                    if let Some(d) = deadline {
                        if Instant::now() >= d && !timed_out {
                            tracing::debug!(id = %self.id, "timeout: killing the container");
                            timed_out = true;
                            self.kill_tree();
                        }
                    }
                } else if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                    // Something outside the container's pid namespace still
                    // holds the pipes: stop reading.
                    self.stdout = None;
                    self.stderr = None;
                }
                continue;
            }
            for (kind, is_ready) in ready {
                if !is_ready {
                    continue;
                }
                match kind {
                    0 => {
                        if let Some(st) = waitpid_nohang(self.child.pid) {
                            status = Some(st);
                            // What is left of the tree goes with the init.
                            if let Some(cg) = &self.cgroup {
                                if !cg.pids().is_empty() {
                                    cg.kill_all();
                                }
                            }
                            drain_deadline = Some(Instant::now() + Duration::from_millis(500));
                        }
                    }
                    1 | 2 => {
                        let slot = if kind == 1 {
                            &mut self.stdout
                        } else {
                            &mut self.stderr
                        };
                        let buf = if kind == 1 { &mut out } else { &mut err };
                        let mut chunk = [0u8; 65536];
                        let r = match slot {
                            Some(f) => nix::unistd::read(&*f, &mut chunk),
                            None => Ok(0),
                        };
                        match r {
                            Ok(0) | Err(_) => *slot = None,
                            Ok(n) => {
                                buf.push(&chunk[..n]);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        let st = match status {
            Some(s) => s,
            None => {
                let mut st = 0;
                // SAFETY: blocking waitpid on our own child.
                unsafe { libc::waitpid(self.child.pid, &mut st, libc::__WALL) };
                st
            }
        };
        let (code, signal) = decode(st);
        Outcome {
            code,
            signal,
            oom_killed: self.cgroup.as_ref().is_some_and(|c| c.oom_killed()),
            timed_out,
            stdout: out.finish(),
            stderr: err.finish(),
            duration: self.started_at.elapsed(),
        }
    }

    /// Removes the cgroup and the state directory.
    pub(crate) fn cleanup(&self) {
        if let Some(cg) = &self.cgroup {
            cg.destroy();
        }
        state::remove(&self.state_root, &self.id);
    }
}

fn embedded_start(req: &RunRequest, die_with_parent: bool) -> Result<Started, SandboxError> {
    let (spec, rootfs, bundle) = req.resolve()?;
    start(
        &spec,
        &rootfs,
        &StartOptions {
            id: req.id.clone(),
            state_root: req.state_root.clone(),
            bundle,
            ignore_cgroups: req.ignore_cgroups,
            stdio: req.stdio,
            die_with_parent,
            ..Default::default()
        },
    )
}

fn run_embedded(req: &RunRequest) -> Result<Outcome, SandboxError> {
    let t0 = Instant::now();
    let mut started = embedded_start(req, true)?;
    let deadline = req.timeout.map(|t| t0 + t);
    let mut outcome = started.wait(deadline);
    started.cleanup();
    outcome.duration = t0.elapsed();
    tracing::debug!(id = %req.id, code = ?outcome.code, signal = ?outcome.signal, oom = outcome.oom_killed, "container exited");
    Ok(outcome)
}

type Buffer = Arc<Mutex<Vec<u8>>>;

/// A container started by [`Sandbox::spawn`]. Dropping it kills the whole
/// tree and removes every trace (cgroup, state directory).
pub struct Running {
    inner: RunningInner,
    stdout: Buffer,
    stderr: Buffer,
    readers: Vec<JoinHandle<()>>,
    outcome: Option<Outcome>,
}

enum RunningInner {
    Embedded(Box<Started>),
    External(Box<crate::external::ExternalRunning>),
}

/// How much of a stream's start a capture keeps, and of its end: a step
/// that prints without end (`yes`) must not grow its caller's memory.
const CAPTURE_HALF: usize = 16 << 20;

/// A captured stream: all of it up to [`CAPTURE_HALF`] bytes, past that
/// its first and last `CAPTURE_HALF` bytes with a line saying how much was
/// left out between them.
#[derive(Default)]
struct Capture {
    head: Vec<u8>,
    tail: Vec<u8>,
    dropped: u64,
}

impl Capture {
    /// Adds `data`; returns the part of it kept at the start.
    fn push<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        let take = CAPTURE_HALF.saturating_sub(self.head.len()).min(data.len());
        self.head.extend_from_slice(&data[..take]);
        let rest = &data[take..];
        if !rest.is_empty() {
            self.tail.extend_from_slice(rest);
            if self.tail.len() > 2 * CAPTURE_HALF {
                let cut = self.tail.len() - CAPTURE_HALF;
                self.tail.drain(..cut);
                self.dropped += cut as u64;
            }
        }
        &data[..take]
    }

    /// What follows the start: the marker, if anything was left out, and
    /// the end.
    fn rest(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.dropped > 0 {
            out.extend_from_slice(
                format!("\n[ftl: {} bytes of output left out here]\n", self.dropped).as_bytes(),
            );
        }
        out.append(&mut self.tail);
        out
    }

    fn finish(mut self) -> Vec<u8> {
        let rest = self.rest();
        let mut all = std::mem::take(&mut self.head);
        all.extend_from_slice(&rest);
        all
    }
}

/// Collects a stream into `buf` as a [`Capture`]: the start as it comes,
/// the rest when the stream ends.
fn reader(fd: Option<OwnedFd>, buf: Buffer) -> Option<JoinHandle<()>> {
    let fd = fd?;
    Some(std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        let mut chunk = [0u8; 16384];
        let mut cap = Capture::default();
        loop {
            let n = match f.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let head = cap.push(&chunk[..n]);
            if !head.is_empty() {
                buf.lock().expect("log buffer").extend_from_slice(head);
            }
        }
        let rest = cap.rest();
        if !rest.is_empty() {
            buf.lock().expect("log buffer").extend_from_slice(&rest);
        }
    }))
}

fn spawn_embedded(req: &RunRequest) -> Result<Running, SandboxError> {
    let mut started = embedded_start(req, req.die_with_parent)?;
    let stdout = Buffer::default();
    let stderr = Buffer::default();
    let readers = [
        reader(started.stdout.take(), stdout.clone()),
        reader(started.stderr.take(), stderr.clone()),
    ]
    .into_iter()
    .flatten()
    .collect();
    Ok(Running {
        inner: RunningInner::Embedded(Box::new(started)),
        stdout,
        stderr,
        readers,
        outcome: None,
    })
}

impl Running {
    pub(crate) fn external(
        ext: crate::external::ExternalRunning,
        out: Option<OwnedFd>,
        err: Option<OwnedFd>,
    ) -> Running {
        let stdout = Buffer::default();
        let stderr = Buffer::default();
        let readers = [reader(out, stdout.clone()), reader(err, stderr.clone())]
            .into_iter()
            .flatten()
            .collect();
        Running {
            inner: RunningInner::External(Box::new(ext)),
            stdout,
            stderr,
            readers,
            outcome: None,
        }
    }

    /// Host pid of the container's init (for an external runtime: of the
    /// runtime's process).
    pub fn pid(&self) -> i32 {
        match &self.inner {
            RunningInner::Embedded(s) => s.child.pid,
            RunningInner::External(e) => e.pid(),
        }
    }

    /// Sends `signal` to the init.
    pub fn signal(&self, signal: i32) -> Result<(), SandboxError> {
        if self.outcome.is_some() {
            return Ok(());
        }
        match &self.inner {
            RunningInner::Embedded(s) => {
                // SAFETY: pidfd_send_signal on a pidfd we own.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        s.child.pidfd.as_raw_fd(),
                        signal,
                        std::ptr::null::<libc::c_void>(),
                        0,
                    )
                };
                if r != 0 {
                    return Err(SandboxError::sys(
                        format!("signal {signal} to container {}", s.id),
                        std::io::Error::last_os_error(),
                    ));
                }
                Ok(())
            }
            RunningInner::External(e) => e.signal(signal),
        }
    }

    /// Kills the whole tree (SIGKILL).
    pub fn kill(&self) {
        if self.outcome.is_some() {
            return;
        }
        match &self.inner {
            RunningInner::Embedded(s) => s.kill_tree(),
            RunningInner::External(e) => {
                let _ = e.signal(libc::SIGKILL);
            }
        }
    }

    /// Stdout and stderr captured so far.
    pub fn logs(&self) -> (Vec<u8>, Vec<u8>) {
        (
            self.stdout.lock().expect("log buffer").clone(),
            self.stderr.lock().expect("log buffer").clone(),
        )
    }

    /// Waits up to `timeout` for the container to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Outcome>, SandboxError> {
        if let Some(o) = &self.outcome {
            return Ok(Some(o.clone()));
        }
        let deadline = Instant::now() + timeout;
        let st = match &mut self.inner {
            RunningInner::Embedded(s) => {
                let mut fds = [nix::poll::PollFd::new(
                    s.child.pidfd.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let t = nix::poll::PollTimeout::try_from(left.as_millis().min(60_000) as i32)
                        .unwrap_or(nix::poll::PollTimeout::MAX);
                    match nix::poll::poll(&mut fds, t) {
                        Ok(0) if Instant::now() >= deadline => return Ok(None),
                        Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                        _ => break,
                    }
                }
                match waitpid_nohang(s.child.pid) {
                    Some(st) => st,
                    None => return Ok(None),
                }
            }
            RunningInner::External(e) => match e.wait_timeout(timeout)? {
                Some(st) => st,
                None => return Ok(None),
            },
        };
        Ok(Some(self.finish(st)))
    }

    /// Waits for the container to exit, killing it once `timeout` has
    /// passed (the outcome is then `timed_out`) or as soon as `stop` says so
    /// (then `None`, the container killed and reaped). `stop` is asked
    /// every `poll`: a caller's cancellation.
    pub fn wait_or_stop(
        &mut self,
        timeout: Option<Duration>,
        poll: Duration,
        stop: impl Fn() -> bool,
    ) -> Result<Option<Outcome>, SandboxError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let left = deadline.map_or(poll, |d| d.saturating_duration_since(Instant::now()));
            if let Some(o) = self.wait_timeout(poll.min(left))? {
                return Ok(Some(o));
            }
            if stop() {
                self.kill();
                self.wait()?;
                return Ok(None);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.kill();
                let mut o = self.wait()?;
                o.timed_out = true;
                self.outcome = Some(o.clone());
                return Ok(Some(o));
            }
        }
    }

    /// Waits for the container to exit.
    pub fn wait(&mut self) -> Result<Outcome, SandboxError> {
        loop {
            if let Some(o) = self.wait_timeout(Duration::from_secs(3600))? {
                return Ok(o);
            }
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns how it ended.
    pub fn stop(mut self, grace: Duration) -> Result<Outcome, SandboxError> {
        let _ = self.signal(libc::SIGTERM);
        if let Some(o) = self.wait_timeout(grace)? {
            return Ok(o);
        }
        self.kill();
        self.wait()
    }

    fn finish(&mut self, status: libc::c_int) -> Outcome {
        match &self.inner {
            RunningInner::Embedded(s) => {
                if let Some(cg) = &s.cgroup {
                    cg.kill_all();
                }
            }
            RunningInner::External(e) => e.teardown(),
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let (code, signal) = decode(status);
        let (stdout, stderr) = self.logs();
        let (oom_killed, duration) = match &self.inner {
            RunningInner::Embedded(s) => (
                s.cgroup.as_ref().is_some_and(|c| c.oom_killed()),
                s.started_at.elapsed(),
            ),
            RunningInner::External(e) => (false, e.elapsed()),
        };
        let o = Outcome {
            code,
            signal,
            oom_killed,
            timed_out: false,
            stdout,
            stderr,
            duration,
        };
        if let RunningInner::Embedded(s) = &self.inner {
            s.cleanup();
        }
        self.outcome = Some(o.clone());
        o
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.outcome.is_none() {
            self.kill();
            let _ = self.wait_timeout(Duration::from_secs(10));
            if self.outcome.is_none() {
                if let RunningInner::Embedded(s) = &self.inner {
                    s.cleanup();
                }
            }
        }
    }
}
