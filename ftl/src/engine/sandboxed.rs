//! [`StepRuntime`] on ftl's sandbox (embedded, or an external OCI runtime
//! such as runsc).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ftl_sandbox::{
    spec_for_step, BindMount, ExternalRuntime, Network, RunRequest, Sandbox, Stack, Stdio, StepSpec,
};

use super::{
    AppProcess, CancelFlag, EngineError, StepRuntime, Stopped, VerifyReport, VerifySpec, STOP_GRACE,
};
use crate::plugin::{ExecOutput, ExecRequest, PluginError, StepNetwork};

/// Build steps and verification on a [`Sandbox`].
pub struct SandboxRuntime {
    pub sandbox: Sandbox,
    /// Where container state lives.
    pub state_root: PathBuf,
    /// The runsc-compatible CLI that starts long-lived steps
    /// ([`StepRuntime::start_resident`]), which must outlive this process:
    /// the external runtime itself, or ftl's own binary as `runsc` for the
    /// embedded one. `None`: no long-lived steps.
    pub detached: Option<ExternalRuntime>,
    /// When ftl runs as root: the host ids the steps' root maps to
    /// (`--userns-range`, `--userns-user`; [`ftl_sandbox::IdRange::DEFAULT`]).
    pub ids: ftl_sandbox::IdRange,
    /// The limits of every step and verification (memory, tasks, the
    /// size of `/tmp`).
    pub limits: ftl_sandbox::Limits,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// How often a running step checks its build's cancellation.
const CANCEL_POLL: Duration = Duration::from_millis(50);

fn container_id(kind: &str) -> String {
    format!(
        "ftl-{kind}-{}-{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

fn tail(stdout: &[u8], stderr: &[u8], n: usize) -> String {
    ExecOutput {
        stdout: stdout.to_vec(),
        stderr: stderr.to_vec(),
        ..Default::default()
    }
    .tail(n)
}

/// Resolves `user` (`uid[:gid]` or a name from the rootfs's /etc/passwd).
fn resolve_user(rootfs: &Path, user: &str) -> (u32, u32) {
    let (u, g) = user
        .split_once(':')
        .map(|(u, g)| (u, Some(g)))
        .unwrap_or((user, None));
    // Read on the host: beneath the rootfs and without following a link
    // the image left there (to a host file, or to /dev/zero).
    let passwd = crate::beneath::Dir::open(rootfs)
        .and_then(|d| d.read(Path::new("etc/passwd")))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lookup = |name: &str| -> Option<(u32, u32)> {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == name)
                .then(|| (f[2].parse().ok(), f[3].parse().ok()))
                .and_then(|(a, b)| Some((a?, b?)))
        })
    };
    let (uid, mut gid) = u
        .parse::<u32>()
        .map(|n| (n, n))
        .ok()
        .or_else(|| lookup(u))
        .unwrap_or((0, 0));
    if let Some(g) = g.and_then(|g| g.parse().ok()) {
        gid = g;
    }
    (uid, gid)
}

impl SandboxRuntime {
    /// The spec of a build step.
    fn step_spec(&self, rootfs: &Path, request: &ExecRequest) -> oci_spec::runtime::Spec {
        let mut step = StepSpec::new(rootfs, request.args.clone());
        step.ids = Some(self.ids);
        step.limits = self.limits.clone();
        // The engine already merged the base env with the request's.
        step.env = request
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        step.cwd = request.cwd.clone();
        step.network = match (request.network, &self.sandbox) {
            (StepNetwork::None, _) => Network::None,
            (StepNetwork::Egress, Sandbox::Embedded) => Network::Egress(Stack::default()),
            // An external runtime cannot start ftl's network stack: it
            // gets the host's network, as it did before (runsc's own
            // netstack stands between the step and the host there).
            (StepNetwork::Egress, Sandbox::External(_)) => Network::Host,
        };
        step.egress_allow = request.egress_allow.clone();
        step.mounts = request
            .mounts
            .iter()
            .map(|m| BindMount {
                host: m.host.clone(),
                target: m.target.clone(),
                writable: m.writable,
            })
            .collect();
        let mut spec = spec_for_step(&step);
        // A root the runtime cannot read is its error to report.
        if premapped(rootfs, &self.ids).unwrap_or(false) {
            if let Some(a) = spec.annotations_mut() {
                a.remove(ftl_sandbox::ROOTFS_IDMAP);
            }
        }
        spec
    }
}

