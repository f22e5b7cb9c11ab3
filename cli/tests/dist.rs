//! The static binary a release ships (`cargo xtask dist`, built by the same
//! code: `ftl_test_support::dist`) runs where nothing else is installed: a
//! root filesystem that holds only `/ftl`, no dynamic loader, no libc, no
//! `/etc`, run in ftl's own sandbox by that same binary (`ftl runsc`).
//!
//! The binary is built once by cargo (release profile, musl or glibc
//! `crt-static`) into this workspace's target directory and reused while
//! the source is unchanged.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use ftl_test_support::dist::{self, StaticFtl, Toolchain};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `.../target/debug/ftl` -> `.../target`.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ftl"))
        .ancestors()
        .nth(2)
        .expect("the binary lives in <target>/<profile>/")
        .to_path_buf()
}

/// The static binary, or `None` (said on stderr) when no static toolchain
/// can be installed here: neither the musl target nor glibc's `libc.a`.
fn static_ftl() -> Option<&'static StaticFtl> {
    static BUILT: OnceLock<Option<StaticFtl>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Toolchain::GlibcStatic(why) = dist::toolchain() {
                if !Path::new("/usr/lib/x86_64-linux-gnu/libc.a").is_file() {
                    eprintln!(
                        "SKIPPED: no static toolchain: {why}, and glibc's libc.a is \
                         missing (apt-get install libc6-dev)"
                    );
                    return None;
                }
            }
            Some(dist::build_static_ftl(&root(), &target_dir()).expect("the static ftl builds"))
        })
        .as_ref()
}

/// Runs `/ftl ARGS` in a bundle whose rootfs holds only the binary, with
/// the static binary itself as the runtime.
fn run_alone(ftl: &Path, args: &[&str]) -> Output {
    run_alone_with(ftl, ftl, args)
}

