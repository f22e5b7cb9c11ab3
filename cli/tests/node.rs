//! The Node.js plugin end to end, as a user runs it: a real registry, base
//! images built from Debian packages (node 18, npm 9), real npm in ftl's
//! sandbox against the npm registry.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ftl_test_support::rig::{self, app_layers, built, uploaded, Rig};

fn testdata(app: &str) -> PathBuf {
    rig::testdata("node", app)
}

/// A private copy of a testdata app, to edit.
fn copy_app(app: &str) -> (tempfile::TempDir, PathBuf) {
    rig::copy_app("node", app)
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        Rig::start(env!("CARGO_BIN_EXE_ftl"), &["node", "node-build"]).expect("test rig starts")
    })
}

/// One local ftl cache for the whole suite, as on a developer's machine:
/// the base rootfs is unpacked (and the runtime probed) once per base, not
/// once per test. Each test builds its own apps into its own repository, so
/// its first build is still a miss where it asserts one.
struct SharedCache(&'static Path);

impl SharedCache {
    fn path(&self) -> &'static Path {
        self.0
    }
}

fn shared_cache() -> SharedCache {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    SharedCache(
        DIR.get_or_init(|| ftl_test_support::owned_temp_dir("ftl-node-cache-").unwrap())
            .path(),
    )
}

fn layer_digest(report: &serde_json::Value, name: &str) -> String {
    app_layers(report)
        .into_iter()
        .find(|l| l.0 == name)
        .unwrap_or_else(|| panic!("no layer {name}: {report:#}"))
        .1
}

