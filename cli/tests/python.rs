//! The Python plugin end to end, as a user runs it: a real registry, base
//! images built from Debian packages, real pip in ftl's sandbox.

use std::path::PathBuf;
use std::sync::OnceLock;

use ftl_test_support::proxy::FaultProxy;
use ftl_test_support::rig::{self, app_layers, built, digests, Rig};

fn testdata(app: &str) -> PathBuf {
    rig::testdata("python", app)
}

/// A private copy of a testdata app, to edit.
fn copy_app(app: &str) -> (tempfile::TempDir, PathBuf) {
    rig::copy_app("python", app)
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        Rig::start(env!("CARGO_BIN_EXE_ftl"), &["python", "python-trixie"])
            .expect("test rig starts")
    })
}

#[test]
fn flask_builds_verifies_and_rebuilds_incrementally() {
    let rig = rig();
    let cache = tempfile::tempdir().unwrap();
    let (_tmp, app) = copy_app("flask");
    let image = rig.image("py/flask-e2e:v1");
    let base = rig.base("python");

    // Cold: everything built, pushed, and the app answers HTTP 200 in the sandbox.
    let cold = rig
        .build(cache.path(), &app, &base, &image, &["--verify"])
        .report();
    assert_eq!(cold["verify"]["status"], 200, "{cold:#}");
    let names: Vec<String> = app_layers(&cold).into_iter().map(|l| l.0).collect();
    assert_eq!(
        names.first().map(String::as_str),
        Some("python: virtualenv /env")
    );
    assert_eq!(names.last().map(String::as_str), Some("app"));
    assert!(
        names.iter().any(|n| n == "python: flask==3.0.3"),
        "{names:?}"
    );
    assert_eq!(
        built(&cold).len(),
        names.len(),
        "a cold build builds every layer"
    );

    // Unchanged: nothing built, nothing uploaded, same digest.
    let noop = rig.build(cache.path(), &app, &base, &image, &[]).report();
    assert_eq!(noop["digest"], cold["digest"]);
    assert_eq!(noop["layers_built"], 0);
    assert_eq!(noop["bytes_uploaded"], 0);

    // One line of app code: exactly one new layer, only it uploaded.
    let main = std::fs::read_to_string(app.join("main.py")).unwrap();
    std::fs::write(app.join("main.py"), main + "\n# a change\n").unwrap();
    let change = rig.build(cache.path(), &app, &base, &image, &[]).report();
    assert_eq!(built(&change), ["app"]);
    let uploaded: Vec<String> = app_layers(&change)
        .into_iter()
        .filter(|l| l.3 == "uploaded")
        .map(|l| l.0)
        .collect();
    assert_eq!(uploaded, ["app"]);
    assert_ne!(change["digest"], cold["digest"]);

    // One added pinned requirement: only its layer is built, with the lock
    // layer (the image's record of the pinned set, whose build checks the
    // set is complete); every other dependency layer and the app layer keep
    // their digests.
    let reqs = std::fs::read_to_string(app.join("requirements.txt")).unwrap();
    std::fs::write(app.join("requirements.txt"), reqs + "six==1.16.0\n").unwrap();
    let added = rig
        .build(cache.path(), &app, &base, &image, &["--verify"])
        .report();
    assert_eq!(added["verify"]["status"], 200);
    assert_eq!(
        built(&added),
        ["python: six==1.16.0", "python: lock of 10 distributions"],
        "{added:#}"
    );
    let before = digests(&change);
    for (name, digest) in digests(&added) {
        if let Some((_, old)) = before.iter().find(|(n, _)| *n == name) {
            assert_eq!(&digest, old, "layer {name} changed");
        }
    }

    // `ftl cache ls` shows the directories builds use in place; `gc`
    // removes them once unused (0 days: now), with the layer entries.
    let ls = rig.ftl(cache.path(), &["cache", "ls"]);
    assert_eq!(ls.status, 0, "{}", ls.stderr);
    // Base layers as root, a merged base rootfs otherwise.
    let unpacked = ["layers", "rootfs"].map(|k| cache.path().join(k));
    assert!(
        unpacked
            .iter()
            .any(|d| ls.stdout.contains(d.to_str().unwrap())),
        "{}",
        ls.stdout
    );
    // pip's cache stays with each build: nothing of it persists.
    assert!(
        !cache.path().join("persistent").exists()
            || std::fs::read_dir(cache.path().join("persistent"))
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().contains("pip")),
        "a pip cache persisted"
    );
    let gc = rig.ftl(cache.path(), &["cache", "gc", "--keep-days", "0", "--json"]);
    assert_eq!(gc.status, 0, "{}", gc.stderr);
    let gc: serde_json::Value = serde_json::from_str(&gc.stdout).unwrap();
    let removed: Vec<&str> = gc["removed_directories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert!(
        removed
            .iter()
            .any(|p| unpacked.iter().any(|d| p.starts_with(d.to_str().unwrap()))),
        "{gc:#}"
    );
    assert!(
        gc["freed_directory_bytes"].as_u64().unwrap() > 1_000_000,
        "{gc:#}"
    );
    assert!(gc["removed_entries"].as_u64().unwrap() > 0, "{gc:#}");
    for d in unpacked.iter().filter(|d| d.exists()) {
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 0, "{}", d.display());
    }
    // And the next build works: the layers come from the registry's cache,
    // the base rootfs is unpacked again for the check.
    let after = rig
        .build(cache.path(), &app, &base, &image, &["--verify"])
        .report();
    assert_eq!(after["digest"], added["digest"]);
    assert_eq!(after["layers_built"], 0, "{after:#}");
    assert_eq!(after["verify"]["status"], 200);
}

