//! User namespaces: root with a uid map, and an unprivileged caller.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{unique_id, Fixture};

fn spec(script: &str) -> serde_json::Value {
    serde_json::to_value(common::spec_running(&["sh", "-c", script])).unwrap()
}

fn write_bundle(fx: &Fixture, v: &serde_json::Value) -> std::path::PathBuf {
    let b = fx.dir.path().join(unique_id("ub"));
    std::fs::create_dir_all(&b).unwrap();
    let mut v = v.clone();
    v["root"]["path"] = fx.rootfs.to_string_lossy().into_owned().into();
    std::fs::write(b.join("config.json"), v.to_string()).unwrap();
    std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o755)).unwrap();
    b
}

#[test]
fn root_with_uid_map() {
    let fx = Fixture::new();
    let mut v = spec("id -u; cat /proc/self/uid_map | tr -s ' '; stat -c %u /bin/busybox");
    v["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "user"}));
    v["linux"]["uidMappings"] =
        serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    v["linux"]["gidMappings"] =
        serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    let b = write_bundle(&fx, &v);
    let out = Command::new(env!("CARGO_BIN_EXE_ftl-sandbox"))
        .arg("--root")
        .arg(&fx.state)
        .args(["run", "--bundle", b.to_str().unwrap(), &unique_id("uns")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Files of host root are unmapped: they show as the overflow uid.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0\n 0 100000 65536\n65534\n"
    );
}

#[test]
fn unprivileged_caller_with_rootless() {
    if !common::is_root() {
        return;
    }
    let Some(setpriv) = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        panic!("setpriv is not installed: apt-get install -y util-linux");
    };
    let fx = Fixture::new();
    std::fs::set_permissions(fx.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = fx.dir.path().join("nobody-state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let b = write_bundle(
        &fx,
        &spec("id -u; cat /proc/self/uid_map | tr -s ' '; touch /tmp/x && echo tmp-ok"),
    );
    std::fs::set_permissions(
        b.join("config.json"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_ftl-sandbox"))
        .arg("--root")
        .arg(state.join("s"))
        .args([
            "--rootless",
            "run",
            "--bundle",
            b.to_str().unwrap(),
            &unique_id("nobody"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0\n 0 65534 1\ntmp-ok\n"
    );
    // No cgroups for nobody: a warning says limits fall back to rlimits.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rlimits"),
        "{out:?}"
    );
}