/// Every file of the registry's storage (blobs, manifests, links).
fn storage_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !rig::is_volume_image(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// The file names in a layer blob of the registry (`tar tzf`).
fn layer_files(rig: &Rig, digest: &str) -> Vec<String> {
    let hex = digest.trim_start_matches("sha256:");
    let blob = rig
        .registry
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let out = Command::new("tar").arg("tzf").arg(&blob).output().unwrap();
    assert!(
        out.status.success(),
        "tar tzf {}: {}",
        blob.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The bytes of `path`, gunzipped when it is gzip.
fn plain_bytes(path: &Path) -> Vec<u8> {
    // Upload sessions and temporary files come and go while we look.
    let Ok(raw) = std::fs::read(path) else {
        return Vec::new();
    };
    if raw.starts_with(&[0x1f, 0x8b]) {
        let out = Command::new("gzip").arg("-dc").arg(path).output().unwrap();
        let mut all = raw;
        all.extend(out.stdout);
        return all;
    }
    raw
}

fn contains(hay: &[u8], needle: &str) -> bool {
    String::from_utf8_lossy(hay).contains(needle)
}

/// Asserts `token` is in no file of the registry's storage (every blob,
/// manifest and link, gunzipped when gzip) nor of ftl's local cache
/// (blobs, keys, probes, the package cache), except the base images' own
/// blobs and their unpacked rootfs (not ftl's output; pushed before the
/// build, and large).
fn assert_token_nowhere(rig: &Rig, cache: &Path, token: &str) {
    let mut base_layers: Vec<String> = Vec::new();
    for name in ["node", "node-build"] {
        let dir = ftl_test_support::base_images::base_image_dir(name).unwrap();
        for e in std::fs::read_dir(dir.join("blobs/sha256"))
            .unwrap()
            .flatten()
        {
            base_layers.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    let is_base = |f: &Path| {
        f.components().any(|c| c.as_os_str() == "rootfs")
            || base_layers
                .iter()
                .any(|hex| f.components().any(|c| c.as_os_str() == hex.as_str()))
    };
    let mut checked = 0;
    for root in [rig.registry.storage_dir(), cache.to_path_buf()] {
        for f in storage_files(&root).into_iter().filter(|f| !is_base(f)) {
            assert!(
                !contains(&plain_bytes(&f), token),
                "the token is in {}",
                f.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 5);
}

#[test]
fn express_builds_verifies_and_rebuilds_incrementally() {
    let rig = rig();
    let cache = shared_cache();
    let (_tmp, app) = copy_app("express");
    let image = rig.image("node/express:e2e");
    let base = rig.base("node");

    // Cold: both layers built and pushed; the app answers HTTP 200.
    let cold = rig
        .build(cache.path(), &app, &base, &image, &["--verify"])
        .report();
    assert_eq!(cold["verify"]["status"], 200, "{cold:#}");
    let names: Vec<String> = app_layers(&cold).into_iter().map(|l| l.0).collect();
    assert_eq!(names, ["node_modules", "app"]);
    assert_eq!(built(&cold), names);

    // node_modules is at /srv/node_modules; the source's own node_modules
    // (testdata has a stale one) and nothing of dev tooling ships in the app.
    let deps = layer_files(rig, &layer_digest(&cold, "node_modules"));
    assert!(
        deps.iter()
            .any(|f| f == "srv/node_modules/express/package.json"),
        "{deps:?}"
    );
    let app_files = layer_files(rig, &layer_digest(&cold, "app"));
    assert!(
        app_files.iter().any(|f| f == "srv/server.js"),
        "{app_files:?}"
    );
    assert!(
        !app_files.iter().any(|f| f.contains("node_modules")),
        "{app_files:?}"
    );

    // Unchanged: nothing built, nothing uploaded, same digest.
    let noop = rig.build(cache.path(), &app, &base, &image, &[]).report();
    assert_eq!(noop["digest"], cold["digest"]);
    assert_eq!(noop["layers_built"], 0);
    assert_eq!(noop["bytes_uploaded"], 0);

    // App code only: one layer built, only it uploaded.
    let msg = std::fs::read_to_string(app.join("lib/message.js")).unwrap();
    std::fs::write(app.join("lib/message.js"), msg.replace("Hello", "Hi")).unwrap();
    let change = rig.build(cache.path(), &app, &base, &image, &[]).report();
    assert_eq!(built(&change), ["app"]);
    assert_eq!(uploaded(&change), ["app"]);
    assert_eq!(
        layer_digest(&change, "node_modules"),
        layer_digest(&cold, "node_modules")
    );
    assert_ne!(change["digest"], cold["digest"]);

    // Lockfile change (one more dependency): the dependency layer is
    // rebuilt (and the app layer, which holds package.json and the
    // lockfile); nothing below it.
    for f in ["package.json", "package-lock.json"] {
        std::fs::copy(testdata("express-plus-ms").join(f), app.join(f)).unwrap();
    }
    let dep = rig
        .build(cache.path(), &app, &base, &image, &["--verify"])
        .report();
    assert_eq!(dep["verify"]["status"], 200, "{dep:#}");
    assert_eq!(built(&dep), ["node_modules", "app"]);
    let deps = layer_files(rig, &layer_digest(&dep, "node_modules"));
    assert!(
        deps.iter().any(|f| f == "srv/node_modules/ms/package.json"),
        "{deps:?}"
    );
    for l in dep["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["source"] == "base")
    {
        assert_ne!(l["push"], "uploaded", "base layers are never uploaded: {l}");
    }
}

#[test]
fn npmrc_token_never_appears_in_layers_config_report_or_cache() {
    let rig = rig();
    let cache = shared_cache();
    let (_tmp, app) = copy_app("express");
    const TOKEN: &str = "ftl-npm-SECRET-7f3a9c2e41d8";
    std::fs::write(
        app.join("lib/message.js"),
        "exports.message = () => \"Hello from the npmrc test\";\n",
    )
    .unwrap();
    std::fs::write(
        app.join(".npmrc"),
        format!("@ftl-private:registry=https://npm.ftl-private.invalid/\n//npm.ftl-private.invalid/:_authToken={TOKEN}\nfund=false\n"),
    )
    .unwrap();
    let image = rig.image("node/npmrc:e2e");
    let run = rig.build(cache.path(), &app, &rig.base("node"), &image, &["--verify"]);
    assert!(
        !run.stdout.contains(TOKEN) && !run.stderr.contains(TOKEN),
        "the token is in ftl's output"
    );
    let report = run.report();
    assert_eq!(report["verify"]["status"], 200);
    let app_files = layer_files(rig, &layer_digest(&report, "app"));
    assert!(
        !app_files.iter().any(|f| f.ends_with(".npmrc")),
        "{app_files:?}"
    );
    assert_token_nowhere(rig, cache.path(), TOKEN);
}

#[test]
fn no_lockfile_resolves_in_the_sandbox() {
    let rig = rig();
    let cache = shared_cache();
    let app = testdata("nolock");
    let image = rig.image("node/nolock:e2e");
    let r = rig
        .build(cache.path(), &app, &rig.base("node"), &image, &["--verify"])
        .report();
    assert_eq!(r["verify"]["status"], 200, "{r:#}");
    assert_eq!(built(&r), ["node_modules", "app"]);
    // Within the TTL an unchanged rebuild reuses the unpinned layer.
    let again = rig
        .build(cache.path(), &app, &rig.base("node"), &image, &[])
        .report();
    assert_eq!(again["layers_built"], 0);
    // The cache entry of the unpinned layer expires.
    let keys = cache.path().join("keys-v1");
    let expiring = std::fs::read_dir(&keys)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(e.path()).ok()?).ok()
        })
        .filter(|e| {
            e["name"] == "node_modules"
                && e["inputs"]
                    .as_str()
                    .unwrap_or("")
                    .contains(r#""lockfile":null"#)
        })
        .collect::<Vec<_>>();
    assert!(
        !expiring.is_empty(),
        "no cache entry for the no-lockfile layer"
    );
    assert!(
        expiring.iter().all(|e| e["expires"].is_u64()),
        "the unpinned node_modules entry has an expiry: {expiring:?}"
    );
}

#[test]
fn gcp_build_output_ships_and_dev_dependencies_do_not() {
    let rig = rig();
    let cache = shared_cache();
    let app = testdata("gcp-build");
    let image = rig.image("node/gcp-build:e2e");
    let r = rig
        .build(cache.path(), &app, &rig.base("node"), &image, &["--verify"])
        .report();
    assert_eq!(r["verify"]["status"], 200, "{r:#}");
    let app_files = layer_files(rig, &layer_digest(&r, "app"));
    assert!(
        app_files.iter().any(|f| f == "srv/dist/server.js"),
        "{app_files:?}"
    );
    for l in app_layers(&r) {
        let files = layer_files(rig, &l.1);
        assert!(
            !files.iter().any(|f| f.contains("left-pad")),
            "dev dependency shipped in {}: {files:?}",
            l.0
        );
    }
    let again = rig
        .build(cache.path(), &app, &rig.base("node"), &image, &[])
        .report();
    assert_eq!(again["layers_built"], 0);
    assert_eq!(again["bytes_uploaded"], 0);
}

/// What the app's own `postinstall` writes into the app directory ships:
/// `generated/version.js`, which the server requires, is in the app layer
/// and the image answers. Unchanged, nothing is rebuilt. A `postinstall`
/// that also changes `node_modules` fails, naming the script and the file.
#[test]
fn postinstall_output_ships_in_the_app_layer() {
    let rig = rig();
    let cache = shared_cache();
    let app = testdata("postinstall");
    let image = rig.image("node/postinstall:e2e");
    let r = rig
        .build(cache.path(), &app, &rig.base("node"), &image, &["--verify"])
        .report();
    assert_eq!(r["verify"]["status"], 200, "{r:#}");
    let app_files = layer_files(rig, &layer_digest(&r, "app"));
    assert!(
        app_files.iter().any(|f| f == "srv/generated/version.js"),
        "{app_files:?}"
    );
    assert!(
        !app_files.iter().any(|f| f.contains("node_modules")),
        "{app_files:?}"
    );
    assert!(
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["label"] == "npm run-script --ignore-scripts postinstall"),
        "{r:#}"
    );
    let again = rig
        .build(cache.path(), &app, &rig.base("node"), &image, &[])
        .report();
    assert_eq!(again["layers_built"], 0, "{again:#}");
    assert_eq!(again["digest"], r["digest"]);

    let (_tmp, patched) = copy_app("postinstall");
    let pj = std::fs::read_to_string(patched.join("package.json")).unwrap();
    std::fs::write(
        patched.join("package.json"),
        pj.replace(
            "\"node gen.js\"",
            "\"node gen.js && echo patched > node_modules/ms/patched.txt\"",
        ),
    )
    .unwrap();
    let run = rig.build(
        cache.path(),
        &patched,
        &rig.base("node"),
        &rig.image("node/postinstall-patch:e2e"),
        &[],
    );
    let err = run.error();
    assert!(
        err.contains("the `postinstall` script of package.json changed 1 file(s) in node_modules")
            && err.contains("node_modules/ms/patched.txt"),
        "{err}"
    );
}

#[test]
fn native_module_builds_with_the_base_toolchain() {
    let rig = rig();
    let cache = shared_cache();
    let image = rig.image("node/native:e2e");
    let r = rig
        .build(
            cache.path(),
            &testdata("native"),
            &rig.base("node-build"),
            &image,
            &["--verify"],
        )
        .report();
    assert_eq!(r["verify"]["status"], 200, "{r:#}");
    let deps = layer_files(rig, &layer_digest(&r, "node_modules"));
    assert!(deps.iter().any(|f| f.starts_with("srv/node_modules/epoll/build/Release/") && f.ends_with(".node")), "{deps:?}");
}

/// Issue 11, for npm: `node_modules` is keyed by node's version and ABI
/// and the toolchain's version, not the base, so an addon node-gyp
/// compiled on one base (which may link its libraries) was reused on any
/// base with the same node and compiler. It is now recorded for the base
/// it was compiled on: a base of the same node and toolchain but another
/// digest compiles it again (and the image runs), and the first base
/// still reuses its own.
#[test]
fn a_native_module_compiled_on_one_base_is_not_reused_on_another() {
    let rig = rig();
    let cache = tempfile::tempdir().unwrap();
    // node-build plus a file: the same node and toolchain, another digest.
    let extra = tempfile::tempdir().unwrap();
    std::fs::write(extra.path().join("motd"), "another base\n").unwrap();
    let rebased = rig.image("base/node-build-plus:latest");
    let made = rig
        .ftl(
            cache.path(),
            &[
                "build",
                extra.path().to_str().unwrap(),
                "--base",
                &rig.base("node-build"),
                "--image",
                &rebased,
                "--language",
                "generic",
                "--app-dir",
                "/etc/ftl-extra",
                "--json",
            ],
        )
        .report();
    assert_eq!(made["layers_built"], 1);

    let app = testdata("native");
    let image = rig.image("node/native-rebased:e2e");
    let first = rig
        .build(cache.path(), &app, &rig.base("node-build"), &image, &[])
        .report();
    assert!(
        built(&first).iter().any(|n| n == "node_modules"),
        "{first:#}"
    );
    let second = rig
        .build(cache.path(), &app, &rebased, &image, &["--verify"])
        .report();
    assert_eq!(second["verify"]["status"], 200, "{second:#}");
    assert!(
        built(&second).iter().any(|n| n == "node_modules"),
        "an addon compiled on another base was reused: {second:#}"
    );
    let again = rig
        .build(cache.path(), &app, &rig.base("node-build"), &image, &[])
        .report();
    assert_eq!(again["layers_built"], 0, "{again:#}");
    assert_eq!(again["digest"], first["digest"]);
}

#[test]
fn native_module_without_a_toolchain_fails_clearly() {
    let rig = rig();
    let cache = shared_cache();
    let repo = "node/native-no-toolchain";
    let run = rig.build(
        cache.path(),
        &testdata("native"),
        &rig.base("node"),
        &rig.image(&format!("{repo}:x")),
        &[],
    );
    let err = run.error();
    for needle in ["epoll", "package.json:", "no C/C++ toolchain", "g++"] {
        assert!(
            err.contains(needle),
            "error should mention {needle:?}:\n{err}"
        );
    }
    assert!(rig.registry.tags(repo).is_empty(), "nothing pushed");
}

#[test]
fn bad_inputs_fail_clearly_and_push_nothing() {
    let rig = rig();
    let cases: &[(&str, &[&str])] = &[
        ("bad-json", &["package.json:7", "invalid JSON", "column"]),
        (
            "bad-out-of-sync",
            &["package.json:10", "out of sync", "left-pad", "npm install"],
        ),
        (
            "bad-missing-package",
            &[
                "package.json:10",
                "ftl-no-such-package-7c1e9a",
                "does not exist",
            ],
        ),
        ("bad-yarn", &["yarn.lock", "no `yarn`"]),
    ];
    for (app, needles) in cases {
        let cache = shared_cache();
        let repo = format!("node/{app}");
        let run = rig.build(
            cache.path(),
            &testdata(app),
            &rig.base("node"),
            &rig.image(&format!("{repo}:x")),
            &[],
        );
        let err = run.error();
        for needle in *needles {
            assert!(
                err.contains(needle),
                "{app}: error should mention {needle:?}:\n{err}"
            );
        }
        assert!(
            err.lines().count() <= 40,
            "{app}: error is a message, not a dump:\n{err}"
        );
        assert!(rig.registry.tags(&repo).is_empty(), "{app}: nothing pushed");
    }
}

/// A tiny private npm registry on loopback that serves one tarball, only
/// with `Authorization: Bearer <token>`; counts authorized and refused
/// requests. Serves at most 200 connections.
struct PrivateRegistry {
    port: u16,
    authorized: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl PrivateRegistry {
    fn start(token: &'static str, tarball: Vec<u8>) -> PrivateRegistry {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let authorized = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let (ok, no) = (authorized.clone(), refused.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().take(200) {
                let Ok(mut conn) = conn else { continue };
                let (ok, no, tarball) = (ok.clone(), no.clone(), tarball.clone());
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let authed = head.contains(&format!(
                        "authorization: bearer {}",
                        token.to_ascii_lowercase()
                    ));
                    let is_tarball = head.starts_with("get /@ftlt/hello/-/hello-1.0.0.tgz");
                    let (status, body): (&str, Vec<u8>) = if !authed {
                        no.fetch_add(1, Ordering::SeqCst);
                        (
                            "401 Unauthorized",
                            b"{\"error\":\"auth required\"}".to_vec(),
                        )
                    } else if is_tarball {
                        ok.fetch_add(1, Ordering::SeqCst);
                        ("200 OK", tarball)
                    } else {
                        ("404 Not Found", b"{\"error\":\"not found\"}".to_vec())
                    };
                    let _ = write!(conn, "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\nconnection: close\r\n\r\n", body.len());
                    let _ = conn.write_all(&body);
                });
            }
        });
        PrivateRegistry {
            port,
            authorized,
            refused,
        }
    }
}

/// `@ftlt/hello@1.0.0` as an npm tarball.
fn hello_tarball() -> Vec<u8> {
    hello_tarball_with(r#"{"name":"@ftlt/hello","version":"1.0.0","main":"index.js"}"#)
}

/// `@ftlt/hello@1.0.0` with the given package.json, as an npm tarball.
fn hello_tarball_with(package_json: &str) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("package");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("package.json"), package_json).unwrap();
    std::fs::write(
        pkg.join("index.js"),
        "module.exports = \"hello from a private registry\";\n",
    )
    .unwrap();
    let out = tmp.path().join("hello.tgz");
    let st = Command::new("tar")
        .arg("czf")
        .arg(&out)
        .arg("-C")
        .arg(tmp.path())
        .arg("package")
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(out).unwrap()
}