/// Whether `rootfs` is an overlay the engine made of idmapped layers
/// (the base's for steps, the image's for verification): it already reads
/// as owned by the step's root, so the runtime must not idmap it again
/// (overlayfs cannot be idmapped itself). Such a root is owned by the
/// step's root's host uid; a tree on disk is owned by host root.
fn premapped(rootfs: &Path, ids: &ftl_sandbox::IdRange) -> std::io::Result<bool> {
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(rootfs)?);
    Ok(ids.uid != 0 && uid == ids.uid)
}

impl StepRuntime for SandboxRuntime {
    fn id_range(&self) -> Option<ftl_sandbox::IdRange> {
        Some(self.ids)
    }

    fn run(
        &self,
        rootfs: &Path,
        request: &ExecRequest,
        cancel: &CancelFlag,
    ) -> Result<ExecOutput, PluginError> {
        let spec = self.step_spec(rootfs, request);
        let req = RunRequest::from_spec(container_id("step"), rootfs, spec)
            .with_timeout(request.timeout)
            .with_stdio(Stdio::Capture)
            .with_state_root(&self.state_root)
            .dying_with_parent();
        let could_not = |e: ftl_sandbox::SandboxError| {
            PluginError::new(format!(
                "`{}` could not start in the sandbox: {e}",
                request.label
            ))
        };
        let mut running = self.sandbox.spawn(&req).map_err(could_not)?;
        let outcome = running
            .wait_or_stop(Some(request.timeout), CANCEL_POLL, || cancel.is_cancelled())
            .map_err(could_not)?
            .ok_or_else(|| {
                PluginError::new(format!(
                    "`{}` was stopped: the build was cancelled",
                    request.label
                ))
            })?;
        Ok(ExecOutput {
            code: outcome.code,
            signal: outcome.signal,
            oom: outcome.oom_killed,
            timed_out: outcome.timed_out,
            stdout: outcome.stdout,
            stderr: outcome.stderr,
        })
    }

    fn start_resident(
        &self,
        rootfs: &Path,
        request: &ExecRequest,
        id: &str,
        log: &Path,
    ) -> Result<bool, PluginError> {
        let Some(cli) = &self.detached else {
            return Err(PluginError::new(format!(
                "`{}`: this sandbox cannot keep a step running between builds",
                request.label
            )));
        };
        let mut spec = self.step_spec(rootfs, request);
        let mut annotations = spec.annotations().clone().unwrap_or_default();
        annotations.insert(ftl_sandbox::REMOVE_ON_EXIT.into(), "true".into());
        spec.set_annotations(Some(annotations));
        let req = RunRequest::from_spec(id, rootfs, spec).with_state_root(&self.state_root);
        cli.start_detached(&req, log).map_err(|e| {
            PluginError::new(format!(
                "`{}` could not start in the sandbox: {e}",
                request.label
            ))
        })
    }