/// [`run_alone`] with `binary` as `/ftl` and `ftl` as the runtime.
fn run_alone_with(ftl: &Path, binary: &Path, args: &[&str]) -> Output {
    let dir = tempfile::Builder::new()
        .prefix("ftl-static-")
        .tempdir()
        .unwrap();
    let bundle = dir.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    // `cp`, not a descriptor of this process: another test thread's child
    // would inherit it open for writing, and the exec would fail (ETXTBSY).
    let st = Command::new("cp")
        .arg(binary)
        .arg(rootfs.join("ftl"))
        .status()
        .unwrap();
    assert!(st.success());
    let listing: Vec<String> = std::fs::read_dir(&rootfs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        listing,
        ["ftl"],
        "the rootfs holds the binary and nothing else"
    );

    let spec = Command::new(ftl)
        .args(["runsc", "spec", "--bundle"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(spec.status.success(), "{spec:?}");
    let config = bundle.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    let mut argv = vec!["/ftl"];
    argv.extend_from_slice(args);
    v["process"]["args"] = serde_json::json!(argv);
    v["process"]["terminal"] = false.into();
    std::fs::write(&config, serde_json::to_vec_pretty(&v).unwrap()).unwrap();

    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("static-{}-{n}", std::process::id());
    let out = Command::new(ftl)
        .arg("runsc")
        .arg("--root")
        .arg(dir.path().join("state"))
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    out
}

#[test]
fn the_static_binary_needs_no_loader_and_no_library() {
    let Some(ftl) = static_ftl() else { return };
    assert_eq!(
        dist::elf_interpreter(&ftl.path).unwrap(),
        None,
        "{} names a dynamic loader",
        ftl.path.display()
    );
    // The check itself tells the two kinds apart: the test binary is dynamic.
    assert!(dist::elf_interpreter(Path::new(env!("CARGO_BIN_EXE_ftl")))
        .unwrap()
        .is_some());

    let version = run_alone(&ftl.path, &["--version"]);
    assert!(
        version.status.success(),
        "ftl --version on an empty rootfs: {version:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("ftl {}", env!("CARGO_PKG_VERSION"))
    );

    let help = run_alone(&ftl.path, &["build", "--help"]);
    assert!(
        help.status.success(),
        "ftl build --help on an empty rootfs: {help:?}"
    );
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in ["--base", "--image", "--verify"] {
        assert!(text.contains(flag), "build --help lacks {flag}:\n{text}");
    }
}

/// The same empty rootfs stops a dynamic binary: the test above proves
/// something only because nothing there could load one.
#[test]
fn a_dynamic_binary_does_not_start_on_the_empty_rootfs() {
    let Some(ftl) = static_ftl() else { return };
    let dir = tempfile::Builder::new()
        .prefix("ftl-dynamic-")
        .tempdir()
        .unwrap();
    let dynamic = dir.path().join("ftl");
    let st = Command::new("cp")
        .arg(env!("CARGO_BIN_EXE_ftl"))
        .arg(&dynamic)
        .status()
        .unwrap();
    assert!(st.success());
    // The static runtime starts the dynamic binary in the container.
    let out = run_alone_with(&ftl.path, &dynamic, &["--version"]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No such file or directory"), "{err}");
}

// ---- the GitHub Action's setup mode ----------------------------------------

fn action_step(id: &str) -> String {
    let text =
        std::fs::read_to_string(root().join("integrations/github-action/action.yml")).unwrap();
    let action: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    action["runs"]["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|st| st["id"] == id)
        .and_then(|st| st["run"].as_str())
        .unwrap_or_else(|| panic!("the action has a step {id} with a script"))
        .to_string()
}

struct Setup {
    status: std::process::ExitStatus,
    stderr: String,
    github_path: String,
    urls: String,
}

/// Runs the action's setup script as a runner would, with `curl` answering
/// from `assets` (a release's files) and logging the URLs asked for.
fn run_setup(tmp: &Path, assets: &Path) -> Setup {
    let fake = tmp.join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    let curl = fake.join("curl");
    std::fs::write(
        &curl,
        r#"#!/bin/sh
while [ $# -gt 0 ]; do
  case $1 in -o) out=$2; shift 2 ;; --retry) shift 2 ;; -*) shift ;; *) url=$1; shift ;; esac
done
echo "$url" >> "$FAKE_CURL_LOG"
cp "$ASSETS/${url##*/}" "$out"
"#,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&curl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap());
    for f in ["github_path", "github_output", "curl.log"] {
        std::fs::write(tmp.join(f), "").unwrap();
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(action_step("setup"))
        .env("PATH", path)
        .env("FTL_VERSION", env!("CARGO_PKG_VERSION"))
        .env("FTL_REPOSITORY", "ftl-build/ftl")
        .env("RUNNER_TOOL_CACHE", tmp.join("toolcache"))
        .env("RUNNER_TEMP", tmp)
        .env("GITHUB_PATH", tmp.join("github_path"))
        .env("GITHUB_OUTPUT", tmp.join("github_output"))
        .env("FAKE_CURL_LOG", tmp.join("curl.log"))
        .env("ASSETS", assets)
        .output()
        .unwrap();
    Setup {
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        github_path: std::fs::read_to_string(tmp.join("github_path")).unwrap(),
        urls: std::fs::read_to_string(tmp.join("curl.log")).unwrap(),
    }
}

#[test]
fn the_actions_setup_mode_installs_the_checked_release_binary() {
    let Some(ftl) = static_ftl() else { return };
    let version = env!("CARGO_PKG_VERSION");
    let name = dist::binary_asset_name(version);
    let tmp = tempfile::tempdir().unwrap();
    let assets = tmp.path().join("assets");
    std::fs::create_dir_all(&assets).unwrap();
    let st = Command::new("cp")
        .arg(&ftl.path)
        .arg(assets.join(&name))
        .status()
        .unwrap();
    assert!(st.success());
    use sha2::Digest;
    let sum = hex::encode(sha2::Sha256::digest(
        std::fs::read(assets.join(&name)).unwrap(),
    ));
    // The other lines of a SHA256SUMS do not matter.
    std::fs::write(
        assets.join("SHA256SUMS"),
        format!("{}  ftl-other\n{sum}  {name}\n", "0".repeat(64)),
    )
    .unwrap();

    let ok = run_setup(&tmp.path().join("ok"), &assets);
    assert!(ok.status.success(), "{}", ok.stderr);
    let base = format!("https://github.com/ftl-build/ftl/releases/download/v{version}");
    assert_eq!(ok.urls, format!("{base}/{name}\n{base}/SHA256SUMS\n"));
    let bin_dir = PathBuf::from(ok.github_path.trim());
    let out = Command::new(bin_dir.join("ftl"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ftl {version}")
    );

    // A binary that is not the one the checksums name is not installed.
    std::fs::write(
        assets.join("SHA256SUMS"),
        format!("{}  {name}\n", "0".repeat(64)),
    )
    .unwrap();
    let bad = run_setup(&tmp.path().join("bad"), &assets);
    assert!(!bad.status.success());
    assert!(bad.stderr.contains("did NOT match"), "{}", bad.stderr);
    assert_eq!(bad.github_path, "", "nothing went on PATH");
}
