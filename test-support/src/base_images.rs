//! Base images for ftl's tests and demo, built from Debian packages by
//! `scripts/base-image.sh` and cached on disk as OCI image layouts.
//!
//! | name            | contents                                                        |
//! |-----------------|-----------------------------------------------------------------|
//! | `python`        | bookworm minbase + python3 python3-venv python3-pip (3.11)      |
//! | `python-trixie` | trixie minbase + python3 python3-venv python3-pip (3.13)        |
//! | `node`          | bookworm minbase + nodejs npm (node 18)                         |
//! | `node-build`    | `node` + g++ make python3 (node-gyp) + yarnpkg (yarn 1)         |
//! | `java`          | bookworm minbase + openjdk-17-jre-headless                      |
//! | `builder`       | bookworm minbase + slirp4netns e2fsprogs (the builder image's)  |
//!
//! All include ca-certificates. Each is one gzip layer tagged `latest`.
//!
//! The cache lives in `${FTL_TEST_CACHE:-$HOME/.cache/ftl-test}/base-images/`,
//! one directory per image named `<name>-<first 16 hex of sha256(script)>`, so
//! editing the script rebuilds. Builds need root (debootstrap + chroot) and
//! Debian's mirror; a warm cache needs neither.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// The script, embedded: what is hashed is exactly what is run.
const SCRIPT: &str = include_str!("../../scripts/base-image.sh");

/// Every image `ensure_base_image` knows.
pub const BASE_IMAGE_NAMES: &[&str] = &[
    "python",
    "python-build",
    "python-trixie",
    "node",
    "node-build",
    "java",
    "builder",
];

/// The cache key of image `name`: the first 16 hex digits of the sha256 of
/// `scripts/base-image.sh` with its `case $NAME in ... esac` block reduced
/// to `name`'s own arm. Editing one image's packages, or adding an image,
/// rebuilds only that image; editing the shared steps rebuilds them all.
pub fn script_hash(name: &str) -> String {
    let digest = Sha256::digest(script_for(name).as_bytes());
    hex::encode(digest)[..16].to_string()
}

/// The script as it concerns `name` (see [`script_hash`]).
fn script_for(name: &str) -> String {
    let Some(start) = SCRIPT.find("\ncase $NAME in\n") else {
        return SCRIPT.to_string();
    };
    let Some(end) = SCRIPT[start..].find("\nesac\n").map(|e| start + e) else {
        return SCRIPT.to_string();
    };
    let arms = &SCRIPT[start..end];
    let head = format!("\n{name})\n");
    let arm = arms
        .find(&head)
        .and_then(|a| arms[a..].find(";;").map(|b| &arms[a..a + b]))
        .unwrap_or("");
    format!(
        "{}\ncase $NAME in{arm};;{}",
        &SCRIPT[..start],
        &SCRIPT[end..]
    )
}

/// `${FTL_TEST_CACHE:-$HOME/.cache/ftl-test}`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("FTL_TEST_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("ftl-test")
}

/// Where the OCI layout of `name` is (or will be) cached. Does not build.
pub fn base_image_dir(name: &str) -> Result<PathBuf> {
    check_name(name)?;
    Ok(cache_root()
        .join("base-images")
        .join(format!("{name}-{}", script_hash(name))))
}

fn check_name(name: &str) -> Result<()> {
    if BASE_IMAGE_NAMES.contains(&name) {
        Ok(())
    } else {
        bail!(
            "unknown base image '{name}': expected one of {}",
            BASE_IMAGE_NAMES.join(", ")
        )
    }
}

fn is_complete(dir: &Path) -> bool {
    dir.join("index.json").is_file() && dir.join("oci-layout").is_file()
}

