//! The runsc-compatible command line: `ftl runsc [global flags] COMMAND`, or
//! the binary run under the name `runsc`.
//!
//! Flags are runsc's (Go style: `-flag`, `--flag`, `--flag=value`, `--flag
//! value`); errors exit with 128 as runsc's do, usage errors with 2, and
//! `run` exits with the container's status (128 + n for signal n).

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, Spec};

use crate::error::SandboxError;
use crate::sandbox::{self, StartOptions, Stdio};
use crate::state::{self, ContainerState};

/// Exit code of a failed command (runsc's `Fatalf`).
pub const EXIT_FAILURE: i32 = 128;
/// Exit code of a usage error.
pub const EXIT_USAGE: i32 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "runsc",
    about = "ftl's sandbox, with runsc's command line",
    disable_help_subcommand = true,
    disable_version_flag = true
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// runsc's global flags. Those ftl does not use are accepted and logged.
#[derive(Debug, Args)]
struct Global {
    /// Root directory of container state (before the command, as in
    /// runsc: after `do`, `--root` is the root filesystem of `do`).
    #[arg(long)]
    root: Option<PathBuf>,
    /// File to write logs to (default stderr).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Enable debug logging.
    #[arg(long, global = true)]
    debug: bool,
    /// Debug log file (or directory, ending in /).
    #[arg(long = "debug-log", global = true)]
    debug_log: Option<PathBuf>,
    /// Debug log format (accepted).
    #[arg(long = "debug-log-format", global = true)]
    debug_log_format: Option<String>,
    /// Network: sandbox (the spec's), none, host.
    #[arg(long, global = true, default_value = "sandbox")]
    network: String,
    /// Run without root (a user namespace is added).
    #[arg(long, global = true)]
    rootless: bool,
    /// Platform (accepted: ftl always runs containers natively).
    #[arg(long, global = true)]
    platform: Option<String>,
    /// Do not create cgroups (limits fall back to rlimits).
    #[arg(long = "ignore-cgroups", global = true)]
    ignore_cgroups: bool,
    /// Overlay the root filesystem with tmpfs: writes go to memory, the
    /// bundle's rootfs is never changed.
    #[arg(long, global = true)]
    overlay: bool,
    /// Accepted for compatibility with runsc, ignored with a debug log.
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    #[arg(long = "oci-seccomp", global = true)]
    oci_seccomp: bool,
    #[arg(long = "file-access", global = true)]
    file_access: Option<String>,
    #[arg(long = "overlay2", global = true)]
    overlay2: Option<String>,
    #[arg(long, global = true)]
    strace: bool,
    #[arg(long = "net-raw", global = true)]
    net_raw: bool,
    #[arg(long = "alsologtostderr", global = true)]
    alsologtostderr: bool,
    #[arg(long = "panic-log", global = true)]
    panic_log: Option<String>,
    #[arg(long = "watchdog-action", global = true)]
    watchdog_action: Option<String>,
    #[arg(long = "TESTONLY-unsafe-nonroot", global = true)]
    testonly_unsafe_nonroot: bool,
    #[arg(long = "cgroupfs", global = true)]
    cgroupfs: bool,
    #[arg(long = "vfs2", global = true)]
    vfs2: bool,
    #[arg(long = "lisafs", global = true)]
    lisafs: bool,
    #[arg(long = "fdlimit", global = true)]
    fdlimit: Option<String>,
    #[arg(long = "profile", global = true)]
    profile: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a container; its process waits for `start`.
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Create and run a container.
    Run(CreateArgs),
    /// Print the OCI state of a container.
    State { id: String },
    /// Send a signal to a container.
    Kill {
        /// Send the signal to every process of the container.
        #[arg(long)]
        all: bool,
        /// Send the signal to this host pid (must belong to the container).
        #[arg(long)]
        pid: Option<i32>,
        id: String,
        signal: Option<String>,
    },
    /// Delete containers.
    Delete {
        #[arg(long)]
        force: bool,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// List containers.
    List {
        #[arg(long, default_value = "text")]
        format: String,
        #[arg(long, short)]
        quiet: bool,
        #[arg(long)]
        sandbox: bool,
    },
    /// List the processes of a container.
    Ps {
        #[arg(long, default_value = "table")]
        format: String,
        id: String,
    },
    /// Run a new process in a container.
    Exec(ExecArgs),
    /// Wait for a container to exit; prints its exit status as JSON.
    Wait {
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        pid: i32,
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        rootpid: i32,
        id: String,
    },
    /// Print container statistics.
    Events {
        #[arg(long, default_value_t = 5)]
        interval: u64,
        #[arg(long)]
        stats: bool,
        id: String,
    },
    /// Write a starter config.json.
    Spec {
        #[arg(long, default_value = ".")]
        bundle: PathBuf,
        #[arg(long, default_value = "/")]
        cwd: String,
        #[arg(long)]
        netns: Option<String>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a command over the host's root filesystem (read-only).
    Do {
        #[arg(long)]
        cwd: Option<PathBuf>,
        #[arg(long = "force-overlay", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
        force_overlay: bool,
        #[arg(long)]
        quiet: bool,
        #[arg(long)]
        ip: Option<String>,
        #[arg(long = "uid-map")]
        uid_map: Vec<String>,
        #[arg(long = "gid-map")]
        gid_map: Vec<String>,
        #[arg(long = "root", id = "do_root")]
        do_root: Option<PathBuf>,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct CreateArgs {
    #[arg(long, short = 'b', default_value = ".")]
    bundle: PathBuf,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "user-log")]
    user_log: Option<PathBuf>,
    #[arg(long, short = 'd')]
    detach: bool,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    id: String,
}

#[derive(Debug, Args)]
struct ExecArgs {
    #[arg(long)]
    cwd: Option<String>,
    #[arg(long)]
    env: Vec<String>,
    #[arg(long)]
    user: Option<String>,
    #[arg(long = "additional-gids")]
    additional_gids: Vec<u32>,
    #[arg(long)]
    cap: Vec<String>,
    #[arg(long)]
    detach: bool,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "internal-pid-file")]
    internal_pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long)]
    process: Option<PathBuf>,
    #[arg(long, short = 't')]
    tty: bool,
    id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Flags that take no value (so `-flag x` leaves `x` alone).
