//! `ftl build` end to end with no language plugin (`--language generic`): an
//! application directory placed on a base image and pushed to a real
//! registry (plain, basic auth, token auth, TLS, behind a fault-injecting
//! proxy) or written as an OCI layout / docker-archive, and read back by
//! skopeo and umoci.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use ftl_test_support::proxy::{FaultProxy, Rule};
use ftl_test_support::registry::{Registry, RegistryOptions, TLS_NAME};
use ftl_test_support::rig::{app_layers, start_registry, Rig, Run};

/// The digest of the app layer of [`write_app`]'s tree at `/srv`, with the
/// default layer settings (mtime 1, gzip level 1, zlib-rs). It changes only
/// when the layer format does, which must be deliberate.
const GOLDEN_APP_LAYER: &str =
    "sha256:d55c19cd85a4a616bd410a70f5aedab624d97b51f1e756bc924e7abb8d4138e8";

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| Rig::start(env!("CARGO_BIN_EXE_ftl"), &["python"]).expect("test rig starts"))
}

/// `HOST/base/tiny:latest` in the rig's registry: see [`push_tiny_base`].
fn tiny_base() -> String {
    static TINY: OnceLock<String> = OnceLock::new();
    TINY.get_or_init(|| {
        let host = rig().registry.host();
        push_tiny_base(&host, None);
        format!("{host}/base/tiny:latest")
    })
    .clone()
}

/// Pushes a tiny base image (one layer holding `/etc/tiny-release`, made
/// with umoci) to `host/base/tiny:latest`: tests that unpack or copy whole
/// images, or start registries of their own, need no 50 MB base.
fn push_tiny_base(host: &str, creds: Option<(&str, &str)>) {
    push_tiny_image(host, creds, "base/tiny", 1);
}

/// The tiny base with its one layer `copies` times, as `host/repo:latest`.
fn push_tiny_image(host: &str, creds: Option<(&str, &str)>, repo: &str, copies: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/tiny-release"), "tiny base\n").unwrap();
    let layout = tmp.path().join("layout");
    let image = format!("{}:latest", s(&layout));
    tool("umoci", &["init", "--layout", s(&layout)]);
    tool("umoci", &["new", "--image", &image]);
    for _ in 0..copies {
        tool(
            "umoci",
            &["insert", "--rootless", "--image", &image, s(&src), "/"],
        );
    }
    let creds = creds.map(|(u, p)| format!("{u}:{p}"));
    let src_ref = format!("oci:{image}");
    let dest = format!("docker://{host}/{repo}:latest");
    let mut args = vec![
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--retry-times=2",
    ];
    if let Some(c) = &creds {
        args.extend(["--dest-creds", c.as_str()]);
    }
    args.extend([src_ref.as_str(), dest.as_str()]);
    tool("skopeo", &args);
}

/// A small app with fixed contents and modes: a file, an executable, a
/// subdirectory, a symlink, and a file that `.dockerignore` leaves out.
fn write_app(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let files: &[(&str, &str, u32)] = &[
        ("index.html", "<h1>hello from ftl</h1>\n", 0o644),
        ("run.sh", "#!/bin/sh\nexec echo hello\n", 0o755),
        ("static/style.css", "body { color: teal; }\n", 0o644),
        ("secret.env", "TOKEN=not-in-the-image\n", 0o600),
        (".dockerignore", "secret.env\n", 0o644),
    ];
    std::fs::create_dir_all(dir.join("static")).unwrap();
    for (path, text, mode) in files {
        let p = dir.join(path);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    std::os::unix::fs::symlink("index.html", dir.join("home.html")).unwrap();
    for d in [dir.to_path_buf(), dir.join("static")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// A fresh app directory (and the temp dir that holds it). `marker` goes
/// into one more file, so tests that need a layer of their own get one.
fn app(marker: Option<&str>) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("app");
    std::fs::create_dir(&dir).unwrap();
    write_app(&dir);
    if let Some(m) = marker {
        std::fs::write(dir.join("marker.txt"), format!("{m}\n")).unwrap();
    }
    (tmp, dir)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `ftl build DIR --base BASE --image IMAGE --language generic --json EXTRA`.
fn build(cache: &Path, dir: &Path, base: &str, image: &str, extra: &[&str]) -> Run {
    let mut args = vec!["--language", "generic"];
    args.extend_from_slice(extra);
    rig().build(cache, dir, base, image, &args)
}

/// Runs the command and returns its output as a [`Run`].
fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?} runs: {e}"));
    Run {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a tool and returns stdout, panicking with its output on failure.
fn tool(program: &str, args: &[&str]) -> String {
    let r = run(Command::new(program).args(args));
    assert_eq!(
        r.status, 0,
        "{program} {args:?} failed:\n{}\n{}",
        r.stdout, r.stderr
    );
    r.stdout
}

fn skopeo_inspect(transport_ref: &str, raw: bool) -> serde_json::Value {
    let mut args = vec!["inspect", "--tls-verify=false"];
    if raw {
        args.push("--raw");
    }
    if !transport_ref.starts_with("docker://") {
        args.remove(1);
    }
    args.push(transport_ref);
    serde_json::from_str(&tool("skopeo", &args)).expect("skopeo prints JSON")
}

/// Unpacks an OCI layout image with umoci and returns the rootfs.
fn umoci_unpack(layout: &Path, tag: &str, into: &Path) -> PathBuf {
    let bundle = into.join("bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:{tag}", s(layout)),
            s(&bundle),
        ],
    );
    bundle.join("rootfs")
}

/// Reads a docker-archive as skopeo does (into the OCI layout `layout`)
/// and unpacks it with umoci into `into`; returns the rootfs.
fn docker_archive_rootfs(archive: &Path, layout: &Path, into: &Path) -> PathBuf {
    tool(
        "skopeo",
        &[
            "copy",
            "--quiet",
            &format!("docker-archive:{}", s(archive)),
            &format!("oci:{}:t", s(layout)),
        ],
    );
    umoci_unpack(layout, "t", into)
}

/// The app's files are in the unpacked rootfs at `/srv`, with their modes;
/// the ignored file is not.
fn assert_app_files(rootfs: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let srv = rootfs.join("srv");
    assert_eq!(
        std::fs::read_to_string(srv.join("index.html")).unwrap(),
        "<h1>hello from ftl</h1>\n"
    );
    assert_eq!(
        std::fs::read_to_string(srv.join("static/style.css")).unwrap(),
        "body { color: teal; }\n"
    );
    let mode = std::fs::metadata(srv.join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755, "the exec bit is kept");
    assert_eq!(
        std::fs::read_link(srv.join("home.html")).unwrap(),
        Path::new("index.html")
    );
    assert!(!srv.join("secret.env").exists(), ".dockerignore is honored");
    // And the base is there too.
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/tiny-release")).unwrap(),
        "tiny base\n"
    );
}

fn app_layer(report: &serde_json::Value) -> (String, String, String, String) {
    let layers = app_layers(report);
    assert_eq!(layers.len(), 1, "one app layer: {report:#}");
    layers.into_iter().next().unwrap()
}

/// Layer downloads through the proxy: GETs of any layer blob of the image
/// (the base's config is read, its layers never are).
fn layer_gets(proxy: &FaultProxy, report: &serde_json::Value) -> usize {
    let digests: Vec<String> = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    proxy
        .requests()
        .iter()
        .filter(|r| {
            r.method == "GET"
                && digests
                    .iter()
                    .any(|d| r.path.ends_with(&format!("/blobs/{d}")))
        })
        .count()
}

/// Request-body bytes sent to upload sessions of `repo` (not its cache
/// repository).
fn uploaded_to(proxy: &FaultProxy, repo: &str) -> u64 {
    let prefix = format!("/v2/{repo}/blobs/uploads/");
    proxy
        .requests()
        .iter()
        .filter(|r| r.path.starts_with(&prefix))
        .map(|r| r.request_body_bytes)
        .sum()
}

fn base_layers(report: &serde_json::Value) -> Vec<serde_json::Value> {
    report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["source"] == "base")
        .cloned()
        .collect()
}

