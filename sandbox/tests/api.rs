//! The library API as the build engine uses it.

mod common;

use std::time::Duration;

use common::{unique_id, Fixture};
use ftl_sandbox::{spec_for_step, RunRequest, Sandbox, Stdio, StepSpec};

fn step(fx: &Fixture, args: &[&str]) -> RunRequest {
    let spec = spec_for_step(&StepSpec::new(&fx.rootfs, args.iter().copied()));
    RunRequest::from_spec(unique_id("api"), &fx.rootfs, spec).with_state_root(&fx.state)
}

#[test]
fn echo_hi() {
    let fx = Fixture::new();
    let out = Sandbox::default().run(&step(&fx, &["echo", "hi"])).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.code, Some(0));
}

#[test]
fn exit_code_and_stderr() {
    let fx = Fixture::new();
    let out = Sandbox::default()
        .run(&step(&fx, &["sh", "-c", "echo oops >&2; exit 3"]))
        .unwrap();
    assert_eq!(out.stderr, b"oops\n");
    assert_eq!(out.code, Some(3));
}

#[test]
fn timeout_kills_the_tree() {
    let fx = Fixture::new();
    let req = step(&fx, &["sh", "-c", "trap '' TERM; sleep 100 & sleep 100"])
        .with_timeout(Duration::from_millis(300));
    let out = Sandbox::default().run(&req).unwrap();
    assert!(out.timed_out);
    assert_eq!(out.signal, Some(9));
    assert!(out.duration < Duration::from_secs(5));
}

/// A spawned step waited for with a timeout and a caller's stop: the
/// timeout kills it as `run`'s does; a stop kills and reaps it at once.
#[test]
fn wait_or_stop_honours_the_timeout_and_the_stop() {
    let fx = Fixture::new();
    let req = step(&fx, &["sh", "-c", "echo up; sleep 100"]).with_stdio(Stdio::Capture);
    let mut running = Sandbox::default().spawn(&req).unwrap();
    let out = running
        .wait_or_stop(
            Some(Duration::from_millis(300)),
            Duration::from_millis(50),
            || false,
        )
        .unwrap()
        .expect("not stopped");
    assert!(out.timed_out);
    assert_eq!(out.signal, Some(9));
    assert_eq!(out.stdout, b"up\n");
    assert!(out.duration < Duration::from_secs(5));

    let mut running = Sandbox::default()
        .spawn(&step(&fx, &["sleep", "100"]))
        .unwrap();
    let pid = running.pid();
    let asked = std::time::Instant::now();
    let stopped = running
        .wait_or_stop(None, Duration::from_millis(50), || {
            asked.elapsed() > Duration::from_millis(200)
        })
        .unwrap();
    assert!(stopped.is_none());
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the stopped step still runs"
    );
}

/// Verification of a built image: start a server, probe it from the host,
/// tear it down by dropping the handle.
#[test]
fn spawn_probe_and_drop() {
    use std::io::{Read, Write};
    let fx = Fixture::new();
    std::fs::create_dir_all(fx.rootfs.join("www")).unwrap();
    std::fs::write(fx.rootfs.join("www/index.html"), "hello from the sandbox\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut step = StepSpec::new(
        &fx.rootfs,
        [
            "httpd",
            "-f",
            "-v",
            "-p",
            &format!("127.0.0.1:{port}"),
            "-h",
            "/www",
        ],
    );
    step.network = ftl_sandbox::Network::Host;
    let spec = spec_for_step(&step);
    let req = RunRequest::from_spec(unique_id("srv"), &fx.rootfs, spec).with_state_root(&fx.state);
    let running = Sandbox::default().spawn(&req).unwrap();
    let pid = running.pid();
    let mut body = String::new();
    // Generous: a loaded machine starts the server slowly.
    for _ in 0..1500 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
            s.read_to_string(&mut body).unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(body.contains("hello from the sandbox"), "{body:?}");
    drop(running);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "server survived the drop"
    );
    assert_eq!(
        std::fs::read_dir(&fx.state).unwrap().count(),
        0,
        "state left behind"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn spawn_wait_and_logs() {
    let fx = Fixture::new();
    let mut running = Sandbox::default()
        .spawn(&step(
            &fx,
            &["sh", "-c", "echo one; sleep 0.2; echo two >&2; exit 5"],
        ))
        .unwrap();
    assert!(running
        .wait_timeout(Duration::from_millis(10))
        .unwrap()
        .is_none());
    let out = running
        .wait_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("exited");
    assert_eq!(out.code, Some(5));
    assert_eq!(out.stdout, b"one\n");
    assert_eq!(out.stderr, b"two\n");
}

/// The same request through the external-runtime driver
/// (`--sandbox-runtime runc|runsc`).
#[test]
fn external_runtimes_run_the_same_request() {
    let fx = Fixture::new();
    for name in ["runc", "runsc"] {
        common::require(name, name);
        let sandbox = Sandbox::from_name(name);
        let out = sandbox
            .run(
                &step(
                    &fx,
                    &["sh", "-c", "echo hi; echo err >&2; hostname; exit 4"],
                )
                .with_timeout(Duration::from_secs(60)),
            )
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hi\nftl\n",
            "{name}: {out:?}"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("err\n"),
            "{name}: {out:?}"
        );
        assert_eq!(out.code, Some(4), "{name}");
        let timed = sandbox
            .run(&step(&fx, &["sleep", "30"]).with_timeout(Duration::from_millis(500)))
            .unwrap();
        assert!(timed.timed_out, "{name}: {timed:?}");
        assert!(
            timed.duration < Duration::from_secs(20),
            "{name}: {timed:?}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(&fx.state)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| n.to_string_lossy().starts_with("ext-")),
        "{left:?}"
    );
}

/// A caller killed while its container ran leaves a state directory and a
/// cgroup; `state::gc` removes them.
#[test]
fn gc_removes_what_a_killed_caller_left() {
    let fx = Fixture::new();
    let spec = common::spec_running(&["sleep", "100"]);
    let id = unique_id("gc");
    let b = fx.bundle(&id, &spec);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ftl-sandbox"))
        .arg("--root")
        .arg(&fx.state)
        .args(["run", "--bundle", b.to_str().unwrap(), &id])
        .spawn()
        .unwrap();
    let cg = std::path::PathBuf::from(format!("/sys/fs/cgroup/pids/ftl-{id}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(cg.exists() && fx.state.join(&id).join("state.json").exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the container never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(fx.state.join(&id).exists());
    assert_eq!(ftl_sandbox::state::gc(&fx.state), vec![id.clone()]);
    assert!(!fx.state.join(&id).exists());
    assert!(!cg.exists(), "cgroup left");
}