const BOOL_FLAGS: &[&str] = &[
    "debug",
    "rootless",
    "ignore-cgroups",
    "overlay",
    "systemd-cgroup",
    "oci-seccomp",
    "strace",
    "net-raw",
    "alsologtostderr",
    "TESTONLY-unsafe-nonroot",
    "cgroupfs",
    "vfs2",
    "lisafs",
    "profile",
    "detach",
    "d",
    "force",
    "all",
    "quiet",
    "q",
    "sandbox",
    "stats",
    "force-overlay",
    "tty",
    "t",
    "help",
    "h",
];

/// Rewrites Go-style flags (`-root x`, `-debug=true`) into clap's form,
/// up to the first positional argument after the command.
fn normalize(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    if let Some(a0) = iter.next() {
        out.push(a0);
    }
    let mut seen_command = false;
    let mut expecting_value = false;
    let mut rest_verbatim = false;
    for a in iter {
        if rest_verbatim {
            out.push(a);
            continue;
        }
        let s = a.to_string_lossy().into_owned();
        if expecting_value {
            expecting_value = false;
            out.push(a);
            continue;
        }
        if s == "--" {
            rest_verbatim = true;
            out.push(a);
            continue;
        }
        if let Some(body) = s.strip_prefix('-') {
            let body = body.strip_prefix('-').unwrap_or(body);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            if name.is_empty() {
                out.push(a);
                continue;
            }
            let is_bool = BOOL_FLAGS.contains(&name);
            match (is_bool, value) {
                (true, Some(v)) => {
                    // Go accepts `-debug=false`.
                    if v == "true" || v == "1" {
                        out.push(format!("--{name}").into());
                    } else if name == "force-overlay" {
                        out.push(format!("--{name}=false").into());
                    }
                }
                (true, None) => out.push(if name.len() == 1 {
                    format!("-{name}").into()
                } else {
                    format!("--{name}").into()
                }),
                (false, Some(v)) => out.push(format!("--{name}={v}").into()),
                (false, None) => {
                    out.push(if name.len() == 1 {
                        format!("-{name}").into()
                    } else {
                        format!("--{name}").into()
                    });
                    expecting_value = true;
                }
            }
            continue;
        }
        if seen_command {
            // The first positional after the command: the rest (a command
            // line for exec/do/spec) is left alone.
            rest_verbatim = matches!(
                out.iter()
                    .find(|o| {
                        let o = o.to_string_lossy();
                        COMMANDS.contains(&o.as_ref())
                    })
                    .map(|o| o.to_string_lossy().into_owned())
                    .as_deref(),
                Some("exec") | Some("do")
            );
        } else if COMMANDS.contains(&s.as_str()) {
            seen_command = true;
        }
        out.push(a);
    }
    out
}

const COMMANDS: &[&str] = &[
    "create", "start", "run", "state", "kill", "delete", "list", "ps", "exec", "wait", "events",
    "spec", "do",
];

struct Ctx {
    root: PathBuf,
    overlay: bool,
    network: String,
    rootless: bool,
    ignore_cgroups: bool,
    json_errors: bool,
}

/// An error of a command: the message and the exit code.
struct Fail(i32, String);

impl From<SandboxError> for Fail {
    fn from(e: SandboxError) -> Self {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        Fail(EXIT_FAILURE, msg)
    }
}

