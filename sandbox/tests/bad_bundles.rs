//! Bad bundles: a clear error naming the field, a non-zero exit, and
//! nothing left behind (no state directory, no cgroup).

mod common;

use std::path::Path;
use std::process::Command;

use common::{unique_id, Fixture};

fn cli(state: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ftl-sandbox"))
        .arg("--root")
        .arg(state)
        .args(args)
        .output()
        .unwrap()
}

fn good_config(fx: &Fixture) -> serde_json::Value {
    let mut spec = ftl_sandbox::example_spec(false);
    spec.process_mut()
        .as_mut()
        .unwrap()
        .set_terminal(Some(false));
    let mut v = serde_json::to_value(&spec).unwrap();
    v["root"]["path"] = fx.rootfs.to_string_lossy().into_owned().into();
    v
}

fn check(fx: &Fixture, config: Option<&str>, want: &str) {
    let id = unique_id("bad");
    let bundle = fx.dir.path().join(&id);
    std::fs::create_dir_all(&bundle).unwrap();
    if let Some(c) = config {
        std::fs::write(bundle.join("config.json"), c).unwrap();
    }
    for cmd in ["run", "create"] {
        let out = cli(&fx.state, &[cmd, "--bundle", bundle.to_str().unwrap(), &id]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(128), "{cmd}: {err}");
        assert!(err.contains(want), "{cmd}: {err:?} should name {want:?}");
        let left: Vec<_> = std::fs::read_dir(&fx.state)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{cmd}: state left behind: {left:?}");
        assert!(
            !Path::new(&format!("/sys/fs/cgroup/pids/ftl-{id}")).exists(),
            "cgroup left"
        );
    }
}

#[test]
fn missing_config_json() {
    let fx = Fixture::new();
    check(&fx, None, "config.json");
}

#[test]
fn invalid_json() {
    let fx = Fixture::new();
    check(&fx, Some("{\"ociVersion\": "), "not valid JSON");
}

#[test]
fn rootfs_missing() {
    let fx = Fixture::new();
    let mut v = good_config(&fx);
    v["root"]["path"] = "/nonexistent/rootfs".into();
    check(&fx, Some(&v.to_string()), "root.path");
}

#[test]
fn unknown_namespace_type() {
    let fx = Fixture::new();
    let mut v = good_config(&fx);
    v["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "bogus"}));
    check(&fx, Some(&v.to_string()), "linux.namespaces[");
}

#[test]
fn empty_args() {
    let fx = Fixture::new();
    let mut v = good_config(&fx);
    v["process"]["args"] = serde_json::json!([]);
    check(&fx, Some(&v.to_string()), "process.args");
}

#[test]
fn program_not_found() {
    let fx = Fixture::new();
    let mut v = good_config(&fx);
    v["process"]["args"] = serde_json::json!(["/no/such/program"]);
    check(&fx, Some(&v.to_string()), "/no/such/program");
}

#[test]
fn bind_source_missing() {
    let fx = Fixture::new();
    let mut v = good_config(&fx);
    v["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"destination": "/data", "type": "bind", "source": "/no/such/dir", "options": ["rbind"]}));
    check(&fx, Some(&v.to_string()), "mounts[");
}