/// Sets every mtime in the tree (not following symlinks' targets twice).
fn touch_all(dir: &Path, when: SystemTime) {
    for entry in walk(dir) {
        if entry.is_symlink() {
            continue;
        }
        let f = std::fs::File::options()
            .read(true)
            .open(&entry)
            .unwrap_or_else(|e| panic!("open {}: {e}", entry.display()));
        f.set_modified(when).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A `DOCKER_CONFIG` directory whose `config.json` has `auths` for `host`.
fn docker_config(host: &str, user: &str, password: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let auth = base64(format!("{user}:{password}").as_bytes());
    let json = serde_json::json!({ "auths": { host: { "auth": auth } } });
    std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
    dir
}

/// A registry with the tiny base pushed to `base/tiny:latest` (with the
/// registry's credentials; over TLS without verification).
fn registry_with_base(options: RegistryOptions) -> Registry {
    let registry = start_registry(options).expect("registry starts");
    // skopeo cannot resolve the TLS name: push to the loopback address
    // (the certificate names 127.0.0.1 too; skopeo does not verify here).
    let host = format!("127.0.0.1:{}", registry.port());
    push_tiny_base(&host, registry.credentials());
    registry
}

/// One `error:` line, naming what failed; no dump.
fn assert_clear_error(run: &Run, needles: &[&str]) -> String {
    let err = run.error().to_string();
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line:\n{err}");
    eprintln!("{}", errors[0]);
    for needle in needles {
        assert!(
            errors[0].contains(needle),
            "the error should mention {needle:?}:\n{err}"
        );
    }
    assert!(err.lines().count() <= 12, "an error, not a dump:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    errors[0].to_string()
}

#[test]
fn same_dir_gives_same_digest_and_a_golden_app_layer() {
    let rig = rig();
    let (_tmp, dir) = app(None);
    let base = rig.base("python");
    let image = rig.image("gen/repro:v1");

    // Two machines (fresh caches, no registry cache): the layer is really
    // rebuilt both times.
    let c1 = tempfile::tempdir().unwrap();
    let first = build(c1.path(), &dir, &base, &image, &["--no-registry-cache"]).report();
    let (name, digest, source, _) = app_layer(&first);
    assert_eq!((name.as_str(), source.as_str()), ("app", "built"));

    touch_all(&dir, SystemTime::now() + Duration::from_secs(3600));
    let c2 = tempfile::tempdir().unwrap();
    let second = build(c2.path(), &dir, &base, &image, &["--no-registry-cache"]).report();
    assert_eq!(app_layer(&second).2, "built");
    assert_eq!(app_layer(&second).1, digest, "mtimes do not matter");
    assert_eq!(second["digest"], first["digest"], "same image");

    assert_eq!(digest, GOLDEN_APP_LAYER, "the app layer's golden digest");

    // Written to an OCI layout instead: the same image digest.
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("layout");
    let exported = rig
        .ftl(
            c2.path(),
            &[
                "build",
                s(&dir),
                "--base",
                &base,
                "--language",
                "generic",
                "--json",
                "--output",
                &format!("oci:{}:v1", s(&layout)),
            ],
        )
        .report();
    assert_eq!(exported["digest"], first["digest"]);

    // SOURCE_DATE_EPOCH changes the entries' mtime, so the layer: rebuilt
    // even with the same local cache.
    let epoch = run(rig
        .command(
            c2.path(),
            &[
                "build",
                s(&dir),
                "--base",
                &base,
                "--image",
                &image,
                "--language",
                "generic",
                "--json",
                "--no-registry-cache",
            ],
        )
        .env("SOURCE_DATE_EPOCH", "1700000000"))
    .report();
    let (_, epoch_digest, epoch_source, _) = app_layer(&epoch);
    assert_eq!(epoch_source, "built", "{epoch:#}");
    assert_ne!(epoch_digest, digest);
    assert_ne!(epoch["digest"], first["digest"]);
    // And back to the default: the cached golden layer again.
    let again = build(c2.path(), &dir, &base, &image, &["--no-registry-cache"]).report();
    assert_eq!(app_layer(&again).1, digest);
    assert_eq!(again["digest"], first["digest"]);

    // The config's creation time follows SOURCE_DATE_EPOCH too.
    let created = |image: &str| {
        let json = rig.ftl(c2.path(), &["inspect", "--json", image]);
        assert_eq!(json.status, 0, "{}", json.stderr);
        let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
        v["config"]["created"].as_str().unwrap().to_string()
    };
    assert_eq!(created(&image), "1970-01-01T00:00:01Z");
    let epoch_image = rig.image("gen/repro:epoch");
    run(rig
        .command(
            c2.path(),
            &[
                "build",
                s(&dir),
                "--base",
                &base,
                "--image",
                &epoch_image,
                "--language",
                "generic",
                "--json",
            ],
        )
        .env("SOURCE_DATE_EPOCH", "1700000000"))
    .report();
    assert_eq!(created(&epoch_image), "2023-11-14T22:13:20Z");

    // A value that is not a number of seconds: one clear error.
    let bad = run(rig
        .command(
            c2.path(),
            &[
                "build",
                s(&dir),
                "--base",
                &base,
                "--image",
                &rig.image("gen/repro:bad"),
                "--language",
                "generic",
            ],
        )
        .env("SOURCE_DATE_EPOCH", "yesterday"));
    assert_clear_error(&bad, &["SOURCE_DATE_EPOCH", "yesterday"]);
    assert!(rig.registry.tags("gen/repro").iter().all(|t| t != "bad"));
}

/// Rule 3 of the design: a cache key names everything that changes the
/// layer. After each change, a build with a warm local cache gives the
/// same app layer as a build on a machine that never saw the app.
/// Verification's root is an overlay of the image over the shared base
/// rootfs. Made of idmapped layers for the step's unprivileged root, its
/// upper layer was idmapped too, which overlayfs cannot create its work
/// directory in: it mounted the whole root read-only, and an app that
/// writes below its own directory failed verification.
#[test]
fn verification_runs_the_image_on_a_writable_root_and_leaves_the_base_alone() {
    let rig = rig();
    let (_tmp, dir) = app(Some("writable-root"));
    let cache = tempfile::tempdir().unwrap();
    let base = rig.base("python");
    let script = "echo written > /etc/ftl-verify-wrote && mkdir -p /srv/new && \
                  echo changed >> /etc/os-release && grep -q written /etc/ftl-verify-wrote";
    let r = build(
        cache.path(),
        &dir,
        &base,
        &rig.image("gen/writable-root:v1"),
        &["--verify-cmd", &format!("/bin/sh -c '{script}'")],
    )
    .report();
    assert!(r["verify"].is_object(), "{r:#}");
    // What the app wrote stayed in its overlay: the cached base layers
    // (or, unprivileged, rootfs), shared by every build, are as they were.
    let mut checked = 0;
    for kind in ["layers", "rootfs"] {
        for tree in std::fs::read_dir(cache.path().join(kind))
            .into_iter()
            .flatten()
            .flatten()
        {
            if !tree.file_type().unwrap().is_dir()
                || tree.file_name().to_string_lossy().starts_with('.')
            {
                continue;
            }
            if let Ok(os_release) = std::fs::read_to_string(tree.path().join("etc/os-release")) {
                assert!(!os_release.contains("changed"), "{os_release}");
                checked += 1;
            }
            assert!(!tree.path().join("etc/ftl-verify-wrote").exists());
        }
    }
    assert!(
        checked > 0,
        "no unpacked base in {}",
        cache.path().display()
    );
}

#[test]
fn a_warm_cache_gives_the_same_layer_as_a_cold_one() {
    use std::os::unix::fs::PermissionsExt;
    let rig = rig();
    let base = tiny_base();
    let (_tmp, dir) = app(None);
    let warm = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let layout = format!("oci:{}:t", s(&out.path().join("layout")));
    let layer = |cache: &Path| {
        let report = rig
            .ftl(
                cache,
                &[
                    "build",
                    s(&dir),
                    "--base",
                    &base,
                    "--output",
                    &layout,
                    "--language",
                    "generic",
                    "--json",
                ],
            )
            .report();
        app_layer(&report).1
    };
    type Change<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let changes: Vec<Change> = vec![
        ("nothing", Box::new(|| {})),
        (
            "a byte",
            Box::new(|| {
                std::fs::write(dir.join("index.html"), "<h1>hello from ftl!</h1>\n").unwrap()
            }),
        ),
        (
            "an exec bit",
            Box::new(|| {
                std::fs::set_permissions(
                    dir.join("index.html"),
                    std::fs::Permissions::from_mode(0o755),
                )
                .unwrap()
            }),
        ),
        (
            "a symlink target",
            Box::new(|| {
                std::fs::remove_file(dir.join("home.html")).unwrap();
                std::os::unix::fs::symlink("run.sh", dir.join("home.html")).unwrap();
            }),
        ),
        (
            "a hard link",
            Box::new(|| std::fs::hard_link(dir.join("run.sh"), dir.join("run2.sh")).unwrap()),
        ),
        (
            "the hard link made a copy",
            Box::new(|| {
                std::fs::remove_file(dir.join("run2.sh")).unwrap();
                std::fs::copy(dir.join("run.sh"), dir.join("run2.sh")).unwrap();
            }),
        ),
        (
            "an empty directory",
            Box::new(|| std::fs::create_dir(dir.join("empty")).unwrap()),
        ),
        (
            "a renamed file",
            Box::new(|| {
                std::fs::rename(dir.join("static/style.css"), dir.join("static/site.css")).unwrap()
            }),
        ),
    ];
    let mut seen = Vec::new();
    for (what, change) in changes {
        change();
        let from_warm = layer(warm.path());
        let cold = tempfile::tempdir().unwrap();
        let from_cold = layer(cold.path());
        assert_eq!(
            from_warm, from_cold,
            "after changing {what}, the warm cache served a stale layer"
        );
        if what != "nothing" {
            assert!(
                !seen.contains(&from_cold),
                "changing {what} changed the layer"
            );
        }
        seen.push(from_cold);
    }
}

#[test]
fn skopeo_reads_what_ftl_pushed_in_oci_and_docker_form() {
    let rig = rig();
    let (_tmp, dir) = app(Some("skopeo"));
    let cache = tempfile::tempdir().unwrap();
    let base = tiny_base();
    let work = tempfile::tempdir().unwrap();
    for (format, manifest_type, config_type, layer_type) in [
        (
            "oci",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            "docker",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ),
    ] {
        let image = rig.image(&format!("gen/skopeo:{format}"));
        let report = build(cache.path(), &dir, &base, &image, &["--format", format]).report();
        let digest = report["digest"].as_str().unwrap();
        assert!(report["image"]
            .as_str()
            .unwrap()
            .ends_with(&format!("@{digest}")));

        let raw = skopeo_inspect(&format!("docker://{image}"), true);
        assert_eq!(raw["mediaType"], manifest_type, "{raw:#}");
        assert_eq!(raw["config"]["mediaType"], config_type);
        for l in raw["layers"].as_array().unwrap() {
            assert_eq!(l["mediaType"], layer_type, "{raw:#}");
        }
        let info = skopeo_inspect(&format!("docker://{image}"), false);
        assert_eq!(info["Digest"], digest);
        assert_eq!(info["Os"], "linux");
        assert_eq!(info["Architecture"], "amd64");
        let layers: Vec<&str> = report["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap())
            .collect();
        let seen: Vec<&str> = info["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert_eq!(seen, layers);

        // A full copy reads every blob and checks every digest.
        let layout = work.path().join(format!("copy-{format}"));
        tool(
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{image}"),
                &format!("oci:{}:t", s(&layout)),
            ],
        );
        let rootfs = umoci_unpack(&layout, "t", &work.path().join(format!("unpack-{format}")));
        assert_app_files(&rootfs);
        assert_eq!(
            std::fs::read_to_string(rootfs.join("srv/marker.txt")).unwrap(),
            "skopeo\n"
        );
        let dir_copy = work.path().join(format!("dir-{format}"));
        tool(
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{image}"),
                &format!("dir:{}", s(&dir_copy)),
            ],
        );
    }
}

#[test]
fn oci_layout_and_docker_archive_outputs_are_read_by_skopeo_and_umoci() {
    let rig = rig();
    let (_tmp, dir) = app(None);
    let cache = tempfile::tempdir().unwrap();
    // Through a proxy, to count base layer downloads: an export needs the
    // base's bytes, once per machine.
    let proxy = FaultProxy::start(&rig.registry.url()).unwrap();
    let base = format!(
        "{}{}",
        proxy.host(),
        &tiny_base()[rig.registry.host().len()..]
    );
    let out = tempfile::tempdir().unwrap();

    // OCI layout.
    let layout = out.path().join("layout");
    let report = rig
        .ftl(
            cache.path(),
            &[
                "build",
                s(&dir),
                "--base",
                &base,
                "--language",
                "generic",
                "--json",
                "--output",
                &format!("oci:{}:v1", s(&layout)),
            ],
        )
        .report();
    let info = skopeo_inspect(&format!("oci:{}:v1", s(&layout)), false);
    assert_eq!(info["Digest"], report["digest"]);
    assert_eq!(app_layer(&report).0, "app");
    let rootfs = umoci_unpack(&layout, "v1", &out.path().join("oci-unpack"));
    assert_app_files(&rootfs);
    let base_gets = || {
        let base_layer = base_layers(&report)[0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        proxy
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(&base_layer))
            .count()
    };
    assert_eq!(base_gets(), 1, "{:#?}", proxy.requests());

    // Docker v2s2 manifests do not go in an OCI layout.
    let docker_layout = out.path().join("docker-layout");
    let refused = rig.ftl(
        cache.path(),
        &[
            "build",
            s(&dir),
            "--base",
            &base,
            "--language",
            "generic",
            "--format",
            "docker",
            "--output",
            &format!("oci:{}:v1", s(&docker_layout)),
        ],
    );
    assert_clear_error(&refused, &["--format docker", "OCI image layout"]);
    assert!(!docker_layout.exists());

    // docker-archive, with a name and tag.
    let archive = out.path().join("app.tar");
    let report = rig
        .ftl(
            cache.path(),
            &[
                "build",
                s(&dir),
                "--base",
                &base,
                "--language",
                "generic",
                "--json",
                "--output",
                &format!("docker-archive:{}:my/app:t1", s(&archive)),
            ],
        )
        .report();
    assert_eq!(
        report["layers_built"], 0,
        "the layer comes from the local cache"
    );
    let info = skopeo_inspect(&format!("docker-archive:{}", s(&archive)), false);
    assert_eq!(info["Layers"].as_array().unwrap().len(), 2, "{info:#}");
    let manifest = tool("tar", &["-xOf", s(&archive), "manifest.json"]);
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["my/app:t1"]));
    assert_eq!(
        base_gets(),
        1,
        "the base was downloaded once: {:#?}",
        proxy.requests()
    );
    let rootfs = docker_archive_rootfs(
        &archive,
        &out.path().join("from-archive"),
        &out.path().join("archive-unpack"),
    );
    assert_app_files(&rootfs);

    // Without a name: the directory's name, tag latest.
    let archive = out.path().join("plain.tar");
    rig.ftl(
        cache.path(),
        &[
            "build",
            s(&dir),
            "--base",
            &base,
            "--language",
            "generic",
            "--json",
            "--output",
            &format!("docker-archive:{}", s(&archive)),
        ],
    )
    .report();
    let manifest = tool("tar", &["-xOf", s(&archive), "manifest.json"]);
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["app:latest"]));
}