fn fail(msg: impl Into<String>) -> Fail {
    Fail(EXIT_FAILURE, msg.into())
}

fn init_logging(g: &Global) {
    let level = if g.debug { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::new(level);
    let target = g.log.clone().or_else(|| {
        g.debug_log.clone().map(|p| {
            if p.to_string_lossy().ends_with('/') {
                let _ = fs::create_dir_all(&p);
                p.join(format!("runsc.log.{}", std::process::id()))
            } else {
                p
            }
        })
    });
    let writer: Box<dyn Fn() -> Box<dyn Write> + Send + Sync> = match target {
        Some(p) => {
            let p = p.clone();
            Box::new(move || -> Box<dyn Write> {
                match fs::OpenOptions::new().create(true).append(true).open(&p) {
                    Ok(f) => Box::new(f),
                    Err(_) => Box::new(std::io::stderr()),
                }
            })
        }
        None => Box::new(|| -> Box<dyn Write> { Box::new(std::io::stderr()) }),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false);
    let _ = if g.log_format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Runs the command line `args` (including argv[0]); returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let args = normalize(args);
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    init_logging(&cli.global);
    let g = &cli.global;
    for (flag, set) in [
        ("--platform", g.platform.is_some()),
        ("--systemd-cgroup", g.systemd_cgroup),
        ("--oci-seccomp", g.oci_seccomp),
        ("--file-access", g.file_access.is_some()),
        ("--overlay2", g.overlay2.is_some()),
        ("--strace", g.strace),
        ("--net-raw", g.net_raw),
        ("--watchdog-action", g.watchdog_action.is_some()),
        ("--debug-log-format", g.debug_log_format.is_some()),
        ("--fdlimit", g.fdlimit.is_some()),
    ] {
        if set {
            tracing::debug!(flag, "accepted for runsc compatibility and ignored");
        }
    }
    let ctx = Ctx {
        root: g.root.clone().unwrap_or_else(state::default_root),
        overlay: g.overlay,
        network: g.network.clone(),
        rootless: g.rootless,
        ignore_cgroups: g.ignore_cgroups,
        json_errors: g.log_format == "json",
    };
    match dispatch(&ctx, cli.command) {
        Ok(code) => code,
        Err(Fail(code, msg)) => {
            if g.log.is_some() || g.debug_log.is_some() {
                tracing::error!("{msg}");
            }
            if ctx.json_errors {
                let line =
                    serde_json::json!({"level": "error", "msg": msg, "time": state::now_rfc3339()});
                eprintln!("{line}");
            } else {
                eprintln!("{msg}");
            }
            code
        }
    }
}

fn dispatch(ctx: &Ctx, cmd: Command) -> Result<i32, Fail> {
    match cmd {
        Command::Create(a) => create(ctx, &a, true).map(|_| 0),
        Command::Run(a) => run(ctx, &a),
        Command::Start { id } => start(ctx, &id).map(|()| 0),
        Command::State { id } => {
            let st = state::load(&ctx.root, &id)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&st.oci_json()).expect("json")
            );
            Ok(0)
        }
        Command::Kill {
            all,
            pid,
            id,
            signal,
        } => kill(ctx, &id, signal.as_deref(), all, pid).map(|()| 0),
        Command::Delete { force, ids } => {
            for id in ids {
                delete(ctx, &id, force)?;
            }
            Ok(0)
        }
        Command::List {
            format,
            quiet,
            sandbox: _,
        } => list(ctx, &format, quiet).map(|()| 0),
        Command::Ps { format, id } => ps(ctx, &id, &format).map(|()| 0),
        Command::Exec(a) => exec(ctx, &a),
        Command::Wait { pid, rootpid, id } => {
            if pid != -1 || rootpid != -1 {
                tracing::debug!("wait --pid/--rootpid: waiting on the container's init instead");
            }
            wait(ctx, &id).map(|()| 0)
        }
        Command::Events {
            interval,
            stats,
            id,
        } => events(ctx, &id, stats, interval).map(|()| 0),
        Command::Spec {
            bundle,
            cwd,
            netns,
            args,
        } => spec_cmd(ctx, &bundle, &cwd, netns, args).map(|()| 0),
        Command::Do {
            cwd,
            force_overlay,
            quiet: _,
            ip: _,
            uid_map: _,
            gid_map: _,
            do_root,
            command,
        } => do_cmd(ctx, cwd, force_overlay, do_root, command),
    }
}

