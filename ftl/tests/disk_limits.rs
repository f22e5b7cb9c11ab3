//! Size limits on what build steps write. Each test is an attempt to fill
//! the host's disk through a writable mount the engine gives a step; each
//! must stop at the mount's limit, fail the step with an error naming the
//! mount and the flag that raises it, and leave nothing mounted. Real
//! engine, real sandbox, a real registry holding a busybox base; a test
//! plugin whose one step runs a shell script.
//!
//! Volumes need root: as another user these tests check only that the
//! engine says the limit does not hold.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ftl::engine::{
    BuildReport, BuildRequest, DiskLimits, Engine, EngineSettings, Output, Quiet, SandboxRuntime,
};
use ftl::plugin::*;
use ftl::CacheKey;
use ftl_registry_client::{Client, ClientSettings, Reference};
use ftl_test_support::registry::{Registry, RegistryOptions};

const LIMIT: u64 = 64 << 20;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A registry with `base/busybox:latest`: busybox and its applets.
struct Rig {
    _registry: Registry,
    base: String,
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let registry = ftl_test_support::rig::start_registry(RegistryOptions::plain())
            .expect("registry starts");
        let base = format!("{}/base/busybox:latest", registry.host());
        push_busybox(&base);
        Rig {
            _registry: registry,
            base,
        }
    })
}

fn tool(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn push_busybox(reference: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox is not installed: apt-get install -y busybox-static");
    std::fs::copy(busybox, src.join("bin/busybox")).unwrap();
    for applet in ["sh", "dd", "echo", "sleep", "head", "cat", "ls", "df"] {
        std::os::unix::fs::symlink("busybox", src.join("bin").join(applet)).unwrap();
    }
    let layout = tmp.path().join("layout");
    let image = format!("{}:latest", layout.display());
    tool("umoci", &["init", "--layout", &layout.to_string_lossy()]);
    tool("umoci", &["new", "--image", &image]);
    tool(
        "umoci",
        &[
            "insert",
            "--rootless",
            "--image",
            &image,
            &src.to_string_lossy(),
            "/",
        ],
    );
    tool(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{image}"),
            &format!("docker://{reference}"),
        ],
    );
}

/// The base image: the parent test's (`FTL_TEST_BASE`) in a child process.
fn base() -> String {
    std::env::var("FTL_TEST_BASE").unwrap_or_else(|_| rig().base.clone())
}

/// Where the test step writes.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// Its scratch directory, at `/out`.
    Scratch,
    /// The build's view of a package cache, at `/cache`.
    PackageCache,
    /// A persistent directory, at `/state`.
    Persistent,
}

/// What the step saw, for the test to check after the build.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// Free bytes of the cache directory's filesystem before and right
    /// after the step ran.
    free_before: u64,
    free_after: u64,
    /// Bytes on disk below the mount's host directory (its volume's image
    /// where it has one) right after the step ran.
    written: u64,
}

/// A plugin of one layer whose step runs `script` with `target` mounted
/// writable.
struct Fill {
    script: String,
    target: Target,
    seen: Arc<Mutex<Seen>>,
    cache_dir: PathBuf,
}

struct FillStep {
    script: String,
    target: Target,
    seen: Arc<Mutex<Seen>>,
    cache_dir: PathBuf,
}

impl LanguagePlugin for Fill {
    fn id(&self) -> &'static str {
        "fill"
    }
    fn detect(&self, _: &ftl::SourceTree) -> bool {
        false
    }

    fn detects(&self) -> ftl::Detects {
        ftl::Detects {
            name: "test",
            files: &[],
            also: None,
        }
    }
    fn plan(&self, _: &PlanContext<'_>) -> Result<LayerPlan, PluginError> {
        Ok(LayerPlan {
            layers: vec![PlannedLayer {
                name: "fill".into(),
                key: CacheKey::new("fill", 1, serde_json::json!({ "script": self.script })),
                pinned: true,
                step: 0,
                created_by: "fill".into(),
            }],
            steps: vec![Box::new(FillStep {
                script: self.script.clone(),
                target: self.target,
                seen: self.seen.clone(),
                cache_dir: self.cache_dir.clone(),
            })],
            config: ConfigPatch::default(),
            notes: serde_json::Value::Null,
            warnings: Vec::new(),
        })
    }
}

fn free_bytes(path: &Path) -> u64 {
    ftl_sandbox::volume::usage(path).unwrap().available
}

/// Bytes on disk of the files below `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