/// A base whose one layer appears twice: pushed once, exported once,
/// listed twice, read back by skopeo and umoci.
#[test]
fn a_layer_that_appears_twice_is_pushed_and_exported_once() {
    let rig = rig();
    let proxy = FaultProxy::start(&rig.registry.url()).unwrap();
    push_tiny_image(&rig.registry.host(), None, "base/twice", 2);
    let (_tmp, dir) = app(None);
    let cache = tempfile::tempdir().unwrap();
    let base = format!("{}/base/twice:latest", proxy.host());
    let image = format!("{}/gen/twice:v1", proxy.host());
    let report = build(cache.path(), &dir, &base, &image, &[]).report();
    let bases = base_layers(&report);
    assert_eq!(bases.len(), 2);
    assert_eq!(bases[0]["digest"], bases[1]["digest"]);
    let digest = bases[0]["digest"].as_str().unwrap();
    let mounts = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains(&digest.replace(':', "%3A")))
        .count();
    assert_eq!(mounts, 1, "mounted once: {:#?}", proxy.requests());
    let info = skopeo_inspect(
        &format!("docker://{}/gen/twice:v1", rig.registry.host()),
        false,
    );
    assert_eq!(info["Layers"].as_array().unwrap().len(), 3);

    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("twice.tar");
    rig.ftl(
        cache.path(),
        &[
            "build",
            s(&dir),
            "--base",
            &base,
            "--language",
            "generic",
            "--json",
            "--output",
            &format!("docker-archive:{}", s(&archive)),
        ],
    )
    .report();
    let listing = tool("tar", &["-tf", s(&archive)]);
    let layer_files: Vec<&str> = listing
        .lines()
        .filter(|l| l.ends_with("/layer.tar"))
        .collect();
    assert_eq!(layer_files.len(), 2, "each layer stored once:\n{listing}");
    let manifest: serde_json::Value =
        serde_json::from_str(&tool("tar", &["-xOf", s(&archive), "manifest.json"])).unwrap();
    assert_eq!(
        manifest[0]["Layers"].as_array().unwrap().len(),
        3,
        "{manifest}"
    );
    let rootfs = docker_archive_rootfs(
        &archive,
        &out.path().join("copied"),
        &out.path().join("unpack"),
    );
    assert_app_files(&rootfs);

    // A docker-archive path that is a directory: a clear error, and no
    // partial file left next to it.
    let target = out.path().join("a-directory");
    std::fs::create_dir(&target).unwrap();
    let failed = rig.ftl(
        cache.path(),
        &[
            "build",
            s(&dir),
            "--base",
            &base,
            "--language",
            "generic",
            "--output",
            &format!("docker-archive:{}", s(&target)),
        ],
    );
    assert_clear_error(&failed, &[s(&target)]);
    let left: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.iter()
            .all(|n| !n.to_string_lossy().contains("partial")),
        "{left:?}"
    );
}