/// Applies `--network` and `--rootless` to a spec.
fn adjust_spec(ctx: &Ctx, spec: &mut Spec) -> Result<(), Fail> {
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    let mut ns = linux.namespaces().clone().unwrap_or_default();
    match ctx.network.as_str() {
        "sandbox" | "" => {}
        "none" => {
            if !ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network) {
                ns.push(
                    LinuxNamespaceBuilder::default()
                        .typ(LinuxNamespaceType::Network)
                        .build()
                        .expect("ns"),
                );
            }
        }
        "host" => ns.retain(|n| n.typ() != LinuxNamespaceType::Network),
        other => {
            return Err(Fail(
                EXIT_USAGE,
                format!("invalid --network {other:?}: use sandbox, none or host"),
            ))
        }
    }
    if ctx.rootless
        && !nix::unistd::geteuid().is_root()
        && !ns.iter().any(|n| n.typ() == LinuxNamespaceType::User)
    {
        ns.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .build()
                .expect("ns"),
        );
    }
    linux.set_namespaces(Some(ns));
    Ok(())
}

fn write_pid_file(path: &Path, pid: i32) -> Result<(), Fail> {
    let tmp = path.with_extension("ftl-tmp");
    fs::write(&tmp, pid.to_string())
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| fail(format!("writing pid file {}: {e}", path.display())))
}

fn connect_console(path: &Path) -> Result<OwnedFd, Fail> {
    std::os::unix::net::UnixStream::connect(path)
        .map(OwnedFd::from)
        .map_err(|e| {
            fail(format!(
                "connecting to console socket {}: {e}",
                path.display()
            ))
        })
}

/// `create` (gated) or `run --detach` (not gated): a monitor process owns
/// the container's init, waits for it and records its exit status.
/// Returns the init's pid.
fn create(ctx: &Ctx, a: &CreateArgs, gated: bool) -> Result<i32, Fail> {
    state::check_id(&a.id)?;
    let bundle = fs::canonicalize(&a.bundle).unwrap_or_else(|_| a.bundle.clone());
    let (mut spec, rootfs) = crate::spec::load_bundle(&bundle)?;
    adjust_spec(ctx, &mut spec)?;
    if spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
        && a.console_socket.is_none()
    {
        return Err(fail(
            "process.terminal is true: --console-socket is required with create or a detached run",
        ));
    }
    let console = match &a.console_socket {
        Some(p) => Some(connect_console(p)?),
        None => None,
    };
    let (report_r, report_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail(format!("pipe: {e}")))?;
    // SAFETY: the CLI is single-threaded; the monitor continues as a
    // normal process.
    match unsafe { nix::unistd::fork() }.map_err(|e| fail(format!("fork: {e}")))? {
        nix::unistd::ForkResult::Child => {
            drop(report_r);
            let code = monitor(ctx, a, &bundle, &spec, &rootfs, console, gated, report_w);
            std::process::exit(code);
        }
        nix::unistd::ForkResult::Parent { .. } => {}
    }
    drop(report_w);
    drop(console);
    // One line: the init keeps a copy of the pipe until it executes, so
    // the end of the report is its newline, not EOF.
    let mut text = String::new();
    let mut f = std::io::BufReader::new(fs::File::from(report_r));
    let _ = std::io::BufRead::read_line(&mut f, &mut text);
    let text = text.trim_end().to_string();
    if let Some(pid) = text.strip_prefix("ok ") {
        let pid: i32 = pid
            .trim()
            .parse()
            .map_err(|_| fail("bad report from the monitor"))?;
        if let Some(p) = &a.pid_file {
            write_pid_file(p, pid)?;
        }
        Ok(pid)
    } else {
        Err(fail(text.strip_prefix("err ").unwrap_or(&text).to_string()))
    }
}

#[allow(clippy::too_many_arguments)]
fn monitor(
    ctx: &Ctx,
    a: &CreateArgs,
    bundle: &Path,
    spec: &Spec,
    rootfs: &Path,
    console: Option<OwnedFd>,
    gated: bool,
    report: OwnedFd,
) -> i32 {
    let _ = nix::unistd::setsid();
    let mut report = fs::File::from(report);
    let gate = if gated {
        match nix::unistd::pipe() {
            // Both ends stay open in the init until it executes: `start`
            // writes into the read end through /proc.
            Ok((r, w)) => Some((r, w)),
            Err(e) => {
                let _ = writeln!(report, "err pipe: {e}");
                return 1;
            }
        }
    } else {
        None
    };
    let opts = StartOptions {
        id: a.id.clone(),
        state_root: ctx.root.clone(),
        bundle: bundle.to_path_buf(),
        ignore_cgroups: ctx.ignore_cgroups,
        stdio: Stdio::Inherit,
        gate: gate.as_ref().map(|(r, _)| r.as_raw_fd()),
        console: console.as_ref().map(|c| c.as_raw_fd()),
        preserve_fds: a.preserve_fds,
        die_with_parent: false,
        monitor_pid: Some(std::process::id() as i32),
        overlay: ctx.overlay,
    };
    let mut started = match sandbox::start(spec, rootfs, &opts) {
        Ok(s) => s,
        Err(e) => {
            let Fail(_, msg) = Fail::from(e);
            let _ = writeln!(report, "err {msg}");
            return 1;
        }
    };
    drop(gate);
    drop(console);
    let _ = writeln!(report, "ok {}", started.child.pid);
    drop(report);
    // The monitor lets go of the caller's stdio.
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for t in 0..3 {
            // SAFETY: dup2 onto our own stdio.
            unsafe { libc::dup2(null.as_raw_fd(), t) };
        }
    }
    let outcome = started.wait(None);
    if spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(crate::REMOVE_ON_EXIT))
        .is_some_and(|v| v == "true")
    {
        started.cleanup();
        return 0;
    }
    // Under the state lock: `start` may be recording `running` right now.
    // Only this init's state: after a `delete` that stopped waiting for us,
    // the id may name a new container.
    let init = started.child.pid;
    let _ = state::update(&ctx.root, &a.id, |st| {
        if st.pid != init {
            return Err(SandboxError::NotFound {
                id: a.id.clone(),
                root: ctx.root.clone(),
            });
        }
        st.exit_code = Some(outcome.exit_status());
        st.status = "stopped".into();
        Ok(())
    });
    // The cgroup stays until `delete` (runsc and runc keep it too).
    0
}