impl BuildStep for FillStep {
    fn build(
        &self,
        wanted: &[usize],
        ctx: &StepContext<'_>,
    ) -> Result<Vec<(usize, LayerContents)>, PluginError> {
        let (host, target) = match self.target {
            Target::Scratch => {
                let out = ctx.scratch.join("out");
                std::fs::create_dir_all(&out).unwrap();
                (out, "/out")
            }
            Target::PackageCache => (
                ctx.exec.package_cache("fill-cache", CacheTrust::AddOnly)?,
                "/cache",
            ),
            Target::Persistent => (ctx.exec.persistent_dir("fill-state")?, "/state"),
        };
        let free_before = free_bytes(&self.cache_dir);
        let mut req = ExecRequest::new("fill", ["sh", "-c", &self.script]);
        req.mounts = vec![ExecMount {
            host: host.clone(),
            target: target.into(),
            writable: true,
        }];
        req.timeout = Duration::from_secs(120);
        let result = ctx.exec.run(&req);
        *self.seen.lock().unwrap() = Seen {
            free_before,
            free_after: free_bytes(&self.cache_dir),
            written: tree_bytes(&host),
        };
        result?.check("fill")?;
        Ok(vec![(
            wanted[0],
            LayerContents {
                root_dependent: false,
                inputs: vec![LayerInput::Bytes {
                    path: "/filled".into(),
                    mode: 0o644,
                    data: b"ok".to_vec(),
                }],
            },
        )])
    }
}

/// Builds with the `fill` plugin; the build's result and what its step saw.
fn build(
    cache_dir: &Path,
    target: Target,
    script: &str,
) -> (Result<BuildReport, ftl::engine::EngineError>, Seen) {
    build_and_verify(cache_dir, target, script, None)
}

/// [`build`], then verification by running `verify` in the image.
fn build_and_verify(
    cache_dir: &Path,
    target: Target,
    script: &str,
    verify: Option<&str>,
) -> (Result<BuildReport, ftl::engine::EngineError>, Seen) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let plugin = Fill {
        script: script.into(),
        target,
        seen: seen.clone(),
        cache_dir: cache_dir.to_path_buf(),
    };
    let result = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let engine = Engine::new(
            Client::new(ClientSettings::default()).unwrap(),
            EngineSettings {
                cache_dir: cache_dir.to_path_buf(),
                layer: Default::default(),
                unpinned_ttl: Duration::from_secs(3600),
                build_env: Default::default(),
                disk: DiskLimits {
                    scratch_bytes: LIMIT,
                    cache_bytes: LIMIT,
                },
            },
            Arc::new(SandboxRuntime {
                sandbox: Default::default(),
                state_root: cache_dir.join("sandbox-state"),
                detached: None,
                ids: ftl_sandbox::IdRange::DEFAULT,
                limits: Default::default(),
            }),
            vec![Arc::new(plugin)],
        )
        .unwrap();
        let source = tempfile::tempdir().unwrap();
        std::fs::write(source.path().join("app.txt"), "app\n").unwrap();
        let req = BuildRequest {
            source: source.path().to_path_buf(),
            base: Reference::parse(&base()).unwrap(),
            platform: ftl_registry_client::default_platform(),
            // One output for every build of a test: an add-only package
            // cache is private to the output.
            output: Output::OciLayout {
                path: cache_dir.join("layout"),
                tag: "latest".into(),
            },
            tags: Vec::new(),
            language: Some("fill".into()),
            options: Default::default(),
            overrides: Default::default(),
            format: Default::default(),
            cache_repo: None,
            cache_scope: None,
            no_cache: true,
            verify: verify.map(|v| ftl::engine::VerifySpec {
                command: Some(vec!["sh".into(), "-c".into(), v.into()]),
                timeout: Duration::from_secs(60),
                path: "/".into(),
            }),
            cancel: Default::default(),
        };
        engine.build(&req, Arc::new(Quiet)).await
    });
    let seen = seen.lock().unwrap().clone();
    (result, seen)
}

/// A cache directory the engine can use (`tmp/` made, as the CLI does).
fn cache_dir() -> tempfile::TempDir {
    // On a disk (not /tmp, which may be a tmpfs).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    dir
}

/// The mounts below `dir`, from this process's mount table, now.
fn mounted_below(dir: &Path) -> Vec<String> {
    let dir = std::fs::canonicalize(dir).unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| Path::new(m).starts_with(&dir))
        .collect()
}

/// The mounts below `dir`, waiting up to five seconds for them to go.
fn mounts_below(dir: &Path) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = mounted_below(dir);
        if found.is_empty() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The loop devices whose backing file lies below `dir`, waiting up to