/// Returns the OCI image layout directory of base image `name` (tag
/// `latest`), building it on first use. Safe to call from many threads and
/// processes at once: one builds, the others wait on a file lock and reuse
/// the result. A warm cache costs two `stat`s.
pub fn ensure_base_image(name: &str) -> Result<PathBuf> {
    let dir = base_image_dir(name)?;
    ensure_cached(&dir, |tmp, lock_fd| {
        if unsafe { libc::geteuid() } != 0 {
            bail!(
                "base image '{name}' is not cached at {} and building it needs root \
                 (debootstrap and chroot); run the tests as root once, or point \
                 FTL_TEST_CACHE at a warm cache",
                dir.display()
            );
        }
        build_into(name, tmp, lock_fd)
    })
}

/// The cache discipline, apart from what is built: returns `dir` if it is a
/// complete OCI layout; otherwise, under an exclusive lock on
/// `<parent>/.<dirname>.lock`, calls `build(tmp, lock_fd)` which must write
/// the layout to `tmp/oci`, and renames that to `dir`. A builder hands
/// `lock_fd` to its child processes so that the lock outlives a killed test
/// process for as long as its build script still runs. Waiters that find `dir` complete
/// after the lock return at once.
fn ensure_cached(dir: &Path, build: impl FnOnce(&Path, RawFd) -> Result<()>) -> Result<PathBuf> {
    if is_complete(dir) {
        return Ok(dir.to_path_buf());
    }
    let parent = dir.parent().expect("cache dir has a parent");
    fs::create_dir_all(parent)
        .with_context(|| format!("creating the base image cache {}", parent.display()))?;
    let key = dir.file_name().unwrap().to_string_lossy().into_owned();

    let lock = FileLock::acquire(&parent.join(format!(".{key}.lock")))?;
    // Someone else may have built it while we waited.
    if is_complete(dir) {
        return Ok(dir.to_path_buf());
    }
    // Leftovers of a build that was killed, and a half-written final dir
    // (cannot happen through rename, but be safe): we hold the lock.
    for entry in fs::read_dir(parent)? {
        let entry = entry?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.starts_with(&format!(".tmp-{key}-")) {
            // A build killed mid-way may have left /proc mounted in its
            // rootfs: detach mounts before deleting anything.
            unmount_under(&entry.path());
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    if dir.exists() {
        fs::remove_dir_all(dir)
            .with_context(|| format!("removing incomplete {}", dir.display()))?;
    }

    let tmp = parent.join(format!(".tmp-{key}-{}", std::process::id()));
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = build(&tmp, lock.file.as_raw_fd()).and_then(|()| {
        if !is_complete(&tmp.join("oci")) {
            bail!(
                "the build left no OCI layout in {}",
                tmp.join("oci").display()
            );
        }
        let renamed = fs::rename(tmp.join("oci"), dir);
        if renamed.is_err() && is_complete(dir) {
            // A builder that does not take the lock (a script) got there
            // first: same script, same image; keep theirs.
            return Ok(());
        }
        renamed.with_context(|| {
            format!(
                "moving the built image {} to {}",
                tmp.join("oci").display(),
                dir.display()
            )
        })
    });
    let _ = fs::remove_dir_all(&tmp);
    drop(lock);
    result?;
    Ok(dir.to_path_buf())
}

/// Lazily unmounts every mount point at or below `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        // /proc/mounts escapes spaces etc. as octal; our paths have none.
        .filter(|p| *p == prefix || p.starts_with(&format!("{prefix}/")))
        .map(str::to_string)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        if let Ok(c) = std::ffi::CString::new(point) {
            // SAFETY: a valid C string; MNT_DETACH never blocks.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn build_into(name: &str, tmp: &Path, lock_fd: RawFd) -> Result<()> {
    let script = tmp.join("base-image.sh");
    fs::write(&script, SCRIPT).with_context(|| format!("writing {}", script.display()))?;
    let log_path = tmp.join("build.log");
    let log = File::create(&log_path)?;
    eprintln!(
        "ftl-test-support: building base image '{name}' from Debian packages \
         (first use of this script version; 1-3 minutes)..."
    );
    let started = Instant::now();
    let mut command = Command::new("bash");
    // SAFETY: only fcntl, which is async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // Let the script inherit the lock: it stays held while the
            // script runs even if this process is killed.
            if libc::fcntl(lock_fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = command
        .arg(&script)
        .arg(name)
        .arg(tmp.join("oci"))
        .env("TMPDIR", tmp)
        .env("PATH", path_with_sbin())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "running scripts/base-image.sh: 'bash' not found: apt-get install bash"
                )
            } else {
                anyhow::Error::new(e).context("running scripts/base-image.sh")
            }
        })?;
    if !status.success() {
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "building base image '{name}' failed ({status}); the script said:\n{}",
            tail.join("\n")
        );
    }
    eprintln!(
        "ftl-test-support: base image '{name}' built in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

/// `$PATH` plus the sbin directories (debootstrap lives in /usr/sbin, which a
/// non-login root shell may not have).
fn path_with_sbin() -> String {
    let mut path = std::env::var("PATH").unwrap_or_default();
    for dir in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        if !path.split(':').any(|p| p == dir) {
            if !path.is_empty() {
                path.push(':');
            }
            path.push_str(dir);
        }
    }
    path
}

