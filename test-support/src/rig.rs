//! The end-to-end rig: a real registry with the project's base images pushed
//! to it, and a way to run the `ftl` binary against it as a user would, each
//! run with its own local cache directory unless told otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

use crate::base_images::push_base_image;
use crate::registry::{Registry, RegistryOptions};

/// A registry with base images, and the ftl binary under test.
pub struct Rig {
    pub registry: Registry,
    pub ftl: PathBuf,
}

/// The outcome of one `ftl` run.
#[derive(Debug)]
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The JSON report on stdout (from `--json`), panicking with the run's
    /// output if the build failed.
    pub fn report(&self) -> serde_json::Value {
        assert_eq!(
            self.status, 0,
            "ftl failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not a JSON report ({e}):\n{}", self.stdout))
    }

    /// Asserts failure and returns stderr.
    pub fn error(&self) -> &str {
        assert_ne!(
            self.status, 0,
            "ftl succeeded but should have failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        &self.stderr
    }
}

impl Rig {
    /// Starts a plain registry and pushes the named base images to
    /// `base/<name>:latest`.
    pub fn start(ftl: impl Into<PathBuf>, bases: &[&str]) -> Result<Rig> {
        let registry = start_registry(RegistryOptions::plain())?;
        for name in bases {
            push_base_image(name, &registry.host(), &format!("base/{name}"))
                .with_context(|| format!("pushing base image {name}"))?;
        }
        Ok(Rig {
            registry,
            ftl: ftl.into(),
        })
    }

    /// `HOST/base/<name>:latest`.
    pub fn base(&self, name: &str) -> String {
        format!("{}/base/{name}:latest", self.registry.host())
    }

    /// `HOST/<repo>`.
    pub fn image(&self, repo: &str) -> String {
        format!("{}/{repo}", self.registry.host())
    }

    /// Runs `ftl ARGS` with `FTL_CACHE_DIR=cache_dir`.
    pub fn ftl(&self, cache_dir: &Path, args: &[&str]) -> Run {
        Run::from(
            self.command(cache_dir, args)
                .output()
                .expect("the ftl binary runs"),
        )
    }

    /// The command `ftl` would run, for callers that need to adjust it.
    pub fn command(&self, cache_dir: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.ftl);
        cmd.args(args)
            .env("FTL_CACHE_DIR", cache_dir)
            .env_remove("SOURCE_DATE_EPOCH");
        cmd
    }

    /// `ftl build DIR --base BASE --image IMAGE --json EXTRA...` with the
    /// given cache dir.
    pub fn build(
        &self,
        cache_dir: &Path,
        dir: &Path,
        base: &str,
        image: &str,
        extra: &[&str],
    ) -> Run {
        let dir = dir.to_str().expect("utf-8 path");
        let mut args = vec!["build", dir, "--base", base, "--image", image, "--json"];
        args.extend_from_slice(extra);
        self.ftl(cache_dir, &args)
    }
}

/// Starts a registry from a thread that lives as long as the process: the
/// registry dies with the thread that started it (`PR_SET_PDEATHSIG`), and
/// a rig shared by a test binary's tests must outlive the test that made it.
pub fn start_registry(options: RegistryOptions) -> Result<Registry> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("ftl-test-registry".into())
        .spawn(move || {
            let _ = tx.send(Registry::start(options));
            loop {
                std::thread::park();
            }
        })
        .context("cannot spawn the registry thread")?;
    rx.recv().context("the registry thread died")?
}

/// Copies a directory tree (for tests that edit a testdata app).
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status()?;
    if !status.success() {
        bail!("cp -a {} {} failed", from.display(), to.display());
    }
    Ok(())
}

/// The layers of a JSON build report that are not from the base:
/// `(name, digest, source, push)`.
pub fn app_layers(report: &serde_json::Value) -> Vec<(String, String, String, String)> {
    report["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .filter(|l| l["source"] != "base")
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or("").to_string();
            (s("name"), s("digest"), s("source"), s("push"))
        })
        .collect()
}

/// `testdata/<lang>/<app>` of this workspace.
pub fn testdata(lang: &str, app: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(lang)
        .join(app)
}

/// A private copy of `testdata/<lang>/<app>`, to edit; the copy lives as
/// long as the returned directory.
pub fn copy_app(lang: &str, app: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let dest = tmp.path().join(app);
    copy_tree(&testdata(lang, app), &dest).expect("the testdata app copies");
    (tmp, dest)
}

/// Names of the layers a build report says were built.
pub fn built(report: &serde_json::Value) -> Vec<String> {
    app_layers(report)
        .into_iter()
        .filter(|l| l.2 == "built")
        .map(|l| l.0)
        .collect()
}

/// Names of the layers a build report says were uploaded.
pub fn uploaded(report: &serde_json::Value) -> Vec<String> {
    app_layers(report)
        .into_iter()
        .filter(|l| l.3 == "uploaded")
        .map(|l| l.0)
        .collect()
}

/// `(name, digest)` of each non-base layer of a build report.
pub fn digests(report: &serde_json::Value) -> Vec<(String, String)> {
    app_layers(report).into_iter().map(|l| (l.0, l.1)).collect()
}

/// A step's size-limited volume (`.NAME.img`, a sparse filesystem image of
/// up to `--step-disk`), as a running build of a test alongside leaves in
/// a shared cache: tests that read every file of a cache skip it (its
/// files are read through its mountpoint; read whole, a 16 GiB image does
/// not fit in memory).
pub fn is_volume_image(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') && n.ends_with(".img"))
}
