//! Driving an external OCI runtime binary (runsc, runc, crun) with the same
//! requests as the embedded runtime: a bundle is written (when the request
//! holds a spec in memory) and `RUNTIME run --bundle DIR ID` is started.

use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as PStdio};
use std::time::{Duration, Instant};

use crate::error::SandboxError;
use crate::sandbox::{Outcome, RunRequest, Running, Source, Stdio};

/// An external OCI runtime.
#[derive(Debug, Clone)]
pub struct ExternalRuntime {
    /// `runsc`, `runc`, `crun`, or a path.
    pub binary: PathBuf,
    /// Global flags put before the command (e.g. `--platform=ptrace`).
    pub global_args: Vec<String>,
    /// The name the binary is started under (`runsc` makes the ftl binary
    /// its runsc-compatible CLI).
    pub arg0: Option<String>,
}

impl ExternalRuntime {
    /// A runtime by name or path. For runsc, `--platform=ptrace` is added
    /// (its kvm platform is not usable everywhere) and `--network` follows
    /// the spec (none with a network namespace, host without).
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        let binary = binary.into();
        let mut global_args = Vec::new();
        if is_runsc(&binary) {
            global_args.push("--platform=ptrace".into());
        }
        ExternalRuntime {
            binary,
            global_args,
            arg0: None,
        }
    }

    /// The embedded runtime's own CLI: this executable started as `runsc`
    /// (the ftl binary is runsc-compatible under that name).
    pub fn this_executable_as_runsc() -> std::io::Result<Self> {
        Ok(ExternalRuntime {
            binary: std::env::current_exe()?,
            global_args: Vec::new(),
            arg0: Some("runsc".into()),
        })
    }

    fn name(&self) -> String {
        self.binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.binary.display().to_string())
    }

    fn err(&self, message: impl Into<String>) -> SandboxError {
        SandboxError::External {
            runtime: self.binary.display().to_string(),
            message: message.into(),
        }
    }

    fn root(&self, req: &RunRequest) -> PathBuf {
        req.state_root.join(format!("ext-{}", self.name()))
    }

    fn command(&self, req: &RunRequest, network_host: bool) -> Command {
        let mut c = Command::new(&self.binary);
        if let Some(a) = &self.arg0 {
            std::os::unix::process::CommandExt::arg0(&mut c, a);
        }
        c.arg("--root").arg(self.root(req));
        c.args(&self.global_args);
        if is_runsc(&self.binary) && !self.global_args.iter().any(|a| a.starts_with("--network")) {
            c.arg(if network_host {
                "--network=host"
            } else {
                "--network=none"
            });
        }
        c
    }

    /// Writes the bundle when the request holds a spec; returns the bundle
    /// directory and whether it is ours to remove.
    fn bundle(&self, req: &RunRequest) -> Result<(PathBuf, bool, bool), SandboxError> {
        let (spec, rootfs, _) = req.resolve()?;
        let host_net = !spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| {
                ns.iter()
                    .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
            });
        match &req.source {
            Source::Bundle(b) => Ok((b.clone(), false, host_net)),
            Source::Rootfs { spec, .. } => {
                let dir = req.state_root.join(format!("bundle-{}", req.id));
                std::fs::create_dir_all(&dir).map_err(|source| SandboxError::State {
                    path: dir.clone(),
                    source,
                })?;
                let mut spec = (**spec).clone();
                let root = oci_spec::runtime::RootBuilder::default()
                    .path(std::fs::canonicalize(&rootfs).unwrap_or(rootfs))
                    .readonly(
                        spec.root()
                            .as_ref()
                            .and_then(|r| r.readonly())
                            .unwrap_or(false),
                    )
                    .build()
                    .expect("valid root");
                spec.set_root(Some(root));
                let path = dir.join("config.json");
                std::fs::write(
                    &path,
                    serde_json::to_vec_pretty(&spec).expect("spec serializes"),
                )
                .map_err(|source| SandboxError::State { path, source })?;
                Ok((dir, true, host_net))
            }
        }
    }

    fn delete(&self, req: &RunRequest, host: bool) {
        let _ = self
            .command(req, host)
            .args(["delete", "--force", &req.id])
            .stdin(PStdio::null())
            .stdout(PStdio::null())
            .stderr(PStdio::null())
            .status();
    }

    fn start(
        &self,
        req: &RunRequest,
    ) -> Result<(ExternalRunning, Option<OwnedFd>, Option<OwnedFd>), SandboxError> {
        crate::state::check_id(&req.id)?;
        let (bundle, owned, host) = self.bundle(req)?;
        let mut cmd = self.command(req, host);
        cmd.arg("run").arg("--bundle").arg(&bundle).arg(&req.id);
        match req.stdio {
            Stdio::Inherit => {}
            Stdio::Null => {
                cmd.stdin(PStdio::null())
                    .stdout(PStdio::null())
                    .stderr(PStdio::null());
            }
            Stdio::Capture => {
                cmd.stdin(PStdio::null())
                    .stdout(PStdio::piped())
                    .stderr(PStdio::piped());
            }
        }
        tracing::debug!(command = ?cmd, "starting external runtime");
        let mut child = cmd
            .spawn()
            .map_err(|e| self.err(format!("cannot start {}: {e}", self.binary.display())))?;
        let out = child.stdout.take().map(OwnedFd::from);
        let err = child.stderr.take().map(OwnedFd::from);
        Ok((
            ExternalRunning {
                runtime: self.clone(),
                req: req.clone(),
                child,
                bundle: owned.then_some(bundle),
                host,
                started: Instant::now(),
            },
            out,
            err,
        ))
    }

    /// Runs a container to completion.
    pub fn run(&self, req: &RunRequest) -> Result<Outcome, SandboxError> {
        let t0 = Instant::now();
        let mut running = self.spawn(req)?;
        let outcome = match req.timeout {
            Some(t) => match running.wait_timeout(t)? {
                Some(o) => o,
                None => {
                    running.kill();
                    let mut o = running.wait()?;
                    o.timed_out = true;
                    o
                }
            },
            None => running.wait()?,
        };
        Ok(Outcome {
            duration: t0.elapsed(),
            ..outcome
        })
    }

    /// The OCI status of container `req.id` (`created`, `running`,
    /// `stopped`), or `None` when the runtime does not know it.
    pub fn status(&self, req: &RunRequest) -> Option<String> {
        let out = self
            .command(req, false)
            .args(["state", &req.id])
            .stdin(PStdio::null())
            .stderr(PStdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.get("status")?.as_str().map(str::to_string)
    }

    /// Starts a container that outlives this process (`run --detach`): a
    /// long-lived service the caller reaches through a mounted directory.
    /// Its stdout and stderr go to `log`. Returns `false` when a container
    /// of that id is already running (it is left alone); a stopped one is
    /// deleted first. Nothing times it out: it must end itself.
    pub fn start_detached(&self, req: &RunRequest, log: &Path) -> Result<bool, SandboxError> {
        crate::state::check_id(&req.id)?;
        match self.status(req).as_deref() {
            Some("running") | Some("created") => return Ok(false),
            Some(_) => self.delete(req, false),
            None => {}
        }
        let (bundle, _, host) = self.bundle(req)?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| SandboxError::State {
                path: log.to_path_buf(),
                source,
            })?;
        let err_file = log_file.try_clone().map_err(|source| SandboxError::State {
            path: log.to_path_buf(),
            source,
        })?;
        let mut cmd = self.command(req, host);
        cmd.args(["run", "--detach", "--bundle"])
            .arg(&bundle)
            .arg(&req.id)
            .stdin(PStdio::null())
            .stdout(log_file)
            .stderr(err_file);
        tracing::debug!(command = ?cmd, "starting a detached container");
        let status = cmd
            .status()
            .map_err(|e| self.err(format!("cannot start {}: {e}", self.binary.display())))?;
        if !status.success() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            return Err(self.err(format!(
                "run --detach {} failed ({status}): {}",
                req.id,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        Ok(true)
    }

    /// Starts a container; see [`Running`].
    pub fn spawn(&self, req: &RunRequest) -> Result<Running, SandboxError> {
        let (ext, out, err) = self.start(req)?;
        Ok(Running::external(ext, out, err))
    }
}

fn is_runsc(p: &Path) -> bool {
    p.file_name().is_some_and(|n| n == "runsc")
}

/// The host side of a container run by an external runtime.
#[derive(Debug)]
pub(crate) struct ExternalRunning {
    runtime: ExternalRuntime,
    req: RunRequest,
    child: std::process::Child,
    bundle: Option<PathBuf>,
    host: bool,
    started: Instant,
}

impl ExternalRunning {
    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub(crate) fn signal(&self, signal: i32) -> Result<(), SandboxError> {
        let status = self
            .runtime
            .command(&self.req, self.host)
            .args(["kill", &self.req.id, &signal.to_string()])
            .stdin(PStdio::null())
            .stdout(PStdio::null())
            .stderr(PStdio::null())
            .status()
            .map_err(|e| self.runtime.err(format!("kill: {e}")))?;
        if !status.success() {
            return Err(self
                .runtime
                .err(format!("kill {} {signal} failed: {status}", self.req.id)));
        }
        Ok(())
    }

    /// Waits for the runtime process; returns a wait status whose exit code
    /// is the container's (runtimes report a signal as 128 + n).
    pub(crate) fn wait_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<libc::c_int>, SandboxError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    let raw = match st.code() {
                        Some(c) if (129..=128 + 64).contains(&c) => c - 128,
                        Some(c) => c << 8,
                        None => st.signal().unwrap_or(9),
                    };
                    return Ok(Some(raw));
                }
                Ok(None) => {}
                Err(e) => return Err(self.runtime.err(format!("wait: {e}"))),
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub(crate) fn teardown(&self) {
        self.runtime.delete(&self.req, self.host);
        if let Some(b) = &self.bundle {
            let _ = std::fs::remove_dir_all(b);
        }
    }
}
