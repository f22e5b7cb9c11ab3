//! `ftl completion` and `ftl man`: generated from the clap definitions, so
//! they know every command and flag.

use std::process::Command;

fn ftl(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ftl"))
        .args(args)
        .output()
        .expect("ftl runs");
    assert!(
        out.status.success(),
        "ftl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn completion_scripts_know_the_commands_and_build_flags() {
    let bash = ftl(&["completion", "bash"]);
    assert!(bash.contains("complete -F _ftl"), "{bash}");
    for word in ["build", "inspect", "cache", "--verify-cmd", "--tag"] {
        assert!(bash.contains(word), "{word} in the bash script");
    }
    assert!(ftl(&["completion", "zsh"]).starts_with("#compdef ftl"));
    assert!(ftl(&["completion", "fish"]).contains("complete -c ftl"));
}

#[test]
fn man_pages_hold_every_command_and_the_build_flags() {
    let top = ftl(&["man"]);
    assert!(top.contains(".TH ftl 1"), "{top}");
    assert!(top.contains("ftl\\-build(1)"), "{top}");
    let build = ftl(&["man", "build"]);
    assert!(build.contains(".TH ftl-build 1"), "{build}");
    // roff escapes each dash.
    for flag in ["base", "image", "tag", "verify", "verify\\-cmd", "output"] {
        assert!(
            build.contains(&format!("\\fB\\-\\-{flag}\\fR")),
            "--{flag} in ftl-build(1)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    ftl(&["man", "--dir", dir.path().to_str().unwrap()]);
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for page in ["ftl.1", "ftl-build.1", "ftl-cache-gc.1", "ftl-cache-ls.1"] {
        assert!(pages.iter().any(|p| p == page), "{page} in {pages:?}");
    }
    let written = std::fs::read_to_string(dir.path().join("ftl-build.1")).unwrap();
    assert_eq!(written, build);
    let unknown = Command::new(env!("CARGO_BIN_EXE_ftl"))
        .args(["man", "bild"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("no subcommand `bild`") && err.contains("build"),
        "{err}"
    );
}

/// A usage error (a flag missing, a bad value) under `--json` is the JSON
/// error object on stdout too, with clap's exit code and text on stderr.
#[test]
fn a_usage_error_under_json_is_a_json_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_ftl"))
        .args(["build", ".", "--tag", "x", "--json"])
        .output()
        .expect("ftl runs");
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["schema"], 1);
    assert_eq!(v["error"]["kind"], "usage");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("--base") && message.contains("--image"),
        "{message}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage: ftl build"));
}