/// Finds `tool` on `$PATH` (plus the sbin dirs) or says which apt package
/// brings it.
pub(crate) fn require_tool(tool: &str, apt_package: &str) -> Result<PathBuf> {
    for dir in path_with_sbin().split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(tool);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "'{tool}' not found on PATH: apt-get install {apt_package} (or run scripts/ensure-deps.sh)"
    )
}

/// Options for [`push_base_image_with`].
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Tag to push (default `latest`).
    pub tag: String,
    /// `user:password` for a registry with basic auth.
    pub creds: Option<(String, String)>,
    /// Talk plain HTTP / skip TLS verification (default true: test registries
    /// on loopback).
    pub insecure: bool,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            tag: "latest".into(),
            creds: None,
            insecure: true,
        }
    }
}

/// Pushes base image `name` (building it first if needed) to
/// `registry_host` (`127.0.0.1:PORT`, plain HTTP) as `repo:latest` with
/// skopeo. Returns `HOST/REPO@sha256:...`.
pub fn push_base_image(name: &str, registry_host: &str, repo: &str) -> Result<String> {
    push_base_image_with(name, registry_host, repo, &PushOptions::default())
}

/// [`push_base_image`] with a tag, credentials, TLS choice.
pub fn push_base_image_with(
    name: &str,
    registry_host: &str,
    repo: &str,
    options: &PushOptions,
) -> Result<String> {
    let skopeo = require_tool("skopeo", "skopeo")?;
    let dir = ensure_base_image(name)?;
    let digest_file = tempfile::NamedTempFile::new()?;
    let dest = format!("docker://{registry_host}/{repo}:{}", options.tag);
    let mut cmd = Command::new(skopeo);
    cmd.arg("copy")
        .arg("--quiet")
        .arg("--retry-times=2")
        .arg(format!("--dest-tls-verify={}", !options.insecure))
        .arg("--digestfile")
        .arg(digest_file.path());
    match &options.creds {
        Some((user, pass)) => {
            cmd.arg("--dest-creds").arg(format!("{user}:{pass}"));
        }
        None => {
            cmd.arg("--dest-no-creds");
        }
    }
    cmd.arg(format!("oci:{}:latest", dir.display()))
        .arg(&dest)
        .stdin(Stdio::null());
    let out = cmd
        .output()
        .with_context(|| format!("running skopeo copy to {dest}"))?;
    if !out.status.success() {
        bail!(
            "skopeo copy oci:{}:latest {dest} failed ({}): {}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let digest = fs::read_to_string(digest_file.path())?.trim().to_string();
    if !digest.starts_with("sha256:") {
        bail!("skopeo copy to {dest} wrote no digest (got '{digest}')");
    }
    Ok(format!("{registry_host}/{repo}@{digest}"))
}

/// An exclusive `flock(2)` on a lock file, released on drop (or when the
/// process dies, so a killed build never wedges the cache).
struct FileLock {
    file: File,
}

impl FileLock {
    fn acquire(path: &Path) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            let _ = writeln!(file, "{}", std::process::id());
            return Ok(Self { file });
        }
        eprintln!(
            "ftl-test-support: waiting for another process to finish {}",
            path.display()
        );
        loop {
            // SAFETY: flock on a file descriptor we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).with_context(|| format!("locking {}", path.display()));
            }
        }
        let _ = writeln!(file, "{}", std::process::id());
        Ok(Self { file })
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: unlock our own descriptor; closing it would release too.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    #[test]
    fn script_hash_is_16_hex_stable_and_per_image() {
        let h = script_hash("python");
        assert_eq!(h.len(), 16);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(h, script_hash("python"));
        assert_ne!(h, script_hash("node"));
        // Only the image's own arm of the `case` is in its key.
        let py = script_for("python");
        assert!(py.contains("python3-venv"));
        assert!(!py.contains("nodejs"));
        assert!(!py.contains("openjdk"));
        assert!(py.contains("debootstrap --variant=minbase"));
    }

    #[test]
    fn cache_dir_is_named_by_image_and_script_hash() {
        let dir = base_image_dir("python").unwrap();
        assert_eq!(
            dir.file_name().unwrap().to_string_lossy(),
            format!("python-{}", script_hash("python"))
        );
        assert_eq!(dir.parent().unwrap().file_name().unwrap(), "base-images");
    }

    #[test]
    fn unknown_image_is_an_error_naming_the_choices() {
        let err = ensure_base_image("ruby").unwrap_err().to_string();
        assert!(
            err.contains("ruby") && err.contains("python-trixie"),
            "{err}"
        );
    }

    #[test]
    fn missing_tool_error_names_the_apt_package() {
        let err = require_tool("no-such-tool-ftl", "some-package")
            .unwrap_err()
            .to_string();
        assert!(err.contains("apt-get install some-package"), "{err}");
    }

    #[test]
    fn file_lock_excludes_a_second_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = FileLock::acquire(&path).unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let (b, p) = (barrier.clone(), path.clone());
        let waiter = std::thread::spawn(move || {
            b.wait();
            let t = Instant::now();
            let _second = FileLock::acquire(&p).unwrap();
            t.elapsed()
        });
        barrier.wait();
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
        let waited = waiter.join().unwrap();
        assert!(waited >= Duration::from_millis(250), "waited {waited:?}");
    }

    fn fake_build(tmp: &Path) -> Result<()> {
        let oci = tmp.join("oci");
        fs::create_dir_all(&oci)?;
        fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        fs::write(oci.join("index.json"), "{}")?;
        Ok(())
    }

    #[test]
    fn concurrent_ensures_build_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("base-images").join("x-0123456789abcdef");
        // A stale temp dir of a killed build is cleaned up.
        let stale = root
            .path()
            .join("base-images/.tmp-x-0123456789abcdef-999999");
        fs::create_dir_all(&stale).unwrap();
        let builds = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (dir, builds) = (dir.clone(), builds.clone());
                std::thread::spawn(move || {
                    ensure_cached(&dir, |tmp, _| {
                        builds.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(200));
                        fake_build(tmp)
                    })
                    .unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), dir);
        }
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        assert!(is_complete(&dir));
        assert!(!stale.exists());
        // Warm: the builder is not called.
        ensure_cached(&dir, |_, _| panic!("rebuilt a cached image")).unwrap();
        let names: Vec<_> = fs::read_dir(root.path().join("base-images"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(".tmp-")), "{names:?}");
    }

    #[test]
    fn a_lockless_builder_that_finishes_first_wins() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("z-0123456789abcdef");
        let d = dir.clone();
        let got = ensure_cached(&dir, move |tmp, _| {
            fake_build(tmp)?;
            // Meanwhile a script without the lock renamed its build in.
            let other = d.with_extension("tmp.1");
            fake_build(&other)?;
            fs::rename(other.join("oci"), &d)?;
            Ok(())
        })
        .unwrap();
        assert_eq!(got, dir);
        assert!(is_complete(&dir));
        assert!(!dir.join("oci").exists());
    }

    #[test]
    fn stale_build_mounts_are_detached_before_removal() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: needs root to mount");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let point = root.path().join("rootfs/proc");
        fs::create_dir_all(&point).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&point)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipping: cannot mount tmpfs here");
            return;
        }
        let mounted = || {
            fs::read_to_string("/proc/self/mounts")
                .unwrap()
                .contains(&*point.to_string_lossy())
        };
        assert!(mounted());
        unmount_under(root.path());
        assert!(!mounted());
    }

    #[test]
    fn failed_build_leaves_nothing_and_is_retried() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("y-0123456789abcdef");
        let err = ensure_cached(&dir, |tmp, _| {
            fs::create_dir_all(tmp.join("oci/blobs"))?;
            bail!("debootstrap exploded")
        })
        .unwrap_err();
        assert!(err.to_string().contains("debootstrap exploded"));
        assert!(!dir.exists());
        let err = ensure_cached(&dir, |_, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains("no OCI layout"), "{err}");
        ensure_cached(&dir, |t, _| fake_build(t)).unwrap();
        assert!(is_complete(&dir));
    }

    /// Builds every base image that is not cached yet, printing the time
    /// each took: `cargo test -p ftl-test-support -- --ignored --nocapture
    /// warm_all_base_images`.
    #[test]
    #[ignore = "builds all base images (minutes, needs root and Debian's mirror)"]
    fn warm_all_base_images() {
        for name in BASE_IMAGE_NAMES {
            let t = Instant::now();
            let dir = ensure_base_image(name).unwrap();
            let size: u64 = fs::read_dir(dir.join("blobs/sha256"))
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum();
            eprintln!(
                "{name}: {:.1?} -> {} ({:.1} MB)",
                t.elapsed(),
                dir.display(),
                size as f64 / 1e6
            );
        }
    }

    /// Builds (or reuses) the python image; needs root and Debian's mirror
    /// on a cold cache. The second call must be a cache hit.
    #[test]
    fn python_image_is_cached_and_valid() {
        if unsafe { libc::geteuid() } != 0 && !is_complete(&base_image_dir("python").unwrap()) {
            eprintln!("skipping: not root and no cached python base image");
            return;
        }
        let dir = ensure_base_image("python").unwrap();
        let t = Instant::now();
        assert_eq!(ensure_base_image("python").unwrap(), dir);
        assert!(t.elapsed() < Duration::from_millis(100));

        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(
            m["annotations"]["org.opencontainers.image.ref.name"],
            "latest"
        );
        let blob = |d: &serde_json::Value| {
            let d = d.as_str().unwrap().strip_prefix("sha256:").unwrap();
            let bytes = fs::read(dir.join("blobs/sha256").join(d)).unwrap();
            assert_eq!(hex::encode(Sha256::digest(&bytes)), d);
            bytes
        };
        let manifest: serde_json::Value = serde_json::from_slice(&blob(&m["digest"])).unwrap();
        assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
        let config: serde_json::Value =
            serde_json::from_slice(&blob(&manifest["config"]["digest"])).unwrap();
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], "amd64");
        let env: Vec<&str> = config["config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(env.iter().any(|e| e.starts_with("PATH=/usr/local/sbin")));
        assert!(env.contains(&"LANG=C.UTF-8"));
        assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
        assert_eq!(config["history"].as_array().unwrap().len(), 1);
    }
}
