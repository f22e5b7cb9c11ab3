//! `cargo xtask dist`: what a release publishes, into `target/dist/`.
//!
//! ```text
//! target/dist/
//!   ftl-VERSION-x86_64-linux   the static binary (musl, or glibc crt-static)
//!   SHA256SUMS                 its sha256, as `sha256sum -c` reads it
//!   ftl-image/                 the builder image, an OCI layout (tag VERSION)
//!   ftl-image.digest           its manifest digest (sha256:...)
//! ```
//!
//! The builder image is ftl built by ftl: the static binary packages itself
//! onto the `builder` base (Debian bookworm minbase with what the sandbox
//! runs: slirp4netns, mkfs.ext4), served by a local registry, and verifies
//! it by running `ftl --version` in its sandbox. `.github/workflows/release.yml`
//! pushes the layout as it is (same digest) and uploads the rest.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use ftl_test_support::dist::{binary_asset_name, build_static_ftl, builder_image_args};
use ftl_test_support::rig::Rig;
use sha2::{Digest, Sha256};

use crate::{ensure_deps, root, run};

/// The release version: the workspace's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_relative() { root().join(d) } else { d })
        .unwrap_or_else(|| root().join("target"))
}

pub fn main(args: &[String]) -> Result<()> {
    let mut image = true;
    for a in args {
        match a.as_str() {
            "--no-image" => image = false,
            other => bail!("usage: cargo xtask dist [--no-image] (unknown argument {other:?})"),
        }
    }
    if image {
        // The registry, skopeo and debootstrap for the builder base; gcc
        // and musl-tools for the binary.
        ensure_deps()?;
    }
    let target_dir = target_dir();
    let built = build_static_ftl(&root(), &target_dir)?;
    let dist = target_dir.join("dist");
    if dist.exists() {
        std::fs::remove_dir_all(&dist).with_context(|| format!("removing {}", dist.display()))?;
    }
    std::fs::create_dir_all(&dist)?;

    let name = binary_asset_name(VERSION);
    let binary = dist.join(&name);
    // Symbols only: the binary keeps working the same, at half the size.
    run(Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&binary)
        .arg(&built.path))?;
    let sum = sha256_file(&binary)?;
    std::fs::write(dist.join("SHA256SUMS"), format!("{sum}  {name}\n"))?;
    eprintln!(
        "==> {} ({}, {} bytes, sha256 {sum})",
        binary.display(),
        built.target,
        std::fs::metadata(&binary)?.len()
    );

    if image {
        let digest = builder_image(&binary, &dist)?;
        std::fs::write(dist.join("ftl-image.digest"), &digest)?;
        eprintln!(
            "==> {} (tag {VERSION}, {digest})",
            dist.join("ftl-image").display()
        );
    }
    Ok(())
}

/// Packages `binary` as the builder image into `dist/ftl-image` and
/// returns its manifest digest.
fn builder_image(binary: &Path, dist: &Path) -> Result<String> {
    eprintln!("==> the builder image: ftl builds itself onto the builder base (Debian packages; a few minutes the first time)");
    let ctx = tempfile::Builder::new().prefix("ftl-dist-").tempdir()?;
    std::fs::copy(binary, ctx.path().join("ftl"))?;
    let rig = Rig::start(binary, &["builder"])?;
    let cache = tempfile::Builder::new()
        .prefix("ftl-dist-cache-")
        .tempdir()?;
    let layout = format!("oci:{}:{VERSION}", dist.join("ftl-image").display());
    let args = builder_image_args(
        ctx.path(),
        &rig.base("builder"),
        VERSION,
        &["--output", &layout],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = rig.ftl(cache.path(), &args);
    if run.status != 0 {
        bail!("building the builder image failed:\n{}", run.stderr);
    }
    let report: serde_json::Value =
        serde_json::from_str(&run.stdout).context("the build's --json report")?;
    if report["verify"]["exit_code"] != 0 {
        bail!("`ftl --version` in the builder image failed: {report}");
    }
    report["digest"]
        .as_str()
        .map(str::to_string)
        .context("the report names no digest")
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}
