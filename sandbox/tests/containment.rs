//! Each test is an attempt to get out of, or past the limits of, the
//! sandbox; each must fail from inside.

mod common;

use std::time::Duration;

use common::{unique_id, Fixture};
use ftl_sandbox::{spec_for_step, Limits, Outcome, RunRequest, Sandbox, StepSpec};

fn run_with(fx: &Fixture, script: &str, f: impl FnOnce(&mut StepSpec)) -> Outcome {
    let mut step = StepSpec::new(&fx.rootfs, ["sh", "-c", script]);
    f(&mut step);
    let spec = spec_for_step(&step);
    let req = RunRequest::from_spec(unique_id("contain"), &fx.rootfs, spec)
        .with_state_root(&fx.state)
        .with_timeout(Duration::from_secs(30));
    let out = Sandbox::default().run(&req).unwrap();
    assert!(
        std::fs::read_dir(&fx.state).map(|d| d.count()).unwrap_or(0) == 0,
        "state left behind"
    );
    out
}

fn run(fx: &Fixture, script: &str) -> Outcome {
    run_with(fx, script, |_| {})
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn cannot_read_host_files() {
    let fx = Fixture::new();
    let marker = fx.dir.path().join("host-secret");
    std::fs::write(&marker, "secret").unwrap();
    let out = run(
        &fx,
        &format!(
            "cat {} /etc/shadow; cat /proc/1/root/etc/hostname",
            marker.display()
        ),
    );
    assert!(!text(&out.stdout).contains("secret"), "{out:?}");
    assert_ne!(out.code, Some(0));
}

#[test]
fn cannot_see_host_processes() {
    let fx = Fixture::new();
    let out = run(
        &fx,
        "ls /proc | grep -E '^[0-9]+$' | wc -l; cat /proc/1/cmdline",
    );
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    let count: usize = lines[0].trim().parse().unwrap();
    assert!(count <= 4, "sees {count} processes: {out:?}");
    // Process 1 is the container's own (busybox sh execs its last command).
    assert!(lines[1].starts_with("cat"), "{out:?}");
}

#[test]
fn cannot_reach_host_loopback_with_network_none() {
    let fx = Fixture::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = run(&fx, &format!("ip link show lo | grep -c UP; nc -w 2 127.0.0.1 {port} </dev/null && echo CONNECTED; ip -o link | wc -l"));
    let t = text(&out.stdout);
    assert!(!t.contains("CONNECTED"), "{out:?}");
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("1"),
        "loopback must be up: {out:?}"
    );
    assert_eq!(lines.last().copied(), Some("1"), "only loopback: {out:?}");
}

#[test]
fn cannot_mount() {
    let fx = Fixture::new();
    let out = run(
        &fx,
        "mount -t tmpfs x /tmp 2>&1; mount --bind /bin /tmp; echo rc=$?",
    );
    assert!(
        text(&out.stdout).contains("rc=1") || text(&out.stdout).contains("rc=255"),
        "{out:?}"
    );
    assert!(
        text(&out.stdout).contains("not permitted") || text(&out.stdout).contains("denied"),
        "{out:?}"
    );
}

#[test]
fn cannot_ptrace() {
    let fx = Fixture::new();
    // busybox has no strace; ptrace is refused by seccomp: use the
    // process_vm_readv-style probe of /proc/PID/mem instead, and unshare.
    let out = run(&fx, "sleep 10 & p=$!; cat /proc/$p/mem >/dev/null 2>&1 && echo READ; unshare -U true 2>&1; echo rc=$?; kill $p");
    assert!(!text(&out.stdout).contains("READ"), "{out:?}");
    assert!(text(&out.stdout).contains("rc=1"), "{out:?}");
}

#[test]
fn cannot_load_kernel_module() {
    let fx = Fixture::new();
    std::fs::write(fx.rootfs.join("root/x.ko"), b"\x7fELFnot-a-module").unwrap();
    let out = run(&fx, "insmod /root/x.ko 2>&1; echo rc=$?");
    let t = text(&out.stdout);
    assert!(t.contains("not permitted") || t.contains("rc=1"), "{out:?}");
    assert!(!t.contains("rc=0"), "{out:?}");
}

#[test]
fn cannot_raise_rlimit() {
    let fx = Fixture::new();
    let out = run(
        &fx,
        "ulimit -Hn; ulimit -n $(( $(ulimit -Hn) + 1 )) 2>&1; echo rc=$?",
    );
    assert!(!text(&out.stdout).contains("rc=0"), "{out:?}");
}

#[test]
fn cannot_write_read_only_root() {
    let fx = Fixture::new();
    let out = run(
        &fx,
        "touch /bin/x 2>&1; echo rc=$?; touch /tmp/ok && echo tmp-ok",
    );
    let t = text(&out.stdout);
    assert!(t.contains("Read-only file system"), "{out:?}");
    assert!(t.contains("tmp-ok"), "{out:?}");
    assert!(!fx.rootfs.join("bin/x").exists());
}

#[test]
fn fork_bomb_is_stopped_by_pids_limit() {
    let fx = Fixture::new();
    let out = run_with(
        &fx,
        "i=0; while [ $i -lt 200 ]; do sleep 5 & i=$((i+1)); done 2>/dev/null; echo started $(jobs -p | wc -l)",
        |s| {
            s.limits = Limits {
                pids: Some(32),
                ..Limits::default()
            }
        },
    );
    let t = text(&out.stdout) + &text(&out.stderr);
    assert!(!t.contains("started 200"), "{out:?}");
}

#[test]
fn memory_bomb_is_stopped_and_reported() {
    let fx = Fixture::new();
    let out = run_with(&fx, "x=y; while true; do x=$x$x; done", |s| {
        s.limits = Limits {
            memory_bytes: Some(32 << 20),
            ..Limits::default()
        }
    });
    assert!(out.oom_killed, "{out:?}");
    assert_eq!(out.signal, Some(9), "{out:?}");
}

#[test]
fn sigterm_ignoring_process_is_killed_at_timeout() {
    let fx = Fixture::new();
    let step = StepSpec::new(
        &fx.rootfs,
        ["sh", "-c", "trap '' TERM INT; while true; do sleep 1; done"],
    );
    let req = RunRequest::from_spec(unique_id("term"), &fx.rootfs, spec_for_step(&step))
        .with_state_root(&fx.state)
        .with_timeout(Duration::from_millis(500));
    let out = Sandbox::default().run(&req).unwrap();
    assert!(out.timed_out);
    assert!(out.duration < Duration::from_secs(3));
}

#[test]
fn background_process_is_killed_at_exit() {
    let fx = Fixture::new();
    let marker = format!("ftl-bg-{}", std::process::id());
    let out = run(
        &fx,
        &format!("sleep 1000 {marker} >/dev/null 2>&1 & echo bg"),
    );
    assert_eq!(out.stdout, b"bg\n");
    std::thread::sleep(Duration::from_millis(100));
    let ps = std::process::Command::new("ps")
        .arg("-eo")
        .arg("args")
        .output()
        .unwrap();
    assert!(
        !text(&ps.stdout).contains(&marker),
        "background process survived"
    );
}
