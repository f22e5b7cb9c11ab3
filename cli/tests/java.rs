//! The Java plugin end to end, as a user runs it: a real registry, the
//! `java` base image (Debian's JRE) built from Debian packages, real Maven
//! in ftl's sandbox on the host's toolchain (the base has no JDK), offline
//! through settings that mirror every repository to Debian's
//! /usr/share/maven-repo.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ftl_test_support::rig::{app_layers, copy_tree, Rig};

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| Rig::start(env!("CARGO_BIN_EXE_ftl"), &["java"]).expect("test rig starts"))
}

fn testdata(app: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/java").join(app)
}

/// The offline Maven settings and the host toolchain.
fn maven_flags() -> Vec<String> {
    vec![
        "--set".into(),
        format!("java.maven_settings={}", testdata("settings-offline.xml").display()),
        "--set".into(),
        "java.builder=host".into(),
    ]
}

/// A private copy of a testdata app, to edit.
fn copy_app(app: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join(app);
    copy_tree(&testdata(app), &dest).unwrap();
    (tmp, dest)
}

fn built(report: &serde_json::Value) -> Vec<String> {
    app_layers(report).into_iter().filter(|l| l.2 == "built").map(|l| l.0).collect()
}

fn uploaded(report: &serde_json::Value) -> Vec<String> {
    app_layers(report).into_iter().filter(|l| l.3 == "uploaded").map(|l| l.0).collect()
}

fn digests(report: &serde_json::Value) -> Vec<(String, String)> {
    app_layers(report).into_iter().map(|l| (l.0, l.1)).collect()
}

fn flags<'a>(owned: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = owned.iter().map(String::as_str).collect();
    v.extend_from_slice(extra);
    v
}

#[test]
fn maven_app_builds_verifies_and_rebuilds_incrementally() {
    let rig = rig();
    let cache = tempfile::tempdir().unwrap();
    let (_tmp, app) = copy_app("hello-maven");
    let image = rig.image("java/hello:e2e");
    let base = rig.base("java");
    let mf = maven_flags();

    // Cold: Maven runs in the sandbox, every layer built and pushed, and
    // the app answers HTTP 200 on the JRE base in the sandbox.
    let cold = rig.build(cache.path(), &app, &base, &image, &flags(&mf, &["--verify"])).report();
    assert_eq!(cold["verify"]["status"], 200, "{cold:#}");
    let names: Vec<String> = app_layers(&cold).into_iter().map(|l| l.0).collect();
    assert_eq!(names, ["java: dependencies", "java: resources", "java: classes"]);
    assert_eq!(built(&cold), names, "a cold build builds every layer");

    // Unchanged: nothing built, nothing uploaded, same digest.
    let noop = rig.build(cache.path(), &app, &base, &image, &flags(&mf, &[])).report();
    assert_eq!(noop["digest"], cold["digest"]);
    assert_eq!(noop["layers_built"], 0);
    assert_eq!(noop["bytes_uploaded"], 0);

    // One changed class: only the classes layer is built and pushed.
    let file = app.join("src/main/java/com/example/hello/Greeting.java");
    let src = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, src.replace("\" from ftl\\n\"", "\" from ftl, changed\\n\"")).unwrap();
    let change = rig.build(cache.path(), &app, &base, &image, &flags(&mf, &["--verify"])).report();
    assert_eq!(change["verify"]["status"], 200);
    assert_eq!(built(&change), ["java: classes"], "{change:#}");
    assert_eq!(uploaded(&change), ["java: classes"], "{change:#}");
    assert_ne!(change["digest"], cold["digest"]);
    let before = digests(&cold);
    for (name, digest) in digests(&change) {
        if name != "java: classes" {
            assert!(before.contains(&(name.clone(), digest)), "layer {name} changed");
        }
    }
}