fn run(ctx: &Ctx, a: &CreateArgs) -> Result<i32, Fail> {
    if a.detach {
        create(ctx, a, false)?;
        return Ok(0);
    }
    state::check_id(&a.id)?;
    let bundle = fs::canonicalize(&a.bundle).unwrap_or_else(|_| a.bundle.clone());
    let (mut spec, rootfs) = crate::spec::load_bundle(&bundle)?;
    adjust_spec(ctx, &mut spec)?;
    let console = match &a.console_socket {
        Some(p) => Some(connect_console(p)?),
        None => None,
    };
    let opts = StartOptions {
        id: a.id.clone(),
        state_root: ctx.root.clone(),
        bundle,
        ignore_cgroups: ctx.ignore_cgroups,
        stdio: Stdio::Inherit,
        console: console.as_ref().map(|c| c.as_raw_fd()),
        preserve_fds: a.preserve_fds,
        die_with_parent: true,
        overlay: ctx.overlay,
        ..Default::default()
    };
    sandbox::forward_signals();
    let mut started = sandbox::start(&spec, &rootfs, &opts)?;
    drop(console);
    if let Some(p) = &a.pid_file {
        if let Err(e) = write_pid_file(p, started.child.pid) {
            started.kill_tree();
            let _ = started.wait(None);
            started.cleanup();
            return Err(e);
        }
    }
    let outcome = started.wait(None);
    started.cleanup();
    Ok(outcome.exit_status())
}

fn start(ctx: &Ctx, id: &str) -> Result<(), Fail> {
    // The gate opens under the state lock, so the monitor's `stopped` (a
    // process that exits at once) is written after our `running`, never
    // overwritten by it. A refusal saves nothing.
    state::update(&ctx.root, id, |st| {
        if st.status() != "created" {
            return Err(SandboxError::WrongState {
                id: id.to_string(),
                status: st.status().to_string(),
                operation: "start",
                wanted: "created",
            });
        }
        let gate = st.gate_fd.ok_or_else(|| SandboxError::Sys {
            what: format!("container {id} was not created to wait for start"),
            source: std::io::ErrorKind::InvalidInput.into(),
        })?;
        let path = format!("/proc/{}/fd/{gate}", st.pid);
        // Non-blocking: an init gone since the check leaves a pipe with no
        // reader, where a blocking open would wait for ever (lock held).
        fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .and_then(|mut f| f.write_all(b"s"))
            .map_err(|source| SandboxError::Sys {
                what: format!("signalling the start gate {path}"),
                source,
            })?;
        st.status = "running".into();
        Ok(())
    })?;
    Ok(())
}

/// Parses `KILL`, `SIGKILL` or `9`.
fn parse_signal(s: &str) -> Result<i32, Fail> {
    if let Ok(n) = s.parse::<i32>() {
        return Ok(n);
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| Fail(EXIT_USAGE, format!("unknown signal {s:?}")))
}

