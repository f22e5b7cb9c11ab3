//! What a release ships, defined once for `cargo xtask dist` and the tests
//! that check it: the static `ftl` binary (how it is built, and the check
//! that it needs no dynamic loader) and the `ftl build` command line that
//! packages it as the builder image.
//!
//! The static binary is linked against musl (`x86_64-unknown-linux-musl`,
//! with `musl-gcc` of Debian's musl-tools for the C parts: SQLite and ring).
//! Where that Rust target cannot be installed, glibc is linked statically
//! (`-C target-feature=+crt-static`) instead. Both go through cargo, into the
//! workspace's target directory, so a second call costs a freshness check.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The Rust target of the static binary.
pub const MUSL: &str = "x86_64-unknown-linux-musl";
/// The fallback: glibc, linked statically.
pub const GNU_STATIC: &str = "x86_64-unknown-linux-gnu";

/// Where the builder image puts the binary (on `PATH` in the base).
pub const BUILDER_BIN_DIR: &str = "/usr/local/bin";

/// A built static binary.
#[derive(Debug, Clone)]
pub struct StaticFtl {
    pub path: PathBuf,
    /// The Rust target it was built for ([`MUSL`] or [`GNU_STATIC`]).
    pub target: &'static str,
}

/// How the static binary can be linked on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Toolchain {
    Musl,
    /// glibc with `crt-static`; the reason musl could not be used.
    GlibcStatic(String),
}

/// Picks the toolchain: musl when its Rust standard library is installed
/// (or `rustup target add` installs it) and `musl-gcc` is present; glibc
/// with `crt-static` otherwise (its static `libc.a` comes with libc6-dev).
pub fn toolchain() -> Toolchain {
    let musl_std = has_target(MUSL) || {
        // Quietly: the caller reports the outcome.
        let added = Command::new("rustup")
            .args(["target", "add", MUSL])
            .output()
            .is_ok_and(|o| o.status.success());
        added && has_target(MUSL)
    };
    if !musl_std {
        return Toolchain::GlibcStatic(format!(
            "the Rust target {MUSL} is not installed and `rustup target add {MUSL}` failed"
        ));
    }
    if !on_path("musl-gcc") {
        return Toolchain::GlibcStatic(
            "musl-gcc is not installed (apt-get install musl-tools)".into(),
        );
    }
    Toolchain::Musl
}

fn rustc() -> PathBuf {
    std::env::var_os("RUSTC")
        .map(PathBuf::from)
        .unwrap_or_else(|| "rustc".into())
}

fn cargo() -> PathBuf {
    std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| "cargo".into())
}

/// Whether the standard library of `target` is installed.
fn has_target(target: &str) -> bool {
    let Ok(out) = Command::new(rustc())
        .args(["--print", "target-libdir", "--target", target])
        .output()
    else {
        return false;
    };
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    out.status.success()
        && std::fs::read_dir(&dir).is_ok_and(|mut d| {
            d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
        })
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Builds `ftl` statically (release profile) from `workspace` into
/// `target_dir` and checks that it needs no dynamic loader. Cargo decides
/// what is stale: an unchanged tree costs a second.
pub fn build_static_ftl(workspace: &Path, target_dir: &Path) -> Result<StaticFtl> {
    let target = match toolchain() {
        Toolchain::Musl => MUSL,
        Toolchain::GlibcStatic(why) => {
            eprintln!("static ftl: glibc with crt-static, since {why}");
            GNU_STATIC
        }
    };
    let mut cmd = Command::new(cargo());
    // What cargo sets for the process that runs this (a test, `cargo run`
    // of xtask) is no setting of this build: ring's build script watches
    // CARGO_MANIFEST_DIR, so a test and `cargo xtask dist` would each
    // rebuild from ring on up after the other.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if CARGO_RUN_VARS.contains(&key.as_ref())
            || key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_EXE_")
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.current_dir(workspace)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "ftl-cli",
            "--bin",
            "ftl",
        ])
        .args(["--target", target])
        .arg("--target-dir")
        .arg(target_dir);
    if target == GNU_STATIC {
        // With --target, these flags reach the target's crates only, not
        // build scripts and proc macros.
        cmd.env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        );
    }
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    let path = target_dir.join(target).join("release/ftl");
    if let Some(interp) = elf_interpreter(&path)? {
        bail!(
            "{} is not static: it asks for the dynamic loader {interp}",
            path.display()
        );
    }
    Ok(StaticFtl { path, target })
}

/// What cargo sets in the environment of a binary it runs (besides the
/// `CARGO_PKG_*` and `CARGO_BIN_EXE_*` families).
const CARGO_RUN_VARS: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

/// The `PT_INTERP` of an x86-64 ELF executable (its dynamic loader), or
/// `None` for a static one: the kernel runs that directly, with no loader
/// and no shared library.
pub fn elf_interpreter(path: &Path) -> Result<Option<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    // ELF, 64-bit, little-endian.
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        bail!("{} is not a 64-bit little-endian ELF file", path.display());
    }
    let malformed = || anyhow::anyhow!("{} has malformed ELF headers", path.display());
    let phoff = u64_at(0x20).ok_or_else(malformed)? as usize;
    let phentsize = u16_at(0x36).ok_or_else(malformed)? as usize;
    let phnum = u16_at(0x38).ok_or_else(malformed)? as usize;
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph).ok_or_else(malformed)? != PT_INTERP {
            continue;
        }
        let offset = u64_at(ph + 8).ok_or_else(malformed)? as usize;
        let size = u64_at(ph + 32).ok_or_else(malformed)? as usize;
        let name = bytes.get(offset..offset + size).ok_or_else(malformed)?;
        let name = String::from_utf8_lossy(name)
            .trim_end_matches('\0')
            .to_string();
        return Ok(Some(name));
    }
    Ok(None)
}

/// The release asset of the binary: `ftl-VERSION-x86_64-linux` (what
/// `cargo xtask dist` writes and the GitHub Action's setup mode fetches).
pub fn binary_asset_name(version: &str) -> String {
    format!("ftl-{version}-x86_64-linux")
}

/// The `ftl build` arguments that package the binary in `context` (a
/// directory holding only `ftl`) as the builder image on `base`, written
/// where `output` says (`["--image", REF]` or `["--output", "oci:DIR:TAG"]`):
/// `/usr/local/bin/ftl`, entrypoint `ftl`, verified by running
/// `ftl --version` in the sandbox before anything is written.
pub fn builder_image_args(
    context: &Path,
    base: &str,
    version: &str,
    output: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "build".into(),
        context.to_string_lossy().into_owned(),
        "--base".into(),
        base.into(),
    ];
    args.extend(output.iter().map(|s| s.to_string()));
    args.extend(
        [
            "--language",
            "generic",
            "--app-dir",
            BUILDER_BIN_DIR,
            "--entrypoint",
            "ftl",
            "--cmd=--help",
            "--label",
            "org.opencontainers.image.title=ftl",
            "--label",
        ]
        .map(String::from),
    );
    args.push(format!("org.opencontainers.image.version={version}"));
    args.extend(
        [
            "--verify-cmd",
            &format!("{BUILDER_BIN_DIR}/ftl --version"),
            "--json",
        ]
        .map(String::from),
    );
    args
}
