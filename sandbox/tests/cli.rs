//! ftl's runsc command line alone: list, ps, events, kill --all, delete
//! --force, and that delete leaves nothing behind.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{spec_running, unique_id, Fixture};

fn cli(fx: &Fixture, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ftl-sandbox"))
        .arg("--root")
        .arg(&fx.state)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn list_ps_events_kill_all_delete() {
    let fx = Fixture::new();
    let spec = spec_running(&["sh", "-c", "sleep 100 & sleep 100 & wait"]);
    let id = unique_id("cli");
    let b = fx.bundle(&id, &spec);
    let st = Command::new(env!("CARGO_BIN_EXE_ftl-sandbox"))
        .arg("--root")
        .arg(&fx.state)
        .args(["run", "-d", "-bundle", b.to_str().unwrap(), &id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    // Both sleeps started: polled, not slept on (a loaded machine is slow).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ps = cli(&fx, &["ps", "--format", "json", &id]);
        let pids: Vec<i32> = serde_json::from_slice(&ps.stdout).unwrap_or_default();
        if pids.len() == 3 || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let list = cli(&fx, &["list", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v[0]["id"], id.as_str());
    assert_eq!(v[0]["status"], "running");
    let quiet = cli(&fx, &["list", "-q"]);
    assert_eq!(String::from_utf8_lossy(&quiet.stdout), format!("{id}\n"));

    let ps = cli(&fx, &["ps", "--format", "json", &id]);
    let pids: Vec<i32> = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(pids.len(), 3, "{pids:?}");

    let ev = cli(&fx, &["events", "--stats", &id]);
    let v: serde_json::Value = serde_json::from_slice(&ev.stdout).unwrap();
    assert_eq!(v["data"]["pids"]["current"], 3);

    // Deleting a running container needs --force.
    let del = cli(&fx, &["delete", &id]);
    assert_eq!(del.status.code(), Some(128));
    assert!(String::from_utf8_lossy(&del.stderr).contains("--force"));

    let kill = cli(&fx, &["kill", "--all", &id, "KILL"]);
    assert!(kill.status.success(), "{kill:?}");
    for p in &pids {
        let mut gone = false;
        for _ in 0..3000 {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z") {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(gone, "process {p} survived kill --all");
    }
    let del = cli(&fx, &["delete", "--force", &id]);
    assert!(del.status.success(), "{del:?}");
    assert_eq!(
        std::fs::read_dir(&fx.state).unwrap().count(),
        0,
        "state left"
    );
    assert!(
        !std::path::Path::new(&format!("/sys/fs/cgroup/pids/ftl-{id}")).exists(),
        "cgroup left"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(fx.rootfs.to_str().unwrap()),
        "mount left on the host"
    );
}

#[test]
fn usage_errors_exit_2() {
    let fx = Fixture::new();
    let out = cli(&fx, &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = cli(&fx, &["--network=bogus", "run", "x"]);
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn unknown_runsc_flags_are_accepted() {
    let fx = Fixture::new();
    let out = cli(
        &fx,
        &[
            "--platform=ptrace",
            "--debug",
            "--strace",
            "-alsologtostderr",
            "list",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("accepted for runsc compatibility"),
        "{out:?}"
    );
}

#[test]
fn overlay_keeps_the_rootfs_unchanged() {
    let fx = Fixture::new();
    let mut spec = spec_running(&[
        "sh",
        "-c",
        "echo x > /etc/written && cat /etc/written && rm /bin/echo && echo removed",
    ]);
    let mut root = spec.root().clone().unwrap();
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    let id = unique_id("ovl");
    let b = fx.bundle(&id, &spec);
    let out = cli(
        &fx,
        &["--overlay", "run", "--bundle", b.to_str().unwrap(), &id],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "x\nremoved\n");
    assert!(!fx.rootfs.join("etc/written").exists());
    assert!(fx.rootfs.join("bin/echo").symlink_metadata().is_ok());
    assert_eq!(
        std::fs::read_dir(&fx.state).unwrap().count(),
        0,
        "state left"
    );
}

#[test]
fn do_runs_over_the_host_root() {
    let fx = Fixture::new();
    let marker = format!("/etc/ftl-do-{}", std::process::id());
    let out = cli(
        &fx,
        &[
            "do",
            "sh",
            "-c",
            &format!("cat /etc/hostname >/dev/null && echo hi > {marker} && cat {marker} && id -u"),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n0\n");
    assert!(
        !std::path::Path::new(&marker).exists(),
        "do wrote to the host"
    );
}

/// `start` of a process that exits at once: the monitor records the exit
/// while `start` records `running`. Neither write may be lost (a lost
/// `stopped` makes `wait` report 255) nor fail (two writers once renamed
/// each other's temporary state file away, and `start` failed). Four
/// threads race at once, which is what exposed it on a loaded machine.
#[test]
fn start_and_an_immediate_exit_both_reach_the_state() {
    let fx = Fixture::new();
    let spec = spec_running(&["sh", "-c", "exit 7"]);
    let b = fx.bundle("exits-at-once", &spec);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for round in 0..15 {
                    create_start_wait_delete(&fx, &b, round);
                }
            });
        }
    });
    assert_eq!(std::fs::read_dir(&fx.state).unwrap().count(), 0);
}

fn create_start_wait_delete(fx: &Fixture, bundle: &std::path::Path, round: u32) {
    let id = unique_id("race");
    // The container's stdio is create's: not a pipe `output` waits on.
    let created = Command::new(env!("CARGO_BIN_EXE_ftl-sandbox"))
        .arg("--root")
        .arg(&fx.state)
        .args(["create", "--bundle", bundle.to_str().unwrap(), &id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(created.success(), "round {round} create");
    let started = cli(fx, &["start", &id]);
    assert!(
        started.status.success(),
        "round {round} start: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let waited = cli(fx, &["wait", &id]);
    let v: serde_json::Value = serde_json::from_slice(&waited.stdout).unwrap_or_else(|e| {
        panic!(
            "round {round} wait: {e}: {}",
            String::from_utf8_lossy(&waited.stderr)
        )
    });
    assert_eq!(v["exitStatus"], 7, "round {round}: the exit was lost");
    let deleted = cli(fx, &["delete", &id]);
    assert!(deleted.status.success(), "round {round} delete");
}