/// The private registry listens on the host's loopback, which an install
/// step reaches only where `--egress-allow` names it.
#[test]
fn npmrc_token_reaches_npm_for_a_private_registry_and_nothing_else() {
    let rig = rig();
    let cache = shared_cache();
    const TOKEN: &str = "ftl-private-TOKEN-b5d04e1a97c3";
    let registry = PrivateRegistry::start(TOKEN, hello_tarball());
    let (_tmp, app) = copy_app("private-registry");
    let url = format!("http://127.0.0.1:{}/", registry.port);
    std::fs::write(
        app.join(".npmrc"),
        format!(
            "@ftlt:registry={url}\n//127.0.0.1:{}/:_authToken={TOKEN}\n",
            registry.port
        ),
    )
    .unwrap();
    let lock = serde_json::json!({
        "name": "ftl-private-registry-sample",
        "version": "1.0.0",
        "lockfileVersion": 3,
        "requires": true,
        "packages": {
            "": {"name": "ftl-private-registry-sample", "version": "1.0.0", "dependencies": {"@ftlt/hello": "1.0.0"}},
            "node_modules/@ftlt/hello": {"version": "1.0.0", "resolved": format!("{url}@ftlt/hello/-/hello-1.0.0.tgz")}
        }
    });
    std::fs::write(
        app.join("package-lock.json"),
        serde_json::to_string_pretty(&lock).unwrap(),
    )
    .unwrap();

    let image = rig.image("node/private:e2e");
    let allow = format!("127.0.0.1:{}", registry.port);
    let run = rig.build(
        cache.path(),
        &app,
        &rig.base("node"),
        &image,
        &["--verify", "--egress-allow", &allow],
    );
    assert!(
        !run.stdout.contains(TOKEN) && !run.stderr.contains(TOKEN),
        "the token is in ftl's output"
    );
    let report = run.report();
    assert_eq!(report["verify"]["status"], 200, "{report:#}");
    use std::sync::atomic::Ordering;
    assert!(
        registry.authorized.load(Ordering::SeqCst) >= 1,
        "npm fetched the tarball with the token"
    );
    assert_eq!(
        registry.refused.load(Ordering::SeqCst),
        0,
        "npm never asked without the token"
    );
    let deps = layer_files(rig, &layer_digest(&report, "node_modules"));
    assert!(
        deps.iter()
            .any(|f| f == "srv/node_modules/@ftlt/hello/index.js"),
        "{deps:?}"
    );
    assert_token_nowhere(rig, cache.path(), TOKEN);
}