#[test]
fn unchanged_push_uploads_nothing_and_base_layers_are_never_downloaded() {
    let rig = rig();
    let proxy = FaultProxy::start(&rig.registry.url()).unwrap();
    let base = format!("{}/base/python:latest", proxy.host());
    let image = format!("{}/gen/noop:v1", proxy.host());
    let (_tmp, dir) = app(Some("noop"));
    let cache = tempfile::tempdir().unwrap();

    // First push: the base layer is mounted from base/python, the app
    // layer and config uploaded; no blob is downloaded.
    let first = build(cache.path(), &dir, &base, &image, &[]).report();
    for l in base_layers(&first) {
        assert_eq!(l["push"], "mounted", "{first:#}");
        assert_eq!(l["bytes_uploaded"], 0);
    }
    let app = app_layer(&first);
    assert_eq!(app.3, "uploaded");
    assert_eq!(
        layer_gets(&proxy, &first),
        0,
        "no layer downloaded: {:#?}",
        proxy.requests()
    );
    assert!(
        proxy.response_body_bytes() < 64 * 1024,
        "{:#?}",
        proxy.requests()
    );
    let app_size = first["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "app")
        .unwrap()["size"]
        .as_u64()
        .unwrap();
    assert!(
        proxy.blob_upload_bytes() < app_size + 64 * 1024,
        "only the app layer and config travel: {} bytes",
        proxy.blob_upload_bytes()
    );
    assert_eq!(
        first["bytes_uploaded"].as_u64().unwrap(),
        uploaded_to(&proxy, "gen/noop"),
        "the report counts what went over the wire (layer and config): {first:#}"
    );

    // Unchanged: nothing uploaded, nothing downloaded.
    proxy.clear();
    let second = build(cache.path(), &dir, &base, &image, &[]).report();
    assert_eq!(second["digest"], first["digest"]);
    assert_eq!(second["bytes_uploaded"], 0);
    assert_eq!(second["layers_built"], 0);
    assert_eq!(proxy.request_body_bytes(), 0, "{:#?}", proxy.requests());
    assert_eq!(layer_gets(&proxy, &second), 0, "{:#?}", proxy.requests());
    // The base manifest (its config is cached by digest) and the target
    // manifest HEAD.
    assert_eq!(second["registry_requests"], 2, "{second:#}");
    assert!(
        !proxy.requests().iter().any(|r| r.path.contains("/blobs/")),
        "no blob request: {:#?}",
        proxy.requests()
    );
    for l in second["layers"].as_array().unwrap() {
        assert_eq!(l["push"], "present", "{second:#}");
    }

    // Only the config changes: no layer travels, the config does.
    proxy.clear();
    let env = build(
        cache.path(),
        &dir,
        &base,
        &image,
        &["--env", "MODE=config-only"],
    )
    .report();
    assert_ne!(env["digest"], first["digest"]);
    for l in env["layers"].as_array().unwrap() {
        assert_eq!(l["push"], "present", "{env:#}");
    }
    let config_bytes = uploaded_to(&proxy, "gen/noop");
    assert!(
        config_bytes > 0 && config_bytes < 16 * 1024,
        "{config_bytes}"
    );
    assert_eq!(
        env["bytes_uploaded"].as_u64().unwrap(),
        config_bytes,
        "{env:#}"
    );
    assert_eq!(layer_gets(&proxy, &env), 0);
    // Back to the first image (its manifest is still in the registry).
    let back = build(cache.path(), &dir, &base, &image, &[]).report();
    assert_eq!(back["digest"], first["digest"]);
    assert_eq!(back["bytes_uploaded"], 0);

    // Another machine (empty local cache), same registry: still nothing
    // uploaded or downloaded.
    proxy.clear();
    let other = tempfile::tempdir().unwrap();
    let third = build(other.path(), &dir, &base, &image, &[]).report();
    assert_eq!(third["digest"], first["digest"]);
    assert_eq!(third["bytes_uploaded"], 0);
    assert_eq!(proxy.request_body_bytes(), 0, "{:#?}", proxy.requests());
    assert_eq!(layer_gets(&proxy, &third), 0, "{:#?}", proxy.requests());
    assert!(
        proxy.response_body_bytes() < 64 * 1024,
        "{:#?}",
        proxy.requests()
    );

    // To a new repository: the base is mounted, the app layer mounted from
    // the registry cache or uploaded; the base never downloaded.
    proxy.clear();
    let image2 = format!("{}/gen/noop-elsewhere:v1", proxy.host());
    let fourth = build(cache.path(), &dir, &base, &image2, &[]).report();
    for l in base_layers(&fourth) {
        assert_eq!(l["push"], "mounted", "{fourth:#}");
    }
    assert_eq!(layer_gets(&proxy, &fourth), 0, "{:#?}", proxy.requests());
    assert!(proxy.blob_upload_bytes() < app_size + 64 * 1024);
}

#[test]
fn basic_auth_registry_takes_docker_config_credentials() {
    let registry = registry_with_base(RegistryOptions::htpasswd());
    auth_round_trip(&registry);
}

#[test]
fn token_auth_registry_takes_docker_config_credentials() {
    let registry = registry_with_base(RegistryOptions::token());
    auth_round_trip(&registry);
}

/// Push with the right credentials (base layers mounted under auth, and
/// streamed from another registry); with wrong or no credentials, a clear
/// error that names the registry, shows no secret, and nothing pushed.
fn auth_round_trip(registry: &Registry) {
    let rig = rig();
    let (user, password) = registry.credentials().unwrap();
    let host = registry.host();
    let local_base = format!("{host}/base/tiny:latest");
    let (_tmp, dir) = app(Some("auth"));
    let cache = tempfile::tempdir().unwrap();
    let ftl_build = |config: &Path, base: &str, repo: &str| {
        let image = format!("{host}/{repo}:v1");
        let args = [
            "build",
            s(&dir),
            "--base",
            base,
            "--image",
            &image,
            "--language",
            "generic",
            "--json",
        ];
        run(rig
            .command(cache.path(), &args)
            .env("DOCKER_CONFIG", config))
    };

    let good = docker_config(&host, user, password);
    let report = ftl_build(good.path(), &local_base, "auth/app").report();
    for l in base_layers(&report) {
        assert_eq!(l["push"], "mounted", "{report:#}");
    }
    assert_eq!(registry.tags("auth/app"), ["v1"]);
    let again = ftl_build(good.path(), &local_base, "auth/app").report();
    assert_eq!(again["digest"], report["digest"]);
    assert_eq!(again["bytes_uploaded"], 0);
    // Credentials never reach a log line, even at trace level.
    let (_tmp2, dir2) = app(Some("auth-trace"));
    let image = format!("{host}/auth/trace:v1");
    let traced = run(rig
        .command(
            cache.path(),
            &[
                "--log",
                "trace",
                "build",
                s(&dir2),
                "--base",
                &local_base,
                "--image",
                &image,
                "--language",
                "generic",
                "--json",
            ],
        )
        .env("DOCKER_CONFIG", good.path()));
    traced.report();
    let basic = base64(format!("{user}:{password}").as_bytes());
    for secret in [password, basic.as_str(), "Bearer ey", "\"token\":\"ey"] {
        assert!(
            !traced.stderr.contains(secret),
            "a secret in the log:\n{}",
            traced.stderr
        );
    }
    assert!(
        traced.stderr.len() > 1000,
        "trace logging is on: {}",
        traced.stderr
    );
    // A base on another (anonymous) registry: its layers must travel.
    let remote = ftl_build(good.path(), &tiny_base(), "auth/remote-base").report();
    for l in base_layers(&remote) {
        assert_eq!(l["push"], "uploaded", "{remote:#}");
    }
    assert_eq!(registry.tags("auth/remote-base"), ["v1"]);

    let check = |err: &str| {
        assert!(err.contains(&host), "names the registry: {err}");
        assert!(err.contains("401"), "{err}");
        assert!(
            err.contains("docker login") || err.contains("credentials"),
            "says what to do: {err}"
        );
        assert!(
            !err.contains("wrong-password") && !err.contains(password),
            "no secrets: {err}"
        );
    };
    // A credential helper that is not installed: the error names it.
    let helper = tempfile::tempdir().unwrap();
    std::fs::write(
        helper.path().join("config.json"),
        r#"{"credsStore":"ftl-missing-helper"}"#,
    )
    .unwrap();
    let err = assert_clear_error(&ftl_build(helper.path(), &local_base, "auth/helper"), &[]);
    assert!(
        err.contains("docker-credential-ftl-missing-helper"),
        "{err}"
    );
    assert!(registry.tags("auth/helper").is_empty());

    let wrong = docker_config(&host, user, "wrong-password");
    let none = tempfile::tempdir().unwrap();
    for (config, base, repo) in [
        (wrong.path(), local_base.as_str(), "auth/wrong"),
        (none.path(), local_base.as_str(), "auth/none"),
        // The base reads fine (anonymous): the push is refused.
        (wrong.path(), tiny_base().as_str(), "auth/wrong-push"),
        (none.path(), tiny_base().as_str(), "auth/none-push"),
    ] {
        let err = assert_clear_error(&ftl_build(config, base, repo), &[]);
        eprintln!("{repo}: {err}");
        check(&err);
        assert!(registry.tags(repo).is_empty(), "{repo}");
        assert_eq!(registry.open_uploads(repo), 0, "{repo}");
    }
}

#[test]
fn tls_registry_with_a_private_ca() {
    let registry = registry_with_base(RegistryOptions::tls());
    let ca = registry.ca_pem().unwrap();
    let resolve = format!("{TLS_NAME}=127.0.0.1");
    let host = registry.host();
    assert!(host.starts_with(TLS_NAME));
    let base = format!("{host}/base/tiny:latest");
    let image = format!("{host}/tls/app:v1");
    let (_tmp, dir) = app(Some("tls"));
    let cache = tempfile::tempdir().unwrap();

    let report = build(
        cache.path(),
        &dir,
        &base,
        &image,
        &["--registry-resolve", &resolve, "--registry-ca", s(ca)],
    )
    .report();
    for l in base_layers(&report) {
        assert_eq!(l["push"], "mounted", "{report:#}");
    }
    assert_eq!(registry.tags("tls/app"), ["v1"]);
    let info = skopeo_inspect(
        &format!("docker://127.0.0.1:{}/tls/app:v1", registry.port()),
        false,
    );
    assert_eq!(info["Digest"], report["digest"]);

    // ftl inspect takes the same flags.
    let inspected = rig().ftl(
        cache.path(),
        &[
            "inspect",
            "--json",
            "--registry-resolve",
            &resolve,
            "--registry-ca",
            s(ca),
            &image,
        ],
    );
    assert_eq!(inspected.status, 0, "{}", inspected.stderr);
    let v: serde_json::Value = serde_json::from_str(&inspected.stdout).unwrap();
    assert_eq!(v["digest"], report["digest"]);
    let refused = rig().ftl(
        cache.path(),
        &["inspect", "--registry-resolve", &resolve, &image],
    );
    assert_clear_error(&refused, &[TLS_NAME, "--registry-ca"]);
    let malformed = rig().ftl(
        cache.path(),
        &["inspect", "--registry-resolve", "no-equals", &image],
    );
    assert_clear_error(&malformed, &["--registry-resolve", "HOST=IP"]);

    // Without the CA: a TLS error that says which flag to use.
    let run = build(
        cache.path(),
        &dir,
        &base,
        &format!("{host}/tls/other:v1"),
        &["--registry-resolve", &resolve],
    );
    let err = assert_clear_error(&run, &[TLS_NAME]);
    assert!(err.contains("--registry-ca"), "says what to do: {err}");
    assert!(registry.tags("tls/other").is_empty());

    // Addressed as 127.0.0.1 (always plain HTTP): an HTTPS registry
    // answers the plain request; the error must still make sense.
    let plain = format!("127.0.0.1:{}", registry.port());
    let run = build(
        cache.path(),
        &dir,
        &format!("{plain}/base/tiny:latest"),
        &format!("{plain}/tls/plain:v1"),
        &[],
    );
    assert_clear_error(&run, &[&plain, "400", "speaks HTTPS"]);
    assert!(registry.tags("tls/plain").is_empty());
}

#[test]
fn transient_failures_still_produce_a_complete_image() {
    let rig = rig();
    let proxy = FaultProxy::start(&rig.registry.url()).unwrap();
    let base = format!(
        "{}{}",
        proxy.host(),
        &tiny_base()[rig.registry.host().len()..]
    );
    let image = format!("{}/gen/flaky:v1", proxy.host());
    let (_tmp, dir) = app(Some("flaky"));
    let cache = tempfile::tempdir().unwrap();

    let rules = [
        proxy.add_rule(
            Rule::status(503)
                .method("HEAD")
                .path_contains("/blobs/sha256:")
                .nth(1),
        ),
        // The base config's download cut short.
        proxy.add_rule(
            Rule::truncate_response(100)
                .method("GET")
                .path_contains("/base/tiny/blobs/sha256:")
                .nth(1),
        ),
        // One request that is never answered: timed out and retried.
        proxy.add_rule(
            Rule::delay(Duration::from_secs(600))
                .method("HEAD")
                .path_contains("/blobs/sha256:")
                .nth(2),
        ),
        proxy.add_rule(
            Rule::reset()
                .method("POST")
                .path_contains("/blobs/uploads/")
                .nth(1),
        ),
        proxy.add_rule(
            Rule::status(503)
                .method("PUT")
                .path_contains("/blobs/uploads/")
                .first(2),
        ),
        proxy.add_rule(
            Rule::retry_after(429, 2)
                .method("PUT")
                .path_contains("/manifests/v1")
                .nth(1),
        ),
        proxy.add_rule(
            Rule::retry_after(429, 1)
                .method("POST")
                .path_contains("/blobs/uploads/")
                .nth(2),
        ),
        proxy.add_rule(
            Rule::reset()
                .method("PUT")
                .path_contains("/blobs/uploads/")
                .nth(3),
        ),
        proxy.add_rule(
            Rule::status(503)
                .method("GET")
                .path_contains("/base/tiny/manifests/latest")
                .nth(1),
        ),
        proxy.add_rule(
            Rule::status(502)
                .method("PUT")
                .path_contains("/manifests/v1")
                .nth(2),
        ),
    ];
    let started = std::time::Instant::now();
    let report = build(
        cache.path(),
        &dir,
        &base,
        &image,
        &["--no-registry-cache", "--registry-timeout", "2s"],
    )
    .report();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After: 2 on the manifest PUT was honored"
    );
    for id in rules {
        assert!(
            proxy.fired(id) >= 1,
            "rule {id:?} fired: {:#?}",
            proxy.requests()
        );
    }
    proxy.clear_rules();
    assert_eq!(rig.registry.tags("gen/flaky"), ["v1"]);
    let info = skopeo_inspect(
        &format!("docker://{}/gen/flaky:v1", rig.registry.host()),
        false,
    );
    assert_eq!(info["Digest"], report["digest"]);
    // Every blob is there and whole.
    let out = tempfile::tempdir().unwrap();
    tool(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{}/gen/flaky:v1", rig.registry.host()),
            &format!("oci:{}:t", s(&out.path().join("l"))),
        ],
    );
    let rootfs = umoci_unpack(&out.path().join("l"), "t", out.path());
    assert_app_files(&rootfs);
    assert_eq!(
        rig.registry.open_uploads("gen/flaky"),
        0,
        "no upload session left open"
    );

    // The registry cache repository refuses every write: the cache is an
    // optimisation, so the build still succeeds.
    let (_tmp2, dir) = app(Some("cache-refused"));
    let rule = proxy.add_rule(
        Rule::status(503)
            .path_contains("/gen/cache-refused/ftl-cache/")
            .always(),
    );
    let image = format!("{}/gen/cache-refused:v1", proxy.host());
    let report = build(cache.path(), &dir, &base, &image, &[]).report();
    assert!(proxy.fired(rule) >= 1, "{:#?}", proxy.requests());
    assert_eq!(rig.registry.tags("gen/cache-refused"), ["v1"], "{report:#}");
}