    fn verify(
        &self,
        rootfs: &Path,
        app: &AppProcess,
        check: &VerifySpec,
        cancel: &CancelFlag,
    ) -> Result<VerifyReport, EngineError> {
        let started = Instant::now();
        // The app runs in a network namespace of its own, loopback only,
        // and is probed from inside it: nothing of the image reaches the
        // host's network, and its port cannot clash with the host's.
        let embedded = matches!(self.sandbox, Sandbox::Embedded);
        let port = if embedded {
            app.port
        } else {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| {
                    EngineError::Internal(format!("no free loopback port for verification: {e}"))
                })?
        };
        let mut env: Vec<(String, String)> = app
            .env
            .iter()
            .filter(|(k, _)| k != "PORT")
            .cloned()
            .collect();
        env.push(("PORT".into(), port.to_string()));
        let mut step = StepSpec::new(rootfs, app.args.clone());
        step.env = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        step.cwd = app.cwd.clone();
        // An external runtime's init pid is not the runtime's process: it
        // keeps the host network and a free port there.
        step.network = if embedded {
            Network::None
        } else {
            Network::Host
        };
        step.ids = Some(self.ids);
        step.limits = self.limits.clone();
        if let Some(user) = &app.user {
            (step.uid, step.gid) = resolve_user(rootfs, user);
        }
        let mut spec = spec_for_step(&step);
        if premapped(rootfs, &self.ids)
            .map_err(|e| EngineError::Internal(format!("cannot read {}: {e}", rootfs.display())))?
        {
            if let Some(a) = spec.annotations_mut() {
                a.remove(ftl_sandbox::ROOTFS_IDMAP);
            }
        }
        if let Some(root) = spec.root_mut() {
            root.set_readonly(Some(false));
        }
        let req = RunRequest::from_spec(container_id("verify"), rootfs, spec)
            .with_timeout(check.timeout + Duration::from_secs(5))
            .with_stdio(Stdio::Capture)
            .with_state_root(&self.state_root)
            .dying_with_parent();

        if check.command.is_some() {
            let outcome = self
                .sandbox
                .spawn(&req)
                .and_then(|mut running| {
                    running.wait_or_stop(Some(check.timeout), CANCEL_POLL, || cancel.is_cancelled())
                })
                .map_err(|e| EngineError::Sandbox(e.to_string()))?
                .ok_or(EngineError::Cancelled)?;
            let output_tail = tail(&outcome.stdout, &outcome.stderr, 20);
            if !outcome.success() {
                return Err(EngineError::Verify {
                    message: format!(
                        "the verify command {:?} exited with {}{}",
                        app.args,
                        outcome.exit_status(),
                        if outcome.timed_out {
                            " (timed out)"
                        } else {
                            ""
                        }
                    ),
                    output: output_tail,
                });
            }
            return Ok(VerifyReport {
                mode: "command".into(),
                status: None,
                exit_code: outcome.code,
                stopped: None,
                stop_status: None,
                stop_millis: None,
                millis: started.elapsed().as_millis() as u64,
                output_tail,
            });
        }