#[test]
fn a_second_machine_hits_the_registry_cache_without_downloading_layers() {
    let rig = rig();
    let proxy = FaultProxy::start(&rig.registry.url()).unwrap();
    let base = format!("{}/base/python:latest", proxy.host());
    let image = format!("{}/py/nodeps-machines:v1", proxy.host());
    let app = testdata("nodeps");
    let first = tempfile::tempdir().unwrap();
    let a = rig.build(first.path(), &app, &base, &image, &[]).report();
    assert!(!built(&a).is_empty());

    // Another machine: an empty local cache, the same registry.
    proxy.clear();
    let second = tempfile::tempdir().unwrap();
    let b = rig.build(second.path(), &app, &base, &image, &[]).report();
    assert_eq!(b["digest"], a["digest"]);
    assert_eq!(b["layers_built"], 0, "{b:#}");
    assert_eq!(b["bytes_uploaded"], 0);
    for l in app_layers(&b) {
        assert_eq!(l.2, "registry-cache", "{l:?}");
    }
    // Only manifests and the base's small config blob were read: no layer.
    let layer_digests: Vec<String> = b["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let layer_gets: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && layer_digests.iter().any(|d| r.path.ends_with(d.as_str())))
        .collect();
    assert!(
        layer_gets.is_empty(),
        "layers were downloaded: {layer_gets:#?}"
    );
    assert!(
        proxy.requests().len() <= 10,
        "a cache-hit rebuild is a handful of requests: {:#?}",
        proxy.requests()
    );
}

#[test]
fn another_python_version_rebuilds_dependencies() {
    let rig = rig();
    let cache = tempfile::tempdir().unwrap();
    let app = testdata("flask");
    let image = rig.image("py/flask-versions:v1");
    let bookworm = rig
        .build(cache.path(), &app, &rig.base("python"), &image, &[])
        .report();
    let trixie = rig
        .build(
            cache.path(),
            &app,
            &rig.base("python-trixie"),
            &image,
            &["--verify"],
        )
        .report();
    assert_eq!(trixie["verify"]["status"], 200);
    // Every dependency layer is rebuilt: the key holds the interpreter
    // version and ABI read from the base. The app layer is the same bytes.
    let rebuilt = built(&trixie);
    assert!(
        rebuilt.iter().any(|n| n == "python: flask==3.0.3"),
        "{rebuilt:?}"
    );
    assert!(
        rebuilt.iter().any(|n| n == "python: virtualenv /env"),
        "{rebuilt:?}"
    );
    assert!(!rebuilt.iter().any(|n| n == "app"));
    assert_ne!(bookworm["digest"], trixie["digest"]);
}

/// App Engine's hello world as people write it: only `Flask==3.0.3` in
/// requirements.txt, no entrypoint. pip's resolver chooses the rest while
/// planning; App Engine's default entrypoint adds gunicorn.
#[test]
fn top_level_pins_resolve_and_rebuild_incrementally() {
    let rig = rig();
    let cache = tempfile::tempdir().unwrap();
    let (_tmp, app) = copy_app("appengine-hello");
    let image = rig.image("py/appengine-hello:v1");
    let base = rig.base("python");

    let cold = rig
        .build(cache.path(), &app, &base, &image, &["--verify"])
        .report();
    assert_eq!(cold["verify"]["status"], 200, "{cold:#}");
    let names: Vec<String> = app_layers(&cold).into_iter().map(|l| l.0).collect();
    for dist in ["flask==3.0.3", "werkzeug==", "jinja2==", "gunicorn=="] {
        assert!(
            names
                .iter()
                .any(|n| n.starts_with(&format!("python: {dist}"))),
            "{dist} has its own layer: {names:?}"
        );
    }
    let plan = &cold["plan"];
    assert_eq!(plan["dependencies"]["mode"], "resolved", "{plan:#}");
    let resolution = &plan["dependencies"]["resolution"];
    assert_eq!(resolution["remembered"], false);
    assert_eq!(resolution["complete_input"], false);
    assert!(resolution["expires_at"].as_u64().is_some(), "{plan:#}");
    let chosen = resolution["chosen"].as_array().unwrap();
    let werkzeug = chosen.iter().find(|d| d["name"] == "Werkzeug").unwrap();
    assert_eq!(werkzeug["requested"], false);
    assert_eq!(werkzeug["via"], "flask");
    assert_eq!(plan["entrypoint"]["inferred"], true);
    assert_eq!(plan["added"][0]["requirement"], "gunicorn");

    // Unchanged: the resolution is remembered; nothing built or uploaded.
    let noop = rig.build(cache.path(), &app, &base, &image, &[]).report();
    assert_eq!(noop["digest"], cold["digest"]);
    assert_eq!(noop["layers_built"], 0);
    assert_eq!(noop["bytes_uploaded"], 0);
    assert_eq!(
        noop["plan"]["dependencies"]["resolution"]["remembered"],
        true
    );
    assert!(
        !noop["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["label"] == "pip resolve"),
        "{noop:#}"
    );

    // App code: one layer.
    let main = std::fs::read_to_string(app.join("main.py")).unwrap();
    std::fs::write(app.join("main.py"), main + "\n# a change\n").unwrap();
    let change = rig.build(cache.path(), &app, &base, &image, &[]).report();
    assert_eq!(built(&change), ["app"]);

    // One added requirement: its layer and the lock layer, nothing else.
    let reqs = std::fs::read_to_string(app.join("requirements.txt")).unwrap();
    std::fs::write(app.join("requirements.txt"), reqs + "six==1.16.0\n").unwrap();
    let added = rig
        .build(cache.path(), &app, &base, &image, &["--verify"])
        .report();
    assert_eq!(added["verify"]["status"], 200);
    // Only the added line was resolved, the earlier choices kept.
    let resolution = &added["plan"]["dependencies"]["resolution"];
    assert_eq!(resolution["incremental"], true, "{resolution:#}");
    let n = names.len() - 2; // less the venv and app layers
    assert_eq!(
        built(&added),
        [
            "python: six==1.16.0".to_string(),
            format!("python: lock of {n} distributions")
        ],
        "{added:#}"
    );
    let before = digests(&change);
    for (name, digest) in digests(&added) {
        if let Some((_, old)) = before.iter().find(|(n, _)| *n == name) {
            assert_eq!(&digest, old, "layer {name} changed");
        }
    }

    // The resolution lives for --cache-ttl: past it, pip is asked again
    // (and, the index unchanged, chooses the same: nothing is built).
    std::thread::sleep(std::time::Duration::from_secs(2));
    let expired = rig
        .build(cache.path(), &app, &base, &image, &["--cache-ttl", "1s"])
        .report();
    assert_eq!(
        expired["plan"]["dependencies"]["resolution"]["remembered"], false,
        "{expired:#}"
    );
    assert_eq!(expired["layers_built"], 0, "{expired:#}");
    assert_eq!(expired["digest"], added["digest"]);
    // `ftl cache gc` drops the resolutions that expired (this one, of a
    // one-second TTL, has).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let gc = rig.ftl(
        cache.path(),
        &["cache", "gc", "--keep-days", "30", "--json"],
    );
    assert_eq!(gc.status, 0, "{}", gc.stderr);
    let gc: serde_json::Value = serde_json::from_str(&gc.stdout).unwrap();
    assert!(gc["removed_resolutions"].as_u64().unwrap() >= 1, "{gc:#}");
}

/// A Heroku-style Django site whose pages need the static files manifest
/// `collectstatic` writes: ftl runs it after the dependencies are installed
/// and ships its output in the app layer.
#[test]
fn a_django_app_gets_collectstatic_run_at_build_time() {
    let rig = rig();
    let cache = tempfile::tempdir().unwrap();
    let (_tmp, app) = copy_app("django");
    let image = rig.image("py/django:v1");
    let base = rig.base("python");
    let cold = rig
        .build(cache.path(), &app, &base, &image, &["--verify"])
        .report();
    assert_eq!(cold["verify"]["status"], 200, "{cold:#}");
    let build = &cold["plan"]["build"];
    assert_eq!(build["command"], "python manage.py collectstatic --noinput");
    assert!(
        build["from"].as_str().unwrap().contains("STATIC_ROOT"),
        "{build:#}"
    );
    assert!(
        cold["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["label"] == "app build"),
        "{cold:#}"
    );
    // Unchanged: nothing runs again.
    let noop = rig.build(cache.path(), &app, &base, &image, &[]).report();
    assert_eq!(noop["layers_built"], 0, "{noop:#}");
    assert_eq!(noop["digest"], cold["digest"]);
    // A changed stylesheet: the app layer only, collected again.
    std::fs::write(app.join("static/css/site.css"), "body { color: red; }\n").unwrap();
    let change = rig
        .build(cache.path(), &app, &base, &image, &["--verify"])
        .report();
    assert_eq!(built(&change), ["app"]);
    assert_eq!(change["verify"]["status"], 200);
    // Turned off, the site has no manifest and every page fails.
    let off = rig.build(
        cache.path(),
        &app,
        &base,
        &rig.image("py/django-off:v1"),
        &["--verify", "--set", "python.collectstatic=false"],
    );
    let err = off.error();
    assert!(err.contains("500"), "{err}");
}

#[test]
fn same_interpreter_on_another_base_digest_reuses_dependency_layers() {
    let rig = rig();
    let cache = tempfile::tempdir().unwrap();
    // Another base with the same interpreter: the python base plus a file.
    let extra = tempfile::tempdir().unwrap();
    std::fs::write(extra.path().join("motd"), "another base\n").unwrap();
    let base2 = rig.image("base/python-plus:latest");
    let made = rig.ftl(
        cache.path(),
        &[
            "build",
            extra.path().to_str().unwrap(),
            "--base",
            &rig.base("python"),
            "--image",
            &base2,
            "--language",
            "generic",
            "--app-dir",
            "/etc/ftl-extra",
            "--json",
        ],
    );
    let made = made.report();
    assert_eq!(made["layers_built"], 1);

    let app = testdata("flask");
    let image = rig.image("py/flask-rebased:v1");
    let first = rig
        .build(cache.path(), &app, &rig.base("python"), &image, &[])
        .report();
    let second = rig.build(cache.path(), &app, &base2, &image, &[]).report();
    // Design decision: dependency layers are keyed by the interpreter
    // (version, ABI, platform, libc) read from the base, not by the base's
    // digest, so they are reused on a rebased image.
    assert_eq!(second["layers_built"], 0, "{second:#}");
    assert_ne!(first["digest"], second["digest"]);
}

#[test]
fn bad_inputs_fail_clearly_and_push_nothing() {
    let rig = rig();
    let cases: &[(&str, &[&str])] = &[
        (
            "bad-missing-package",
            &["requirements.txt:1", "ftl-this-package-does-not-exist"],
        ),
        ("bad-syntax", &["requirements.txt:3", "werkzeug=>3.0"]),
        (
            "bad-no-entrypoint",
            &["no entrypoint found", "--entrypoint"],
        ),
        (
            "bad-unsatisfiable",
            &[
                "requirements.txt:2",
                "cannot all be satisfied",
                "werkzeug==2.0.0",
                "flask 3.0.3 depends on Werkzeug>=3.0.0",
            ],
        ),
        (
            "bad-incomplete-lock",
            &["requirements.txt", "werkzeug", "jinja2", "click"],
        ),
        ("bad-lock-syntax", &["uv.lock:18", "invalid TOML"]),
        ("bad-requires-python", &["pyproject.toml", ">=3.12", "3.11"]),
    ];
    for (app, needles) in cases {
        let cache = tempfile::tempdir().unwrap();
        let repo = format!("py/{app}");
        let run = rig.build(
            cache.path(),
            &testdata(app),
            &rig.base("python"),
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
        // No cache entry points at a blob that is not there (a marker
        // points at none).
        let keys = cache.path().join("keys-v1");
        for entry in std::fs::read_dir(&keys).into_iter().flatten().flatten() {
            let e: serde_json::Value =
                serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap();
            if e.get("varies_by").is_some() {
                continue;
            }
            let hex = e["digest"].as_str().unwrap().trim_start_matches("sha256:");
            assert!(
                cache.path().join("blobs/sha256").join(hex).is_file(),
                "{app}: dangling cache entry {e}"
            );
        }
    }
}

#[test]
fn two_builds_at_once_share_the_cache() {
    let rig = rig();
    let cache = tempfile::tempdir().unwrap();
    let app = testdata("includes");
    let base = rig.base("python");
    let image = rig.image("py/includes-concurrent:v1");
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let mut cmd = rig.command(
                cache.path(),
                &[
                    "build",
                    app.to_str().unwrap(),
                    "--base",
                    &base,
                    "--image",
                    &image,
                    "--json",
                ],
            );
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    let reports: Vec<serde_json::Value> = runs
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect();
    assert_eq!(reports[0]["digest"], reports[1]["digest"]);
    // And the cache they left is whole: a third build builds nothing.
    let again = rig.build(cache.path(), &app, &base, &image, &[]).report();
    assert_eq!(again["layers_built"], 0);
    assert_eq!(again["digest"], reports[0]["digest"]);
}

/// Issue 11: a distribution built from its sdist on a base with a
/// compiler (the `python-build` base: python, gcc, python3-dev) was reused
/// on a base with the same interpreter but without what it was compiled
/// against, since dependency layers are keyed by the interpreter: every
/// layer a cache hit, and an image that cannot start. A layer of code
/// compiled on the base is now recorded for that base only (a marker under
/// its interpreter key leads lookups to the base's own entry), locally and
/// in the registry cache, while wheel-only layers are still reused on any
/// base with the same interpreter
/// (`same_interpreter_on_another_base_digest_reuses_dependency_layers`).
#[test]
fn a_layer_compiled_on_one_base_is_not_reused_on_another() {
    let rig = rig();
    ftl_test_support::base_images::push_base_image(
        "python-build",
        &rig.registry.host(),
        "base/python-build",
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let app = testdata("cext");
    let image = rig.image("py/cext:v1");
    let report = rig
        .build(
            cache.path(),
            &app,
            &rig.base("python-build"),
            &image,
            &["--verify"],
        )
        .report();
    assert_eq!(report["verify"]["status"], 200, "{report:#}");
    let mmh3 = app_layers(&report)
        .into_iter()
        .find(|l| l.0.starts_with("python: mmh3=="))
        .unwrap_or_else(|| panic!("{report:#}"));
    // The layer's entry names the base it was compiled on; its planned key
    // holds a marker.
    let ls = rig.ftl(cache.path(), &["cache", "ls"]);
    assert_eq!(ls.status, 0, "{}", ls.stderr);
    assert!(
        ls.stdout
            .lines()
            .any(|l| l.contains(&mmh3.0) && l.contains("(varies by build_root)")),
        "{}",
        ls.stdout
    );
    // On the same base it is reused, here and on another machine.
    let again = rig
        .build(cache.path(), &app, &rig.base("python-build"), &image, &[])
        .report();
    assert_eq!(again["layers_built"], 0, "{again:#}");
    let elsewhere = tempfile::tempdir().unwrap();
    let again = rig
        .build(
            elsewhere.path(),
            &app,
            &rig.base("python-build"),
            &image,
            &[],
        )
        .report();
    assert_eq!(again["layers_built"], 0, "{again:#}");
    assert_eq!(again["digest"], report["digest"]);

    // The plain base has the same interpreter but no compiler and no
    // python3-dev: the layer compiled on python-build is not reused there,
    // neither from this cache nor from the registry cache on a machine
    // without a local one. The build tries to compile it, and says why it
    // cannot; nothing is pushed.
    let plain = tempfile::tempdir().unwrap();
    for cache in [cache.path(), plain.path()] {
        let run = rig.build(
            cache,
            &app,
            &rig.base("python"),
            &rig.image("py/cext:nocc"),
            &[],
        );
        let err = run.error();
        assert!(err.contains("mmh3") && err.contains("compiler"), "{err}");
    }
    assert_eq!(rig.registry.tags("py/cext"), ["v1"]);
}

// ---- issue 11: lock files and markers ----

/// A locked app builds from its lock alone: one layer per distribution the
/// main dependencies reach on the base's Python, none of the dev group,
/// the app answers in the sandbox, and a rebuild builds nothing.
fn a_locked_app_builds_verifies_without_dev_dependencies(app: &str) {
    let rig = rig();
    let cache = tempfile::tempdir().unwrap();
    let image = rig.image(&format!("py/{app}:v1"));
    let base = rig.base("python");
    let cold = rig
        .build(cache.path(), &testdata(app), &base, &image, &["--verify"])
        .report();
    assert_eq!(cold["verify"]["status"], 200, "{cold:#}");
    let names: Vec<String> = app_layers(&cold).into_iter().map(|l| l.0).collect();
    assert!(
        names.iter().any(|n| n.starts_with("python: flask==3.")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("python: gunicorn==")),
        "{names:?}"
    );
    for dev in ["pytest", "pluggy", "iniconfig", "colorama"] {
        assert!(
            !names.iter().any(|n| n.contains(&format!("{dev}=="))),
            "{app}: {dev} is not a main dependency for Linux: {names:?}"
        );
    }
    let again = rig
        .build(cache.path(), &testdata(app), &base, &image, &[])
        .report();
    assert_eq!(again["layers_built"], 0, "{again:#}");
    assert_eq!(again["digest"], cold["digest"]);
}

#[test]
fn a_uv_lock_app_builds_verifies_without_dev_dependencies() {
    a_locked_app_builds_verifies_without_dev_dependencies("uv-lock");
}

#[test]
fn a_poetry_lock_app_builds_verifies_without_dev_dependencies() {
    a_locked_app_builds_verifies_without_dev_dependencies("poetry-lock");
}

/// Verification stops the app as a platform does, with SIGTERM to its
/// PID 1, and reports how it ended. The Procfile's `python main.py` runs
/// as `exec python main.py`: the app is PID 1, its handler prints and it
/// exits 0 (`"stopped": "sigterm"`). The same image with a shell left as
/// PID 1 (a compound command: dash forks `python` and waits) never passes
/// the signal on, and the shell, without a handler, does not get it
/// either: the app is killed after the grace period, its handler never
/// ran, and the build warns.
#[test]
fn sigterm_reaches_the_app_as_pid_1() {
    let rig = rig();
    let cache = tempfile::tempdir().unwrap();
    let app = testdata("sigterm");
    let base = rig.base("python");
    let handled = "main.py: SIGTERM received by pid 1, exiting";

    let r = rig
        .build(
            cache.path(),
            &app,
            &base,
            &rig.image("py/sigterm:v1"),
            &["--verify"],
        )
        .report();
    let v = &r["verify"];
    assert_eq!(v["status"], 200, "{r:#}");
    assert_eq!(v["stopped"], "sigterm", "{r:#}");
    assert_eq!(v["stop_status"], 0, "{r:#}");
    assert!(
        v["output_tail"].as_str().unwrap().contains(handled),
        "{r:#}"
    );
    let warnings = r["warnings"].as_array().unwrap();
    assert!(
        !warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("SIGTERM")),
        "{r:#}"
    );

    let r = rig
        .build(
            cache.path(),
            &app,
            &base,
            &rig.image("py/sigterm-shell:v1"),
            &[
                "--verify",
                "--entrypoint",
                r#"["/bin/sh","-c","python main.py; echo done"]"#,
            ],
        )
        .report();
    let v = &r["verify"];
    assert_eq!(v["status"], 200, "{r:#}");
    assert_eq!(v["stopped"], "killed", "{r:#}");
    assert_eq!(v["stop_status"], 128 + 9, "{r:#}");
    let tail = v["output_tail"].as_str().unwrap();
    assert!(!tail.contains("SIGTERM received"), "{r:#}");
    assert!(!tail.contains("done"), "{r:#}");
    let warnings = r["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("did not exit within")),
        "{r:#}"
    );
}