#[test]
fn a_registry_that_never_recovers_fails_clearly_and_writes_no_manifest() {
    let rig = rig();
    let proxy = FaultProxy::start(&rig.registry.url()).unwrap();
    let base = format!(
        "{}{}",
        proxy.host(),
        &tiny_base()[rig.registry.host().len()..]
    );

    // Blob uploads always fail.
    let (_tmp, dir) = app(Some("never-blob"));
    let cache = tempfile::tempdir().unwrap();
    let rule = proxy.add_rule(
        Rule::status(503)
            .method("PUT")
            .path_contains("/blobs/uploads/")
            .always(),
    );
    let image = format!("{}/gen/never-blob:v1", proxy.host());
    let started = std::time::Instant::now();
    let run = build(cache.path(), &dir, &base, &image, &["--no-registry-cache"]);
    let err = assert_clear_error(
        &run,
        &["gen/never-blob", "503", "no manifest", "try again later"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "gives up in time"
    );
    assert!(proxy.fired(rule) >= 2, "retried");
    assert!(rig.registry.tags("gen/never-blob").is_empty(), "{err}");
    assert_eq!(rig.registry.manifest_count("gen/never-blob"), 0);
    assert_eq!(
        proxy.count("PUT", "/manifests/"),
        0,
        "no manifest PUT was even tried"
    );
    proxy.remove_rule(rule);

    // The manifest PUT always fails (connection reset).
    let (_tmp2, dir) = app(Some("never-manifest"));
    let rule = proxy.add_rule(
        Rule::reset()
            .method("PUT")
            .path_contains("/manifests/")
            .always(),
    );
    let image = format!("{}/gen/never-manifest:v1", proxy.host());
    let run = build(cache.path(), &dir, &base, &image, &["--no-registry-cache"]);
    assert_clear_error(&run, &["gen/never-manifest"]);
    assert!(proxy.fired(rule) >= 2, "retried");
    assert!(rig.registry.tags("gen/never-manifest").is_empty());
    assert_eq!(rig.registry.manifest_count("gen/never-manifest"), 0);
    proxy.remove_rule(rule);

    // A registry that takes requests and never answers them: a timeout,
    // retried, then a clear error.
    let (_tmp4, dir) = app(Some("never-answers"));
    let rule = proxy.add_rule(
        Rule::delay(Duration::from_secs(600))
            .method("HEAD")
            .path_contains("/gen/never-answers/manifests/")
            .always(),
    );
    let image = format!("{}/gen/never-answers:v1", proxy.host());
    let started = std::time::Instant::now();
    let run = build(
        cache.path(),
        &dir,
        &base,
        &image,
        &["--no-registry-cache", "--registry-timeout", "1s"],
    );
    assert_clear_error(
        &run,
        &["gen/never-answers", "did not answer", "--registry-timeout"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gave up in time"
    );
    assert!(proxy.fired(rule) >= 2, "retried");
    assert!(rig.registry.tags("gen/never-answers").is_empty());
    proxy.remove_rule(rule);

    // The manifest PUT always answers 500.
    let (_tmp3, dir) = app(Some("never-manifest-500"));
    let rule = proxy.add_rule(
        Rule::status(500)
            .method("PUT")
            .path_contains("/manifests/")
            .always(),
    );
    let image = format!("{}/gen/never-manifest-500:v1", proxy.host());
    let run = build(cache.path(), &dir, &base, &image, &["--no-registry-cache"]);
    assert_clear_error(&run, &["gen/never-manifest-500", "500", "try again later"]);
    assert!(proxy.fired(rule) >= 2, "retried");
    assert!(rig.registry.tags("gen/never-manifest-500").is_empty());
    assert_eq!(rig.registry.manifest_count("gen/never-manifest-500"), 0);
    proxy.remove_rule(rule);
}

#[test]
fn bad_input_fails_clearly_and_pushes_nothing() {
    let rig = rig();
    let (_tmp, dir) = app(None);
    let cache = tempfile::tempdir().unwrap();
    let base = rig.base("python");
    let host = rig.registry.host();
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let missing = dir.parent().unwrap().join("no-such-dir");
    let file = dir.join("index.html");
    let cases: Vec<(&str, PathBuf, String, String, Vec<String>)> = vec![
        (
            "malformed image",
            dir.clone(),
            base.clone(),
            format!("{host}/Bad_Repo::x"),
            vec!["--image".into(), "Bad_Repo".into()],
        ),
        (
            "registry port out of range",
            dir.clone(),
            base.clone(),
            "127.0.0.1:99999/bad/port:v1".to_string(),
            vec!["--image".into(), "127.0.0.1:99999".into(), "port".into()],
        ),
        (
            "malformed base",
            dir.clone(),
            "not//valid".into(),
            format!("{host}/bad/base:v1"),
            vec!["--base".into(), "not//valid".into()],
        ),
        (
            "missing dir",
            missing.clone(),
            base.clone(),
            format!("{host}/bad/missing:v1"),
            vec![s(&missing).into(), "does not exist".into()],
        ),
        (
            "dir is a file",
            file.clone(),
            base.clone(),
            format!("{host}/bad/file:v1"),
            vec![s(&file).into(), "not a directory".into()],
        ),
        (
            "no such base",
            dir.clone(),
            format!("{host}/base/nope:latest"),
            format!("{host}/bad/nobase:v1"),
            vec![
                "base image".into(),
                "base/nope:latest".into(),
                "not found".into(),
            ],
        ),
        (
            "no such base tag",
            dir.clone(),
            format!("{host}/base/python:nope"),
            format!("{host}/bad/notag:v1"),
            vec![
                "base image".into(),
                "base/python:nope".into(),
                "not found".into(),
            ],
        ),
        (
            "unreachable base registry",
            dir.clone(),
            format!("127.0.0.1:{dead}/base/python:latest"),
            format!("{host}/bad/deadbase:v1"),
            vec![format!("127.0.0.1:{dead}"), "could not reach".into()],
        ),
        (
            "unreachable target registry",
            dir.clone(),
            base.clone(),
            format!("127.0.0.1:{dead}/bad/dead:v1"),
            vec![format!("127.0.0.1:{dead}"), "could not reach".into()],
        ),
    ];
    for (what, dir, base, image, needles) in cases {
        let started = std::time::Instant::now();
        let run = build(cache.path(), &dir, &base, &image, &[]);
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        let err = assert_clear_error(&run, &needles);
        // With --json, stdout holds the error as JSON, not a report.
        let json: serde_json::Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{what}: stdout is JSON ({e}): {}", run.stdout));
        assert!(json.get("digest").is_none(), "{what}: no report: {json:#}");
        assert_eq!(json["schema"], 1, "{what}: {json:#}");
        assert!(
            json["error"]["kind"].is_string(),
            "{what}: an error with a kind: {json:#}"
        );
        assert_eq!(
            format!("error: {}", json["error"]["message"].as_str().unwrap()),
            err,
            "{what}: the same message as on stderr"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: fails fast"
        );
        if let Some(repo) = image
            .strip_prefix(&format!("{host}/"))
            .and_then(|r| r.split_once(':'))
            .map(|r| r.0)
        {
            assert!(
                rig.registry.tags(repo).is_empty(),
                "{what}: nothing pushed ({err})"
            );
        }
    }
    // A file name that is not UTF-8: an error naming it, not a panic.
    {
        use std::os::unix::ffi::OsStrExt;
        let (_tmp, odd) = app(None);
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
        std::fs::write(odd.join(name), "x").unwrap();
        let run = build(cache.path(), &odd, &base, &rig.image("bad/utf8:v1"), &[]);
        assert_clear_error(&run, &["caf\\xE9.txt", "UTF-8", ".dockerignore"]);
        assert!(rig.registry.tags("bad/utf8").is_empty());
    }
    // Bad flags: one error each.
    for (args, needle) in [
        (vec!["--env", "NOEQUALS"], "--env"),
        (vec!["--port", "eighty"], "--port"),
        (vec!["--entrypoint", "'unbalanced"], "--entrypoint"),
        (vec!["--port", "0"], "--port"),
        (vec!["--label", "=x"], "--label"),
        (vec!["--platform", "linux"], "--platform"),
        // The base is amd64 only.
        (
            vec!["--platform", "linux/arm64"],
            "linux/amd64, not linux/arm64",
        ),
    ] {
        let run = build(
            cache.path(),
            &dir,
            &rig.base("python"),
            &rig.image("bad/flags:v1"),
            &args,
        );
        assert_clear_error(&run, &[needle]);
    }
    assert!(rig.registry.tags("bad/flags").is_empty());
}

#[test]
fn inspect_prints_the_summary_and_json_parses() {
    let rig = rig();
    let (_tmp, dir) = app(Some("inspect"));
    let cache = tempfile::tempdir().unwrap();
    let image = rig.image("gen/inspect:v1");
    let args = [
        "build",
        s(&dir),
        "--base",
        &tiny_base(),
        "--image",
        &image,
        "--language",
        "generic",
        "--entrypoint",
        "/srv/run.sh",
        "--cmd",
        r#"["--verbose"]"#,
        "--env",
        "GREETING=hello world",
        "--port",
        "8080",
        "--label",
        "org.example.team=ftl",
    ];
    // Human output: the last line is the image reference with its digest.
    let human = rig.ftl(cache.path(), &args);
    assert_eq!(human.status, 0, "{}", human.stderr);
    let last = human
        .stdout
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(
        last.starts_with(&format!("{image}@sha256:")),
        "last line is the reference: {}",
        human.stdout
    );
    let digest = last.split_once('@').unwrap().1.to_string();

    let summary = rig.ftl(cache.path(), &["inspect", &image]);
    assert_eq!(summary.status, 0, "{}", summary.stderr);
    let out = &summary.stdout;
    for needle in [
        digest.as_str(),
        "application/vnd.oci.image.manifest.v1+json",
        "linux/amd64",
        "/srv/run.sh",
        "--verbose",
        "GREETING=hello world",
        "8080/tcp",
        "org.example.team=ftl",
    ] {
        assert!(out.contains(needle), "inspect shows {needle:?}:\n{out}");
    }
    let layer_lines = out
        .lines()
        .skip_while(|l| !l.starts_with("Layers:"))
        .skip(1)
        .count();
    assert_eq!(layer_lines, 2, "{out}");

    let json = rig.ftl(cache.path(), &["inspect", "--json", &image]);
    assert_eq!(json.status, 0, "{}", json.stderr);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("inspect --json is JSON");
    assert_eq!(v["digest"], digest.as_str());
    assert_eq!(
        v["config"]["config"]["Entrypoint"],
        serde_json::json!(["/srv/run.sh"])
    );
    assert_eq!(
        v["config"]["config"]["Cmd"],
        serde_json::json!(["--verbose"])
    );
    assert!(v["config"]["config"]["ExposedPorts"]["8080/tcp"].is_object());
    assert_eq!(v["config"]["config"]["Labels"]["org.example.team"], "ftl");
    assert_eq!(v["manifest"]["layers"].as_array().unwrap().len(), 2);
    let annotations = &v["manifest"]["annotations"];
    assert_eq!(
        annotations["org.opencontainers.image.base.name"],
        tiny_base().as_str(),
        "{v:#}"
    );

    // And a missing image: a clear error.
    let missing = rig.ftl(cache.path(), &["inspect", &rig.image("gen/inspect:nope")]);
    assert_clear_error(&missing, &["gen/inspect:nope", "not found"]);
}

/// The digest `repo:tag` names in the rig's registry.
fn tag_digest(reference: &str) -> String {
    skopeo_inspect(&format!("docker://{reference}"), false)["Digest"]
        .as_str()
        .expect("skopeo prints the digest")
        .to_string()
}

#[test]
fn a_failed_verification_leaves_every_tag_where_it_was() {
    let rig = rig();
    let base = rig.base("python");
    let host = rig.registry.host();
    let cache = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let digest_file = files.path().join("digest");
    let refs_file = files.path().join("image-refs");
    let repo = "gen/verify-tags";
    let image = rig.image(&format!("{repo}:v1"));
    let (_tmp, dir) = app(Some("verify-tags: good"));
    let outputs = [
        "--digest-file",
        s(&digest_file),
        "--image-refs",
        s(&refs_file),
    ];
    let mut args = vec![
        "--tag",
        "stable",
        "--tag",
        "v1",
        "--verify-cmd",
        "/bin/true",
    ];
    args.extend(outputs);
    let good = build(cache.path(), &dir, &base, &image, &args).report();
    let digest = good["digest"].as_str().unwrap().to_string();
    assert_eq!(good["schema"], 1);
    assert_eq!(good["platform"], "linux/amd64");
    assert_eq!(
        good["tags"],
        serde_json::json!([format!("{host}/{repo}:v1"), format!("{host}/{repo}:stable")]),
        "the image's own tag first, each once"
    );
    assert_eq!(std::fs::read_to_string(&digest_file).unwrap(), digest);
    assert_eq!(
        std::fs::read_to_string(&refs_file).unwrap(),
        format!("{host}/{repo}@{digest}\n")
    );
    for tag in ["v1", "stable"] {
        assert_eq!(tag_digest(&format!("{host}/{repo}:{tag}")), digest);
    }
    let phases: Vec<&str> = good["timings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["phase"].as_str().unwrap())
        .collect();
    let at = |p: &str| phases.iter().position(|x| *x == p).unwrap();
    assert!(
        at("push") < at("verify") && at("verify") < at("tag"),
        "{phases:?}"
    );

    // A change whose verification fails: pushed by digest, never tagged.
    std::fs::remove_file(&digest_file).unwrap();
    std::fs::remove_file(&refs_file).unwrap();
    std::fs::write(dir.join("marker.txt"), "verify-tags: bad\n").unwrap();
    let mut args = vec!["--tag", "stable", "--verify-cmd", "/bin/sh -c 'exit 3'"];
    args.extend(outputs);
    let run = build(cache.path(), &dir, &base, &image, &args);
    let err = assert_clear_error(&run, &["verification failed"]);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["error"]["kind"], "verify", "{json:#}");
    for tag in ["v1", "stable"] {
        assert_eq!(
            tag_digest(&format!("{host}/{repo}:{tag}")),
            digest,
            "{tag} still names the good image ({err})"
        );
    }
    assert_eq!(
        rig.registry.manifest_count(repo),
        2,
        "the failed image was pushed by digest"
    );
    assert!(!digest_file.exists() && !refs_file.exists());

    // Without verification the tags go with the manifest.
    let r = build(cache.path(), &dir, &base, &image, &["--tag", "other"]).report();
    for tag in ["v1", "other"] {
        assert_eq!(tag_digest(&format!("{host}/{repo}:{tag}")), r["digest"]);
    }
    assert_eq!(tag_digest(&format!("{host}/{repo}:stable")), digest);

    // An export is verified before anything is written.
    for output in ["oci", "docker-archive"] {
        let out = files.path().join(format!("{output}-out"));
        let run = rig.ftl(
            cache.path(),
            &[
                "build",
                s(&dir),
                "--base",
                &base,
                "--language",
                "generic",
                "--output",
                &format!("{output}:{}", s(&out)),
                "--verify-cmd",
                "/bin/sh -c 'exit 3'",
                "--json",
            ],
        );
        assert_clear_error(&run, &["verification failed"]);
        assert!(!out.exists(), "{output}: nothing written");
    }
}

/// The `--json` report and error are a contract (schema 1): their shape is
/// pinned here, digests, sizes, counts, timings and the registry's address
/// filtered.
#[test]
fn the_json_report_and_error_keep_their_shape() {
    let rig = rig();
    let base = rig.base("python");
    let host = rig.registry.host();
    let cache = tempfile::tempdir().unwrap();
    let (_tmp, dir) = app(Some("json-shape"));
    let image = rig.image("gen/json-shape:v1");
    let report = build(
        cache.path(),
        &dir,
        &base,
        &image,
        &["--tag", "stable", "--verify-cmd", "/bin/true"],
    )
    .report();
    std::fs::write(dir.join("marker.txt"), "json-shape: bad\n").unwrap();
    let failed = build(
        cache.path(),
        &dir,
        &base,
        &image,
        &["--verify-cmd", "/bin/sh -c 'exit 3'"],
    );
    failed.error();
    let error: serde_json::Value = serde_json::from_str(&failed.stdout).unwrap();
    let host_pattern = regex_escape(&host);
    let filters = vec![
        (r"sha256:[0-9a-f]{64}", "[digest]"),
        (host_pattern.as_str(), "[registry]"),
        (
            r#""(ms|millis|size|bytes_uploaded|registry_requests)": \d+"#,
            r#""$1": "[n]""#,
        ),
    ];
    insta::with_settings!({filters => filters}, {
        insta::assert_snapshot!("report", serde_json::to_string_pretty(&report).unwrap());
        insta::assert_snapshot!("error", serde_json::to_string_pretty(&error).unwrap());
    });
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

/// A `.gcloudignore` is read with gitignore's rules: `secret.env` leaves
/// out `sub/secret.env` too, `#!include:.gitignore` adds that file's
/// patterns, and the `.dockerignore` beside it is not read. No layer of
/// the image holds an excluded file.
#[test]
fn gcloudignore_rules_leave_files_out_of_every_layer() {
    let rig = rig();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("app");
    for (f, text) in [
        (".gcloudignore", "secret.env\n#!include:.gitignore\n"),
        (".gitignore", "*.log\n"),
        (".dockerignore", "index.html\n"),
        ("index.html", "<p>hi</p>\n"),
        ("secret.env", "TOKEN=1\n"),
        ("sub/secret.env", "TOKEN=2\n"),
        ("sub/debug.log", "x\n"),
        ("sub/page.html", "x\n"),
    ] {
        std::fs::create_dir_all(dir.join(f).parent().unwrap()).unwrap();
        std::fs::write(dir.join(f), text).unwrap();
    }
    let cache = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let built = rig.ftl(
        cache.path(),
        &[
            "build",
            s(&dir),
            "--base",
            &tiny_base(),
            "--language",
            "generic",
            "--json",
            "--output",
            &format!("oci:{}:v1", s(&layout)),
        ],
    );
    let report = built.report();
    assert!(
        report.to_string().contains(".dockerignore is not read"),
        "the report warns that .dockerignore is not read: {report}"
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let mut all = Vec::new();
    for layer in manifest["layers"].as_array().unwrap() {
        // The tiny base's layer (made by umoci) makes tar warn; its list
        // is still complete.
        let path = blob(layer["digest"].as_str().unwrap());
        let listed = run(Command::new("tar").args(["-tzf", s(&path)]));
        assert!(!listed.stdout.is_empty(), "{}", listed.stderr);
        all.extend(listed.stdout.lines().map(str::to_string));
    }
    assert!(
        all.iter().any(|f| f.ends_with("srv/index.html")),
        "{all:#?}"
    );
    assert!(
        all.iter().any(|f| f.ends_with("srv/sub/page.html")),
        "{all:#?}"
    );
    for gone in ["secret.env", "debug.log"] {
        assert!(
            !all.iter().any(|f| f.ends_with(gone)),
            "{gone} in a layer: {all:#?}"
        );
    }
}

/// `ftl cache ls` prints sizes as the build summary does (`1.2 KiB`);
/// `--bytes` prints them as numbers, and `--json` keeps numbers.
#[test]
fn cache_ls_prints_sizes_for_people_and_bytes_on_request() {
    let rig = rig();
    let (tmp, dir) = app(Some("cache-ls"));
    // Big enough that its layer is over a KiB, compressed.
    let noise: String = (0..4000u32)
        .map(|i| format!("{:08x}", i.wrapping_mul(2_654_435_761)))
        .collect();
    std::fs::write(dir.join("noise.txt"), noise).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let report = rig
        .ftl(
            cache.path(),
            &[
                "build",
                s(&dir),
                "--base",
                &tiny_base(),
                "--language",
                "generic",
                "--json",
                "--output",
                &format!("oci:{}:v1", s(&layout)),
            ],
        )
        .report();
    let (_, digest, _, _) = app_layer(&report);
    let size = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["digest"] == digest.as_str())
        .unwrap()["size"]
        .as_u64()
        .unwrap();
    assert!(size > 1024, "{report:#}");
    let short = &digest.trim_start_matches("sha256:")[..12];
    let row = |args: &[&str]| -> String {
        let ls = rig.ftl(cache.path(), args);
        assert_eq!(ls.status, 0, "{}", ls.stderr);
        ls.stdout
            .lines()
            .find(|l| l.contains(short))
            .unwrap_or_else(|| panic!("no entry of {short}:\n{}", ls.stdout))
            .to_string()
    };
    let human = row(&["cache", "ls"]);
    let kib = format!("{:.1} KiB", size as f64 / 1024.0);
    assert!(human.contains(&kib), "{kib} in {human}");
    assert!(!human.contains(&size.to_string()), "{human}");
    let raw = row(&["cache", "ls", "--bytes"]);
    assert_eq!(
        raw.split_whitespace().nth(2),
        Some(size.to_string().as_str()),
        "{raw}"
    );
    let json = rig.ftl(cache.path(), &["cache", "ls", "--json"]);
    let entry: serde_json::Value = json
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["digest"] == digest.as_str())
        .unwrap_or_else(|| panic!("{}", json.stdout));
    assert_eq!(entry["size"], size);
}

/// The mount points under `dir` in this process's mount namespace.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = s(dir);
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(dir))
        .map(str::to_string)
        .collect()
}