        let mut running = self
            .sandbox
            .spawn(&req)
            .map_err(|e| EngineError::Sandbox(e.to_string()))?;
        let deadline = Instant::now() + check.timeout;
        loop {
            if cancel.is_cancelled() {
                // Killed and reaped, its state removed, before the caller
                // unmounts its root.
                let _ = running.stop(Duration::ZERO);
                return Err(EngineError::Cancelled);
            }
            let connect = |timeout| {
                let addr = ([127, 0, 0, 1], port).into();
                if embedded {
                    ftl_sandbox::connect_in_netns(running.pid(), addr, timeout)
                } else {
                    TcpStream::connect_timeout(&addr, timeout)
                }
            };
            if let Some(status) = connect(Duration::from_millis(200))
                .ok()
                .and_then(|s| http_status(s, &check.path))
            {
                // Stopped as a platform stops a container, and read to
                // its end: what a SIGTERM handler prints is in the tail.
                let millis = started.elapsed().as_millis() as u64;
                let stop = stop_app(running, STOP_GRACE)?;
                let output_tail = tail(&stop.outcome.stdout, &stop.outcome.stderr, 20);
                if status >= 500 {
                    return Err(EngineError::Verify {
                        message: format!("GET {} answered HTTP {status}", check.path),
                        output: output_tail,
                    });
                }
                tracing::debug!(stopped = ?stop.how, status = stop.outcome.exit_status(), "verify: the app stopped");
                return Ok(VerifyReport {
                    mode: "http".into(),
                    status: Some(status),
                    exit_code: None,
                    stopped: Some(stop.how),
                    stop_status: Some(stop.outcome.exit_status()),
                    stop_millis: Some(stop.millis),
                    millis,
                    output_tail,
                });
            }
            if let Ok(Some(outcome)) = running.wait_timeout(Duration::from_millis(0)) {
                return Err(EngineError::Verify {
                    message: format!(
                        "the app {:?} exited with {} before answering HTTP on $PORT ({port})",
                        app.args,
                        outcome.exit_status()
                    ),
                    output: tail(&outcome.stdout, &outcome.stderr, 20),
                });
            }
            if Instant::now() >= deadline {
                let (out, err) = running.logs();
                let _ = running.stop(Duration::from_secs(2));
                return Err(EngineError::Verify {
                    message: format!(
                        "the app {:?} did not answer HTTP on $PORT ({port}) within {:?}",
                        app.args, check.timeout
                    ),
                    output: tail(&out, &err, 20),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// How [`stop_app`] ended the app.
struct Stop {
    how: Stopped,
    /// From the SIGTERM to the exit (or the kill's reaping).
    millis: u64,
    outcome: ftl_sandbox::Outcome,
}

/// Stops the app as a platform stops a container: SIGTERM to its PID 1,
/// up to `grace` for it to exit, then SIGKILL to the whole tree. (A PID 1
/// gets a signal from outside its namespace only when it handles it: a
/// shell left as PID 1, or an app without a handler, is killed.)
fn stop_app(mut running: ftl_sandbox::Running, grace: Duration) -> Result<Stop, EngineError> {
    let sandbox = |e: ftl_sandbox::SandboxError| EngineError::Sandbox(e.to_string());
    if let Some(outcome) = running.wait_timeout(Duration::ZERO).map_err(sandbox)? {
        return Ok(Stop {
            how: Stopped::Exited,
            millis: 0,
            outcome,
        });
    }
    let t = Instant::now();
    if let Err(e) = running.signal(libc::SIGTERM) {
        tracing::debug!(error = %e, "verify: SIGTERM to the app");
    }
    if let Some(outcome) = running.wait_timeout(grace).map_err(sandbox)? {
        return Ok(Stop {
            how: Stopped::Sigterm,
            millis: t.elapsed().as_millis() as u64,
            outcome,
        });
    }
    running.kill();
    let outcome = running.wait().map_err(sandbox)?;
    Ok(Stop {
        how: Stopped::Killed,
        millis: t.elapsed().as_millis() as u64,
        outcome,
    })
}

/// One plain HTTP/1.0 GET on a connected stream; the status code, or
/// `None` if nothing answered.
fn http_status(mut s: TcpStream, path: &str) -> Option<u16> {
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: ftl-verify\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        let n = s.read(&mut buf[got..]).ok()?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let line = std::str::from_utf8(&buf[..got]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn an_image_user_is_not_looked_up_through_a_link_to_a_host_file() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host-passwd");
        std::fs::write(&host, "app:x:4242:4343::/:/bin/sh\n").unwrap();
        let rootfs = tmp.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::os::unix::fs::symlink(&host, rootfs.join("etc/passwd")).unwrap();
        assert_eq!(
            resolve_user(&rootfs, "app"),
            (0, 0),
            "the host file was read"
        );
        std::fs::remove_file(rootfs.join("etc/passwd")).unwrap();
        std::fs::copy(&host, rootfs.join("etc/passwd")).unwrap();
        assert_eq!(resolve_user(&rootfs, "app"), (4242, 4343));
        assert_eq!(resolve_user(&rootfs, "7:8"), (7, 8));
    }

    /// A busybox rootfs in `dir` (the sandbox's own tests use the same).
    fn busybox_rootfs(dir: &Path) -> PathBuf {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("busybox is not installed: apt-get install -y busybox-static");
        let rootfs = dir.join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        // With cp, never through a descriptor of this process: a container
        // another test thread starts meanwhile would inherit it open for
        // writing, and this test's exec would fail with ETXTBSY.
        let st = std::process::Command::new("cp")
            .arg(busybox)
            .arg(rootfs.join("bin/busybox"))
            .status()
            .unwrap();
        assert!(st.success());
        for applet in ["sh", "nc", "httpd", "mkdir", "echo", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        rootfs
    }

    fn verify(script: &str) -> (Result<VerifyReport, EngineError>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = busybox_rootfs(dir.path());
        let runtime = SandboxRuntime {
            sandbox: Sandbox::Embedded,
            state_root: dir.path().join("state"),
            detached: None,
            ids: ftl_sandbox::IdRange::DEFAULT,
            limits: Default::default(),
        };
        let app = AppProcess {
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), "/bin".into())],
            cwd: "/".into(),
            user: None,
            port: super::super::DEFAULT_PORT,
        };
        let check = VerifySpec {
            command: None,
            timeout: Duration::from_secs(20),
            path: "/".into(),
        };
        (
            runtime.verify(&rootfs, &app, &check, &CancelFlag::default()),
            dir,
        )
    }

    const SERVE: &str =
        "mkdir -p /tmp/www && echo ok > /tmp/www/index.html && exec httpd -f -h /tmp/www";

    #[test]
    fn verify_runs_without_the_host_network() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // The app reports the host's loopback by failing to start.
        let script = format!(
            "if nc -w 2 127.0.0.1 {port} </dev/null; then echo reached the host; exit 3; fi; {SERVE} -p $PORT"
        );
        let (report, _dir) = verify(&script);
        let report = report.expect("verifies without reaching the host");
        assert_eq!(report.status, Some(200), "{report:?}");
        listener.set_nonblocking(true).unwrap();
        assert!(
            listener.accept().is_err(),
            "the app reached the host's loopback"
        );
    }

    #[test]
    fn an_app_on_fixed_8080_verifies() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        // PORT is 8080 when the image declares no port: an app that ignores
        // it and listens on 8080 answers where the probe looks, and a host
        // service on 8080 (if any) is another namespace's.
        let (report, _dir) = verify(&format!("{SERVE} -p 8080"));
        assert_eq!(report.expect("verifies").status, Some(200));
    }

    /// Verification stops the app with SIGTERM and says whether its PID 1
    /// exited on it: a shell that traps it does, within the grace period,
    /// and what its handler printed is in the output.
    #[test]
    fn an_app_that_handles_sigterm_is_reported_stopped_by_it() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let (report, _dir) = verify(
            "trap 'echo got SIGTERM; exit 0' TERM; mkdir -p /tmp/www && echo ok > /tmp/www/index.html \
             && httpd -h /tmp/www -p $PORT; while :; do sleep 1; done",
        );
        let report = report.expect("verifies");
        assert_eq!(report.status, Some(200), "{report:?}");
        assert_eq!(report.stopped, Some(Stopped::Sigterm), "{report:?}");
        assert_eq!(report.stop_status, Some(0), "{report:?}");
        assert!(report.output_tail.contains("got SIGTERM"), "{report:?}");
        assert!(report.stop_millis.unwrap() < STOP_GRACE.as_millis() as u64);
        assert_eq!(report.warning(), None);
    }

    /// A PID 1 without a SIGTERM handler never gets the signal from
    /// outside its namespace (as under Docker or Kubernetes): it is killed
    /// after the grace period, and the build warns.
    #[test]
    fn an_app_that_ignores_sigterm_is_reported_killed() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let (report, _dir) = verify(&format!("{SERVE} -p $PORT"));
        let report = report.expect("verifies");
        assert_eq!(report.stopped, Some(Stopped::Killed), "{report:?}");
        assert_eq!(report.stop_status, Some(128 + libc::SIGKILL), "{report:?}");
        assert!(report.stop_millis.unwrap() >= STOP_GRACE.as_millis() as u64);
        let warning = report.warning().expect("a warning");
        assert!(warning.contains("was killed"), "{warning}");
    }
}
