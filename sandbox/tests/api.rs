//! The library API as the build engine uses it.

mod common;

use std::time::Duration;

use common::{unique_id, Fixture};
use ftl_sandbox::{spec_for_step, RunRequest, Sandbox, StepSpec};

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