fn kill(
    ctx: &Ctx,
    id: &str,
    signal: Option<&str>,
    all: bool,
    pid: Option<i32>,
) -> Result<(), Fail> {
    let st = state::load(&ctx.root, id)?;
    let sig = parse_signal(signal.unwrap_or("TERM"))?;
    if !st.alive() {
        return Err(fail(format!("container {id} is not running")));
    }
    let targets: Vec<i32> = if all {
        st.cgroup
            .as_ref()
            .map(|c| c.pids())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| vec![st.pid])
    } else if let Some(p) = pid {
        let pids = st.cgroup.as_ref().map(|c| c.pids()).unwrap_or_default();
        if p != st.pid && !pids.contains(&p) {
            return Err(fail(format!("process {p} is not in container {id}")));
        }
        vec![p]
    } else {
        vec![st.pid]
    };
    for p in targets {
        // SAFETY: plain kill(2).
        if unsafe { libc::kill(p, sig) } != 0 {
            // With --all, a process may go with the init before its turn.
            if all && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
                continue;
            }
            return Err(fail(format!(
                "signal {sig} to {p}: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

fn wait_gone(pid: i32, start: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if state::process_start_time(pid) != Some(start) {
            return true;
        }
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rfind(')')
            .is_some_and(|i| stat[i + 2..].starts_with('Z'))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn delete(ctx: &Ctx, id: &str, force: bool) -> Result<(), Fail> {
    let st = state::load(&ctx.root, id)?;
    let status = st.status();
    if status == "running" && !force {
        return Err(fail(format!(
            "cannot delete container {id} that is running: use --force"
        )));
    }
    if st.alive() {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(st.pid, libc::SIGKILL) };
    }
    if let Some(cg) = &st.cgroup {
        cg.kill_all();
    }
    if st.pid > 0 {
        wait_gone(st.pid, st.pid_start, Duration::from_secs(10));
    }
    if let Some(m) = st.monitor_pid {
        // The monitor exits once it has reaped the init.
        if let Some(t) = state::process_start_time(m) {
            wait_gone(m, t, Duration::from_secs(2));
        }
    }
    if let Some(cg) = &st.cgroup {
        cg.destroy();
    }
    state::remove(&ctx.root, id);
    Ok(())
}

fn list(ctx: &Ctx, format: &str, quiet: bool) -> Result<(), Fail> {
    let states: Vec<ContainerState> = state::list(&ctx.root)
        .into_iter()
        .filter_map(|id| state::load(&ctx.root, &id).ok())
        .collect();
    if quiet {
        for s in &states {
            println!("{}", s.id);
        }
        return Ok(());
    }
    match format {
        "json" => {
            let v: Vec<serde_json::Value> = states.iter().map(|s| s.oci_json()).collect();
            if v.is_empty() {
                println!("null");
            } else {
                println!("{}", serde_json::Value::Array(v));
            }
        }
        "text" | "table" => {
            println!(
                "{:<11} {:<11} {:<11} {:<11} {:<11} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            );
            for s in &states {
                let status = s.status();
                let pid = if status == "stopped" { 0 } else { s.pid };
                println!(
                    "{:<11} {:<11} {:<11} {:<11} {:<11} {}",
                    s.id,
                    pid,
                    status,
                    s.bundle.display(),
                    s.created,
                    s.owner
                );
            }
        }
        other => {
            return Err(Fail(
                EXIT_USAGE,
                format!("invalid --format {other:?}: use text or json"),
            ))
        }
    }
    Ok(())
}

fn ps(ctx: &Ctx, id: &str, format: &str) -> Result<(), Fail> {
    let st = state::load(&ctx.root, id)?;
    let mut pids = st.cgroup.as_ref().map(|c| c.pids()).unwrap_or_default();
    if pids.is_empty() && st.alive() {
        pids.push(st.pid);
    }
    pids.sort_unstable();
    if format == "json" {
        println!("{}", serde_json::to_string(&pids).expect("json"));
        return Ok(());
    }
    println!("{:<8} {:<8} {:<8} CMD", "UID", "PID", "PPID");
    for p in pids {
        let status = fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
                .unwrap_or_default()
        };
        let cmd = fs::read(format!("/proc/{p}/cmdline"))
            .map(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        println!(
            "{:<8} {:<8} {:<8} {}",
            field("Uid:"),
            p,
            field("PPid:"),
            cmd
        );
    }
    Ok(())
}

fn wait(ctx: &Ctx, id: &str) -> Result<(), Fail> {
    let st = state::load(&ctx.root, id)?;
    if st.pid > 0 {
        wait_gone(st.pid, st.pid_start, Duration::from_secs(u64::MAX / 4));
    }
    // The monitor records the status just after the init is reaped.
    let deadline = Instant::now() + Duration::from_secs(2);
    let code = loop {
        let s = state::load(&ctx.root, id)?;
        if let Some(c) = s.exit_code {
            break c;
        }
        if Instant::now() >= deadline {
            break 255;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    println!("{}", serde_json::json!({"id": id, "exitStatus": code}));
    Ok(())
}

fn events(ctx: &Ctx, id: &str, stats: bool, interval: u64) -> Result<(), Fail> {
    loop {
        let st = state::load(&ctx.root, id)?;
        let pids = st.cgroup.as_ref().map(|c| c.pids()).unwrap_or_default();
        let ev = serde_json::json!({
            "type": "stats",
            "id": id,
            "data": {
                "pids": {"current": pids.len()},
                "oom_killed": st.cgroup.as_ref().is_some_and(|c| c.oom_killed()),
            }
        });
        println!("{ev}");
        if stats || !st.alive() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(interval.max(1)));
    }
}

fn spec_cmd(
    _ctx: &Ctx,
    bundle: &Path,
    cwd: &str,
    netns: Option<String>,
    args: Vec<String>,
) -> Result<(), Fail> {
    let path = bundle.join("config.json");
    if path.exists() {
        return Err(fail(format!(
            "file {} exists: remove it first",
            path.display()
        )));
    }
    let mut spec = crate::spec::example_spec(false);
    if let Some(p) = spec.process_mut() {
        if !args.is_empty() {
            p.set_args(Some(args));
            p.set_terminal(Some(false));
        }
        p.set_cwd(PathBuf::from(cwd));
    }
    if let Some(ns_path) = netns {
        if let Some(linux) = spec.linux_mut() {
            let mut ns = linux.namespaces().clone().unwrap_or_default();
            ns.retain(|n| n.typ() != LinuxNamespaceType::Network);
            ns.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Network)
                    .path(ns_path)
                    .build()
                    .expect("ns"),
            );
            linux.set_namespaces(Some(ns));
        }
    }
    fs::write(&path, serde_json::to_vec_pretty(&spec).expect("json"))
        .map_err(|e| fail(format!("writing {}: {e}", path.display())))
}

fn do_cmd(
    ctx: &Ctx,
    cwd: Option<PathBuf>,
    force_overlay: bool,
    root: Option<PathBuf>,
    command: Vec<String>,
) -> Result<i32, Fail> {
    let root = root.unwrap_or_else(|| PathBuf::from("/"));
    let explicit_cwd = cwd.is_some();
    let cwd = cwd
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut step = crate::spec::StepSpec::new(&root, command);
    // The caller's own command on its own root, as `runsc do`: its ids.
    step.ids = None;
    step.cwd = cwd.to_string_lossy().into_owned();
    if !explicit_cwd {
        // The caller's directory may lie below a mount of the sandbox's own
        // (a fresh tmpfs /tmp): then start at the root rather than fail.
        let hidden = crate::spec::spec_for_step(&step)
            .mounts()
            .iter()
            .flatten()
            .any(|m| cwd.starts_with(m.destination()));
        if hidden {
            tracing::debug!(cwd = %cwd.display(), "the current directory is hidden by a sandbox mount; starting in /");
            step.cwd = "/".into();
        }
    }
    step.env = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
    step.network = if ctx.network == "host" {
        crate::spec::Network::Host
    } else {
        crate::spec::Network::None
    };
    step.limits = crate::spec::Limits {
        memory_bytes: None,
        pids: None,
        ..Default::default()
    };
    let mut spec = crate::spec::spec_for_step(&step);
    if force_overlay || ctx.overlay {
        // Writable through the overlay, as runsc's `do`.
        let mut r = spec.root().clone().unwrap_or_default();
        r.set_readonly(Some(false));
        spec.set_root(Some(r));
    }
    let id = format!("do-{}", std::process::id());
    let opts = StartOptions {
        id,
        state_root: ctx.root.clone(),
        bundle: root.clone(),
        ignore_cgroups: ctx.ignore_cgroups,
        stdio: Stdio::Inherit,
        die_with_parent: true,
        overlay: force_overlay || ctx.overlay,
        ..Default::default()
    };
    sandbox::forward_signals();
    let mut started = sandbox::start(&spec, &root, &opts)?;
    let outcome = started.wait(None);
    started.cleanup();
    Ok(outcome.exit_status())
}

/// `exec`: this (single-threaded) process joins the container's cgroup and
/// namespaces, then starts the process as a child, which lands in the
/// container's pid namespace.
fn exec(ctx: &Ctx, a: &ExecArgs) -> Result<i32, Fail> {
    let st = state::load(&ctx.root, &a.id)?;
    if st.status() != "running" {
        return Err(fail(format!(
            "container {} is {}, exec needs it running",
            a.id,
            st.status()
        )));
    }
    let (mut spec, _) = crate::spec::load_bundle(&st.bundle)?;
    if let Some(path) = &a.process {
        let text = fs::read_to_string(path)
            .map_err(|e| fail(format!("reading {}: {e}", path.display())))?;
        let process: oci_spec::runtime::Process = serde_json::from_str(&text)
            .map_err(|e| fail(format!("invalid {}: {e}", path.display())))?;
        spec.set_process(Some(process));
    }
    {
        let p = spec.process_mut().get_or_insert_with(Default::default);
        if a.process.is_none() {
            if a.command.is_empty() {
                return Err(Fail(EXIT_USAGE, "exec needs a command or --process".into()));
            }
            p.set_args(Some(a.command.clone()));
            p.set_terminal(Some(a.tty));
        }
        if !a.env.is_empty() {
            let mut env = p.env().clone().unwrap_or_default();
            for e in &a.env {
                let key = e.split('=').next().unwrap_or("");
                env.retain(|x| x.split('=').next() != Some(key));
                env.push(e.clone());
            }
            p.set_env(Some(env));
        }
        if let Some(cwd) = &a.cwd {
            p.set_cwd(PathBuf::from(cwd));
        }
        if let Some(u) = &a.user {
            let (uid, gid) = match u.split_once(':') {
                Some((u, g)) => (u.parse().ok(), g.parse().ok()),
                None => (u.parse().ok(), None),
            };
            let uid: u32 = uid
                .ok_or_else(|| Fail(EXIT_USAGE, format!("invalid --user {u:?}: use UID[:GID]")))?;
            let mut user = p.user().clone();
            user.set_uid(uid);
            user.set_gid(gid.unwrap_or(uid));
            p.set_user(user);
        }
        if !a.additional_gids.is_empty() {
            let mut user = p.user().clone();
            user.set_additional_gids(Some(a.additional_gids.clone()));
            p.set_user(user);
        }
        if !a.cap.is_empty() {
            tracing::debug!("exec --cap: capabilities are the container's");
        }
    }
    let plan = crate::runtime::Plan::for_exec(&spec, &st.rootfs)?;
    let console = match &a.console_socket {
        Some(p) => Some(connect_console(p)?),
        None => None,
    };
    // Join: cgroup first (from the host view), then the namespaces, user
    // first, mount last, pid for the children to come.
    if let Some(cg) = &st.cgroup {
        cg.add(std::process::id() as i32)?;
    }
    let pid = st.pid;
    let mut fds = Vec::new();
    for (name, flag) in [
        ("user", libc::CLONE_NEWUSER),
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("pid", libc::CLONE_NEWPID),
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("mnt", libc::CLONE_NEWNS),
    ] {
        let theirs = fs::metadata(format!("/proc/{pid}/ns/{name}"));
        let ours = fs::metadata(format!("/proc/self/ns/{name}"));
        use std::os::unix::fs::MetadataExt;
        if let (Ok(t), Ok(o)) = (&theirs, &ours) {
            if t.ino() == o.ino() && t.dev() == o.dev() {
                continue;
            }
        }
        let f = fs::File::open(format!("/proc/{pid}/ns/{name}"))
            .map_err(|e| fail(format!("opening /proc/{pid}/ns/{name}: {e}")))?;
        fds.push((name, flag, f));
    }
    for (name, flag, f) in &fds {
        // SAFETY: setns on an open namespace descriptor.
        if unsafe { libc::setns(f.as_raw_fd(), *flag) } != 0 {
            return Err(fail(format!(
                "joining the {name} namespace of container {}: {}",
                a.id,
                std::io::Error::last_os_error()
            )));
        }
    }
    drop(fds);
    let io = crate::runtime::ChildIo {
        console: console.as_ref().map(|c| c.as_raw_fd()),
        ..Default::default()
    };
    let child = crate::runtime::launch(&plan, &io, None)?;
    drop(console);
    if let Some(p) = &a.pid_file {
        write_pid_file(p, child.pid)?;
    }
    if let Some(p) = &a.internal_pid_file {
        // The pid inside the container: the last NSpid field.
        let status = fs::read_to_string(format!("/proc/{}/status", child.pid)).unwrap_or_default();
        let inner = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|v| v.split_whitespace().last().map(str::to_string))
            .unwrap_or_else(|| child.pid.to_string());
        fs::write(p, inner).map_err(|e| fail(format!("writing {}: {e}", p.display())))?;
    }
    if a.detach {
        return Ok(0);
    }
    let mut status = 0;
    // SAFETY: waitpid on our own child.
    unsafe { libc::waitpid(child.pid, &mut status, 0) };
    let (code, signal) = sandbox::decode(status);
    Ok(code.or(signal.map(|s| 128 + s)).unwrap_or(255))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(args: &[&str]) -> Vec<String> {
        normalize(args.iter().map(OsString::from).collect())
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn go_style_flags_are_normalized() {
        assert_eq!(
            n(&[
                "runsc",
                "-root",
                "/r",
                "-debug",
                "-network=none",
                "run",
                "-bundle",
                "b",
                "id"
            ]),
            [
                "runsc",
                "--root",
                "/r",
                "--debug",
                "--network=none",
                "run",
                "--bundle",
                "b",
                "id"
            ]
        );
    }

    #[test]
    fn exec_command_is_left_alone() {
        assert_eq!(
            n(&["runsc", "exec", "-cwd", "/", "id", "ls", "-la"]),
            ["runsc", "exec", "--cwd", "/", "id", "ls", "-la"]
        );
    }

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("KILL").ok(), Some(9));
        assert_eq!(parse_signal("SIGTERM").ok(), Some(15));
        assert_eq!(parse_signal("2").ok(), Some(2));
    }
}