/// five seconds for them to go.
fn loop_devices_below(dir: &Path) -> Vec<String> {
    let dir = std::fs::canonicalize(dir).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found: Vec<String> = std::fs::read_dir("/sys/block")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("loop/backing_file")).ok())
            .map(|b| b.trim().to_string())
            .filter(|b| Path::new(b).starts_with(&dir))
            .collect();
        if found.is_empty() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes a GiB of zeros to `dir` (16 times the limit).
fn fill(dir: &str) -> String {
    format!("dd if=/dev/zero of={dir}/big bs=1M count=1024")
}

#[test]
fn a_step_cannot_fill_the_host_disk_through_its_output_dir() {
    if !is_root() {
        eprintln!("skipped: volumes need root (see the unprivileged test)");
        return;
    }
    let cache = cache_dir();
    let (result, seen) = build(cache.path(), Target::Scratch, &fill("/out"));
    let err = ftl::error_chain(&result.expect_err("writing past the limit fails the step"));
    assert!(
        err.contains("`fill` ran out of disk space: /out is full")
            && err.contains("64 MiB")
            && err.contains("--step-disk"),
        "{err}"
    );
    assert!(seen.written > LIMIT / 2, "{seen:?}");
    held_and_left_nothing(cache.path(), &seen);
}

/// The step got no further than the limit on the host, and nothing of the
/// build is left: no mount, no loop device, no image, no scratch.
fn held_and_left_nothing(cache: &Path, seen: &Seen) {
    assert!(seen.written <= LIMIT, "{seen:?}");
    assert!(
        seen.free_before.saturating_sub(seen.free_after) < LIMIT + (256 << 20),
        "the host's free space dropped by more than the limit: {seen:?}"
    );
    assert_eq!(mounts_below(cache), Vec::<String>::new());
    assert_eq!(loop_devices_below(cache), Vec::<String>::new());
    let left: Vec<_> = std::fs::read_dir(cache.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_step_cannot_fill_the_host_disk_through_a_package_cache() {
    if !is_root() {
        eprintln!("skipped: volumes need root (see the unprivileged test)");
        return;
    }
    let cache = cache_dir();
    let (result, seen) = build(cache.path(), Target::PackageCache, &fill("/cache"));
    let err = ftl::error_chain(&result.expect_err("writing past the limit fails the step"));
    assert!(
        err.contains("`fill` ran out of disk space: /cache is full")
            && err.contains("fill-cache")
            && err.contains("--cache-disk"),
        "{err}"
    );
    // A failed build promotes nothing; the view went with it.
    held_and_left_nothing(cache.path(), &seen);

    // Within the limit, what the build adds is promoted to the shared
    // cache (a volume too), and the next build reads it.
    let (result, _) = build(
        cache.path(),
        Target::PackageCache,
        "mkdir -p /cache/a && echo kept >/cache/a/new",
    );
    result.expect("a build within the limit");
    // An add-only cache is private to the build's output too
    // (`fill-cache.<hash of the output>`).
    let shared: Vec<_> = std::fs::read_dir(cache.path().join("persistent"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("fill-cache.")
        })
        .collect();
    assert_eq!(shared.len(), 1, "{shared:?}");
    assert!(shared[0].join("a/new").is_file());
    let (result, _) = build(
        cache.path(),
        Target::PackageCache,
        "grep -q kept /cache/a/new",
    );
    result.expect("the promoted file is in the next build's view");
    assert_eq!(mounts_below(cache.path()), Vec::<String>::new());
}

/// A persistent directory is the engine's, shared by builds: it is not a
/// volume, and a step that mounts one writable is told so in its report
/// rather than promised a limit.
#[test]
fn a_step_writing_to_a_persistent_dir_is_told_it_has_no_limit() {
    let cache = cache_dir();
    let (result, _) = build(cache.path(), Target::Persistent, "echo x >/state/x");
    let report = result.expect("the step runs");
    let step = report.steps.iter().find(|s| s.label == "fill").unwrap();
    assert!(
        step.warnings.len() == 1
            && step.warnings[0].starts_with("/state (")
            && step.warnings[0].contains("has no size limit")
            && step.warnings[0].contains("persistent directory"),
        "{:?}",
        step.warnings
    );
}

/// Verification runs the image on an overlay whose upper directory takes
/// what the app writes: it is a volume too.
#[test]
fn a_verified_app_cannot_fill_the_host_disk_through_its_root() {
    if !is_root() {
        eprintln!("skipped: volumes need root");
        return;
    }
    let cache = cache_dir();
    let free_before = free_bytes(cache.path());
    let (result, _) = build_and_verify(
        cache.path(),
        Target::Scratch,
        "true",
        Some("dd if=/dev/zero of=/big bs=1M count=1024; df -k /; exit 1"),
    );
    let err = ftl::error_chain(&result.expect_err("the verify command fails"));
    assert!(
        err.contains("the app filled the 64 MiB it may write to its root filesystem")
            && err.contains("--step-disk"),
        "{err}"
    );
    assert!(
        free_before.saturating_sub(free_bytes(cache.path())) < 256 << 20,
        "{free_before}"
    );
    assert_eq!(mounts_below(cache.path()), Vec::<String>::new());
    assert_eq!(loop_devices_below(cache.path()), Vec::<String>::new());
}

/// Run in a child process by [`a_killed_build_leaves_nothing_mounted_after_the_next_run`]:
/// a build whose step writes to its scratch and a cache, then waits to be
/// killed.
#[test]
fn killed_build_child() {
    let Some(dir) = std::env::var_os("FTL_TEST_KILLED_BUILD") else {
        return;
    };
    let (result, _) = build(
        Path::new(&dir),
        Target::PackageCache,
        "echo x >/cache/x && sleep 600",
    );
    panic!("the build was to be killed: {:?}", result.map(|r| r.digest));
}

#[test]
fn a_killed_build_leaves_nothing_mounted_after_the_next_run() {
    if !is_root() {
        eprintln!("skipped: volumes need root");
        return;
    }
    let cache = cache_dir();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "killed_build_child", "--nocapture"])
        .env("FTL_TEST_KILLED_BUILD", cache.path())
        .env("FTL_TEST_BASE", &rig().base)
        .spawn()
        .unwrap();
    // Wait until its step runs: its scratch and the package cache's view
    // (its volume and overlay) mounted.
    let deadline = Instant::now() + Duration::from_secs(120);
    let view_written = || {
        std::fs::read_dir(cache.path().join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().join("merged/x").exists())
    };
    loop {
        let mounts = mounted_below(cache.path());
        if mounts.len() >= 4 && view_written() {
            break;
        }
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "the child's step never ran: {mounts:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Killed: its mounts (with the overlay of the base's layers its steps
    // ran on) are still there...
    assert_eq!(mounted_below(cache.path()).len(), 4);
    // ...until the next run (the engine, or `ftl cache gc`) reclaims them.
    let cleaned = ftl::engine::reclaim_volumes(cache.path());
    assert_eq!(cleaned.len(), 3, "{cleaned:?}");
    assert_eq!(mounts_below(cache.path()), Vec::<String>::new());
    assert_eq!(loop_devices_below(cache.path()), Vec::<String>::new());
    let tmp: Vec<_> = std::fs::read_dir(cache.path().join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
    // The shared cache stays, without what the killed build wrote (nothing
    // is promoted from a build that did not finish).
    let (result, _) = build(cache.path(), Target::PackageCache, "! test -e /cache/x");
    result.expect("the cache mounts again");
    assert_eq!(mounts_below(cache.path()), Vec::<String>::new());
}

/// Run as `nobody` by [`without_root_a_step_reports_that_its_output_dir_has_no_limit`]:
/// a build writing past the limit, whose report it prints.
#[test]
fn unprivileged_build_child() {
    let Some(dir) = std::env::var_os("FTL_TEST_UNPRIVILEGED") else {
        return;
    };
    let (result, _) = build(
        Path::new(&dir),
        Target::Scratch,
        "dd if=/dev/zero of=/out/big bs=1M count=80",
    );
    let report = result.expect("without root nothing stops the step");
    println!("REPORT {}", serde_json::to_string(&report).unwrap());
}

/// ftl run by a user other than root cannot make volumes: the build goes
/// on, and the step's report (and a warning) says its output directory
/// has no limit and why, rather than claim one.
#[test]
fn without_root_a_step_reports_that_its_output_dir_has_no_limit() {
    if !is_root() {
        eprintln!("skipped: needs root to run the build as nobody");
        return;
    }
    let cache = cache_dir();
    tool(
        "chown",
        &["-R", "65534:65534", &cache.path().to_string_lossy()],
    );
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "unprivileged_build_child", "--nocapture"])
        .env("FTL_TEST_UNPRIVILEGED", cache.path())
        .env("FTL_TEST_BASE", base())
        .env("HOME", cache.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let report: serde_json::Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("REPORT "))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap_or_else(|| panic!("no report: {stdout}\n{stderr}"));
    let step = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["label"] == "fill")
        .unwrap_or_else(|| panic!("{report:#}"));
    let warning = step["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.starts_with("/out (")
            && warning.contains("has no size limit")
            && warning.contains("uid 65534"),
        "{report:#}"
    );
}
