//! Project tasks: `cargo xtask demo` (the main job, end to end),
//! `cargo xtask test` (the whole test suite, as CI runs it),
//! `cargo xtask dist` (the release: static binary, builder image, checksums)
//! and `cargo xtask bench ...` (the benchmarks, printing numbers).

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod dist;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use ftl_test_support::rig::Rig;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn ensure_deps() -> Result<()> {
    run(Command::new("bash").arg(root().join("scripts/ensure-deps.sh")))
}

/// Builds the ftl binary (release) and returns its path.
fn build_ftl() -> Result<PathBuf> {
    run(Command::new(env!("CARGO")).current_dir(root()).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "ftl-cli",
    ]))?;
    Ok(root().join("target/release/ftl"))
}

fn demo(args: &[String]) -> Result<()> {
    let app = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("testdata/python/flask"));
    ensure_deps()?;
    let ftl = build_ftl()?;
    eprintln!("==> starting a local registry and pushing the python base image (built from Debian packages on first use; a few minutes once)");
    let rig = Rig::start(&ftl, &["python"])?;
    let base = rig.base("python");
    let image = rig.image("demo/app:latest");
    let cache = std::env::var_os("FTL_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/demo-cache"));
    eprintln!(
        "==> ftl build {} --base {base} --image {image} --verify",
        app.display()
    );
    let status = Command::new(&ftl)
        .args([
            "build",
            app.to_str().context("utf-8 path")?,
            "--base",
            &base,
            "--image",
            &image,
            "--verify",
        ])
        .env("FTL_CACHE_DIR", &cache)
        .status()?;
    if !status.success() {
        bail!("the demo build failed");
    }
    eprintln!("==> again, unchanged: a manifest check");
    let status = Command::new(&ftl)
        .args([
            "build",
            app.to_str().context("utf-8 path")?,
            "--base",
            &base,
            "--image",
            &image,
        ])
        .env("FTL_CACHE_DIR", &cache)
        .status()?;
    if !status.success() {
        bail!("the demo rebuild failed");
    }
    run(Command::new(&ftl).args(["inspect", &image]))?;
    eprintln!("==> done; the registry stops now");
    Ok(())
}

/// Prints the OCI layout directory of a test base image, building it first
/// if this machine has not (for scripts: one definition of the cache).
fn base_image(args: &[String]) -> Result<()> {
    let name = args.first().context("usage: cargo xtask base-image NAME")?;
    let dir = ftl_test_support::base_images::ensure_base_image(name)?;
    println!("{}", dir.display());
    Ok(())
}

fn test() -> Result<()> {
    ensure_deps()?;
    let cargo = env!("CARGO");
    run(Command::new(cargo)
        .current_dir(root())
        .args(["fmt", "--all", "--", "--check"]))?;
    run(Command::new(cargo).current_dir(root()).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ]))?;
    let suite = run(Command::new(cargo).current_dir(root()).args([
        "test",
        "--workspace",
        "--no-fail-fast",
    ]));
    let as_user = containment_as_user();
    suite.and(as_user)
}

/// As root, runs the sandbox's containment tests once more as an
/// unprivileged user (`nobody`, no capabilities): ftl's steps must hold
/// there too. The test binary and the probe's source are copied to a
/// directory that user can read, whatever the checkout's permissions.
fn containment_as_user() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("containment tests: ran as this user only (not root)");
        return Ok(());
    }
    let out = Command::new(env!("CARGO"))
        .current_dir(root())
        .args([
            "test",
            "-p",
            "ftl-sandbox",
            "--test",
            "containment",
            "--no-run",
            "--message-format=json",
        ])
        .output()
        .context("cannot build the containment tests")?;
    if !out.status.success() {
        bail!("building the containment tests failed");
    }
    let binary = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "containment")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo named no containment test binary")?;
    let dir = tempfile::Builder::new()
        .prefix("ftl-containment-as-user-")
        .tempdir()?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777))?;
    let bin = dir.path().join("containment");
    std::fs::copy(&binary, &bin).with_context(|| format!("cannot copy {}", binary.display()))?;
    let probe = dir.path().join("probe.c");
    std::fs::copy(root().join("sandbox/tests/probe/probe.c"), &probe)?;
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o644))?;
    eprintln!("containment tests as an unprivileged user (nobody):");
    run(Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
            "env",
        ])
        .arg(format!("HOME={}", dir.path().display()))
        .arg(format!("TMPDIR={}", dir.path().display()))
        .arg(format!("FTL_TEST_PROBE_C={}", probe.display()))
        .arg(&bin)
        .current_dir(dir.path()))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(&args[1..]),
        Some("test") => test(),
        Some("containment-as-user") => containment_as_user(),
        Some("bench") => bench::main(&args[1..]),
        Some("base-image") => base_image(&args[1..]),
        Some("dist") => dist::main(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask demo [APP_DIR] | test | dist [--no-image] | containment-as-user | bench [layers|push|noop|python|node|all]"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
