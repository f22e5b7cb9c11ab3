//! Shared helpers of the sandbox's tests: busybox bundles and reference
//! runtimes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Fails with the apt package to install when a binary is missing.
pub fn require(binary: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(binary);
        if p.exists() {
            return p;
        }
    }
    panic!("{binary} is not installed: apt-get install -y {package}");
}

/// Copies an executable with `cp`, never through a descriptor of this
/// process: a container another test thread is starting at the same moment
/// would inherit a descriptor open for writing until its exec, and this
/// test's exec of the file would then fail with ETXTBSY.
pub fn copy_executable(from: &Path, to: &Path) {
    let st = Command::new("cp").arg(from).arg(to).status().unwrap();
    assert!(st.success(), "cp {} {}", from.display(), to.display());
}

/// Creates `dir/rootfs` with a static busybox and its applets.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let busybox = require("busybox", "busybox-static");
    let rootfs = dir.join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in [
        "proc", "sys", "dev", "tmp", "etc", "root", "var", "usr", "sbin",
    ] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    copy_executable(&busybox, &bin.join("busybox"));
    let list = Command::new(&busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet == "busybox" {
            continue;
        }
        let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    rootfs
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique container id for this test process.
pub fn unique_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A temp dir with a busybox rootfs.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub rootfs: PathBuf,
    pub state: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("ftl-sandbox-test")
            .tempdir()
            .unwrap();
        let rootfs = busybox_rootfs(dir.path());
        let state = dir.path().join("state");
        Fixture { dir, rootfs, state }
    }

    /// Writes `spec` as `config.json` of a bundle (root.path = "rootfs").
    pub fn bundle(&self, name: &str, spec: &oci_spec::runtime::Spec) -> PathBuf {
        let b = self.dir.path().join(name);
        std::fs::create_dir_all(&b).unwrap();
        let mut spec = spec.clone();
        let root = oci_spec::runtime::RootBuilder::default()
            .path(self.rootfs.clone())
            .readonly(
                spec.root()
                    .as_ref()
                    .and_then(|r| r.readonly())
                    .unwrap_or(false),
            )
            .build()
            .unwrap();
        spec.set_root(Some(root));
        std::fs::write(
            b.join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
        b
    }
}

/// ftl's example spec running `args` without a terminal.
pub fn spec_running(args: &[&str]) -> oci_spec::runtime::Spec {
    let mut spec = ftl_sandbox::example_spec(false);
    let p = spec.process_mut().as_mut().unwrap();
    p.set_terminal(Some(false));
    p.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
    spec
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Compiles `tests/probe/probe.c` (static, once per test binary) and puts
/// it at `rootfs/bin/probe`: the containment tests' system-call prober.
pub fn install_probe(rootfs: &Path) {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let gcc = require("gcc", "gcc libc6-dev");
        // `cargo xtask test` runs this suite again as an unprivileged
        // user, with a copy of the source it can read.
        let src = std::env::var_os("FTL_TEST_PROBE_C")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe/probe.c"));
        let out = std::env::temp_dir().join(format!("ftl-probe-{}", std::process::id()));
        let st = Command::new(gcc)
            .args(["-static", "-O1", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .unwrap();
        assert!(st.success(), "cannot compile {}", src.display());
        out
    });
    copy_executable(built, &rootfs.join("bin/probe"));
}