/// Ctrl-C while the image is being verified: ftl stops the app, unmounts
/// the overlay and the volumes of the verification, removes its temp
/// directory, says it was interrupted and exits 130; no tag moves. (Killed
/// without that, it left an overlay mount and a directory under `tmp/`.)
#[test]
fn ctrl_c_during_verify_stops_the_app_and_leaves_no_mount_or_temp_dir() {
    let rig = rig();
    let (_tmp, dir) = app(Some("interrupted"));
    let cache = tempfile::tempdir().unwrap();
    let repo = "gen/interrupted";
    let mut child = rig
        .command(
            cache.path(),
            &[
                "build",
                s(&dir),
                "--base",
                &rig.base("python"),
                "--image",
                &rig.image(&format!("{repo}:v1")),
                "--language",
                "generic",
                "--json",
                "--verify-timeout",
                "10m",
                "--verify-cmd",
                "/bin/sh -c 'echo up > /srv/started; exec sleep 600'",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The app has started when its file is in the overlay's upper
    // directory (or the copied root, where overlayfs is unavailable).
    let tmp = cache.path().join("tmp");
    let started = || {
        std::fs::read_dir(&tmp)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                ["rw/upper/srv/started", "copy/srv/started"]
                    .iter()
                    .any(|f| e.path().join(f).exists())
            })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while !started() {
        if let Some(st) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "ftl ended ({st}) before verification started:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "verification never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !mounts_under(cache.path()).is_empty(),
        "the verification's root is mounted while it runs"
    );
    // SAFETY: a signal to the child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let t = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "ftl took {:?} to stop",
        t.elapsed()
    );
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("interrupted"))
        .collect();
    assert_eq!(said.len(), 1, "one line says so: {stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["error"]["kind"], "interrupted", "{json:#}");
    assert_eq!(mounts_under(cache.path()), Vec::<String>::new());
    let left: Vec<PathBuf> = std::fs::read_dir(&tmp)
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left in {}: {left:?}", tmp.display());
    assert!(rig.registry.tags(repo).is_empty(), "no tag moved");
}