/// Puts `tarball` into the node suite's shared npm cache, as a content
/// entry named by its sha512, and returns its `integrity`. `npm ci` of a
/// lockfile that names it by `resolved` and `integrity` installs it from
/// there without asking any registry (a step's network reaches no registry
/// on this host).
fn seed_npm_cache(cache: &Path, tarball: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha512::digest(tarball);
    let hex = hex::encode(digest);
    let dir = cache
        .join("persistent/node-package-cache/npm/_cacache/content-v2/sha512")
        .join(&hex[..2])
        .join(&hex[2..4]);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex[4..]), tarball).unwrap();
    format!("sha512-{}", base64(&digest))
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Issue 10: a dependency's `postinstall` replaced `node_modules` with a
/// link to a host directory, and ftl packed the host directory (root-only
/// files included) into the pushed image. The link's target is made inside
/// the sandbox too (its /tmp is a tmpfs), so npm finishes happily; on the
/// host the same path holds a root-only secret. The build fails naming
/// `node_modules`, and the secret is in no blob, manifest or cache file.
/// (The package comes from the npm cache: a step's network reaches no
/// registry on this host.)
#[test]
fn a_postinstall_cannot_swap_node_modules_for_a_host_dir() {
    use std::os::unix::fs::PermissionsExt;
    let rig = rig();
    let cache = shared_cache();
    const SECRET: &str = "HOST-ONLY-SECRET-9b2c71d0";
    let host = ftl_test_support::owned_temp_dir("ftl-root-only-").unwrap();
    let secret = host.path().join("shadow");
    std::fs::write(&secret, format!("root:{SECRET}:19000:0:99999:7:::\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let target = host.path().display().to_string();
    let script = format!(
        "mkdir -p {target} && cd \"$INIT_CWD\" && rm -rf node_modules && ln -s {target} node_modules"
    );
    let pj = serde_json::json!({
        "name": "@ftlt/swap",
        "version": "1.0.0",
        "main": "index.js",
        "scripts": {"postinstall": script},
    });
    let integrity = seed_npm_cache(cache.path(), &hello_tarball_with(&pj.to_string()));
    let (_tmp, app) = copy_app("private-registry");
    let lock = serde_json::json!({
        "name": "ftl-private-registry-sample",
        "version": "1.0.0",
        "lockfileVersion": 3,
        "requires": true,
        "packages": {
            "": {"name": "ftl-private-registry-sample", "version": "1.0.0", "dependencies": {"@ftlt/swap": "1.0.0"}},
            "node_modules/@ftlt/swap": {
                "version": "1.0.0",
                "resolved": "https://registry.npmjs.org/@ftlt/swap/-/swap-1.0.0.tgz",
                "integrity": integrity,
                "hasInstallScript": true
            }
        }
    });
    std::fs::write(
        app.join("package-lock.json"),
        serde_json::to_string_pretty(&lock).unwrap(),
    )
    .unwrap();
    let pj_path = app.join("package.json");
    let mut app_pj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&pj_path).unwrap()).unwrap();
    app_pj["dependencies"] = serde_json::json!({"@ftlt/swap": "1.0.0"});
    std::fs::write(&pj_path, app_pj.to_string()).unwrap();
    let _ = std::fs::remove_file(app.join(".npmrc"));

    let repo = "node/swap";
    let run = rig.build(
        cache.path(),
        &app,
        &rig.base("node"),
        &rig.image(&format!("{repo}:e2e")),
        &[],
    );
    let err = run.error();
    assert!(
        err.contains("`node_modules` left by `npm ci")
            && err.contains("is a symlink, not a directory: refusing to follow it"),
        "npm installed the package and ran its postinstall, and ftl refused the link: {err}"
    );
    assert!(rig.registry.tags(repo).is_empty(), "nothing pushed");
    assert_token_nowhere(rig, cache.path(), SECRET);
}

/// Every regular file of a shared npm cache, with whether it is an entry
/// of `_cacache/content-v2` whose content hashes to its name.
fn shared_npm_cache_files(cache: &Path) -> Vec<(PathBuf, bool)> {
    use sha2::Digest;
    let root = cache.join("persistent/node-package-cache");
    let content = root.join("npm/_cacache/content-v2");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
                continue;
            }
            let path = e.path();
            let verified = path.strip_prefix(&content).ok().is_some_and(|rel| {
                let mut parts = rel.iter().map(|c| c.to_string_lossy().into_owned());
                let algorithm = parts.next().unwrap_or_default();
                let name: String = parts.collect();
                let data = std::fs::read(&path).unwrap();
                match algorithm.as_str() {
                    "sha512" => hex::encode(sha2::Sha512::digest(&data)) == name,
                    "sha256" => hex::encode(sha2::Sha256::digest(&data)) == name,
                    _ => false,
                }
            });
            out.push((path, verified && t.is_file()));
        }
    }
    out
}

/// Issue 10: the npm cache was one read-write directory for every build,
/// so a build's code could plant files that the next build installs. A
/// `gcp-build` script (the app's own code, run with the cache mounted)
/// writes a file into the cache, adds an entry whose name is not the
/// digest of its content, and overwrites every tarball the cache holds.
/// None of it reaches the shared cache, and another app's build, whose
/// `gcp-build` looks for all three, installs the real packages.
#[test]
fn a_build_cannot_plant_a_package_cache_file_for_the_next_build() {
    let rig = rig();
    let cache = ftl_test_support::owned_temp_dir("ftl-node-poison-").unwrap();
    let base = rig.base("node-build");
    let with_gcp_build = |script: &str| {
        let (tmp, app) = copy_app("gcp-build");
        let pj_path = app.join("package.json");
        let mut pj: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&pj_path).unwrap()).unwrap();
        pj["scripts"]["gcp-build"] = script.into();
        std::fs::write(&pj_path, pj.to_string()).unwrap();
        (tmp, app)
    };

    // A clean build fills the shared cache with what it downloaded, as
    // content-addressed entries that verify.
    let clean = rig
        .build(
            cache.path(),
            &testdata("gcp-build"),
            &base,
            &rig.image("node/poison-clean:e2e"),
            &["--no-cache"],
        )
        .report();
    // Each step's report says how it was contained.
    let steps = clean["steps"].as_array().unwrap();
    let npm_ci = steps
        .iter()
        .find(|s| s["label"].as_str().unwrap().starts_with("npm ci"))
        .unwrap_or_else(|| panic!("{clean:#}"));
    assert_eq!(npm_ci["sandbox"]["network"], "egress", "{npm_ci:#}");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(
            npm_ci["sandbox"]["uid_map"], "0 1879048192 65536",
            "{npm_ci:#}"
        );
    }
    let before = shared_npm_cache_files(cache.path());
    assert!(before.len() >= 2, "ms and left-pad are cached: {before:?}");
    assert!(before.iter().all(|(_, ok)| *ok), "{before:?}");

    let fake = format!("_cacache/content-v2/sha512/ab/cd/{}", "ef".repeat(62));
    let attack = format!(
        "c=\"$npm_config_cache\"; echo PLANTED > \"$c/planted.js\" && \
         mkdir -p \"$(dirname \"$c/{fake}\")\" && echo PLANTED > \"$c/{fake}\" && \
         find \"$c/_cacache/content-v2\" -type f -exec sh -c 'echo PLANTED > \"$1\"' _ {{}} \\; && \
         grep -rlq PLANTED \"$c\" && node build.js"
    );
    let (_a, attacker) = with_gcp_build(&attack);
    rig.build(
        cache.path(),
        &attacker,
        &base,
        &rig.image("node/poison-attacker:e2e"),
        &["--no-cache"],
    )
    .report();
    let after = shared_npm_cache_files(cache.path());
    assert_eq!(
        after, before,
        "the attacker's build changed the shared cache"
    );

    let probe =
        "c=\"$npm_config_cache\"; if [ -e \"$c/planted.js\" ] || grep -rlq PLANTED \"$c\"; \
                 then echo POISONED-CACHE; exit 3; fi; node build.js";
    let (_v, victim) = with_gcp_build(probe);
    let r = rig
        .build(
            cache.path(),
            &victim,
            &base,
            &rig.image("node/poison-victim:e2e"),
            &["--no-cache", "--verify"],
        )
        .report();
    assert_eq!(r["verify"]["status"], 200, "{r:#}");
}

#[test]
fn yarn_lock_installs_with_the_base_yarn() {
    let rig = rig();
    let cache = shared_cache();
    let image = rig.image("node/yarn:e2e");
    let r = rig
        .build(
            cache.path(),
            &testdata("yarn"),
            &rig.base("node-build"),
            &image,
            &["--verify"],
        )
        .report();
    assert_eq!(r["verify"]["status"], 200, "{r:#}");
    let deps = layer_files(rig, &layer_digest(&r, "node_modules"));
    assert!(
        deps.iter().any(|f| f == "srv/node_modules/ms/package.json"),
        "{deps:?}"
    );
    let again = rig
        .build(
            cache.path(),
            &testdata("yarn"),
            &rig.base("node-build"),
            &image,
            &[],
        )
        .report();
    assert_eq!(again["layers_built"], 0);
}
