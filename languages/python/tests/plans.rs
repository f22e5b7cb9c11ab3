//! Snapshot tests of the plans of the testdata apps, with a fake `Exec`
//! that answers the interpreter probe: layer names, key documents, pinned
//! flags and config. No network.

mod common;

use std::collections::BTreeMap;

use common::{bookworm_probe, plan, plan_with, render, testdata, ProbeExec};
use ftl::BuildOptions;

#[test]
fn flask_pinned() {
    let p = plan("flask").unwrap();
    let names: Vec<&str> = p.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "python: virtualenv /env",
            "python: blinker==1.8.2",
            "python: click==8.1.7",
            "python: flask==3.0.3",
            "python: gunicorn==23.0.0",
            "python: itsdangerous==2.2.0",
            "python: jinja2==3.1.4",
            "python: markupsafe==3.0.2",
            "python: packaging==24.2",
            "python: werkzeug==3.0.6",
            "python: lock of 9 distributions",
            "app",
        ]
    );
    insta::assert_json_snapshot!(render(&p));
}

#[test]
fn pipfile_lock() {
    insta::assert_json_snapshot!(render(&plan("pipfile").unwrap()));
}

#[test]
fn cext() {
    insta::assert_json_snapshot!(render(&plan("cext").unwrap()));
}

#[test]
fn unpinned() {
    // Resolved while planning: one pinned layer per distribution pip chose.
    let p = plan("unpinned").unwrap();
    assert!(p.layers.iter().all(|l| l.pinned));
    assert_eq!(p.notes["dependencies"]["mode"], "resolved", "{:#}", p.notes);
    insta::assert_json_snapshot!(render(&p));
}

#[test]
fn app_engine_default_entrypoint_adds_gunicorn() {
    let p = plan("appengine-hello").unwrap();
    let names: Vec<&str> = p.layers.iter().map(|l| l.name.as_str()).collect();
    assert!(names.contains(&"python: gunicorn==1.0"), "{names:?}");
    assert_eq!(
        p.config.entrypoint.as_deref().unwrap(),
        ["/bin/sh", "-c", "exec gunicorn -b :$PORT main:app"]
    );
    assert_eq!(p.notes["entrypoint"]["inferred"], true);
    assert!(
        p.notes["entrypoint"]["from"]
            .as_str()
            .unwrap()
            .contains("main.py:5"),
        "{:#}",
        p.notes
    );
    assert_eq!(p.notes["added"][0]["requirement"], "gunicorn");
}

#[test]
fn pyproject() {
    insta::assert_json_snapshot!(render(&plan("pyproject").unwrap()));
}

#[test]
fn includes() {
    let p = plan("includes").unwrap();
    // A requirement the user wrote whose marker excludes this interpreter
    // is listed in the report and warned about.
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("pywin32") && w.contains("sys_platform")),
        "{:?}",
        p.warnings
    );
    assert_eq!(
        p.notes["skipped_by_marker"][0]["name"], "pywin32",
        "{:#}",
        p.notes
    );
    insta::assert_json_snapshot!(render(&p));
}

#[test]
fn nodeps() {
    insta::assert_json_snapshot!(render(&plan("nodeps").unwrap()));
}

#[test]
fn bad_syntax() {
    let e = plan("bad-syntax").unwrap_err();
    insta::assert_snapshot!(e.to_string(), @r#"requirements.txt:3: invalid requirement `werkzeug=>3.0`: no such comparison operator "=>", must be one of ~= == != <= >= < > ===; see https://pip.pypa.io/en/stable/reference/requirements-file-format/"#);
}

#[test]
fn bad_no_entrypoint() {
    let e = plan("bad-no-entrypoint").unwrap_err();
    insta::assert_snapshot!(e.to_string(), @"no entrypoint found, and main.py defines no top-level `app` for App Engine's default `gunicorn -b :$PORT main:app`; add `entrypoint: <command>` to app.yaml, a Procfile with a `web: <command>` line, or pass --entrypoint; the command must serve HTTP on $PORT");
}

/// These fail at build time (they need the index); planning succeeds.
#[test]
fn bad_at_build_time_plan_fine() {
    assert!(plan("bad-missing-package").is_ok());
}

fn keys(p: &ftl::LayerPlan) -> BTreeMap<String, String> {
    p.layers
        .iter()
        .map(|l| (l.name.clone(), l.key.hex.clone()))
        .collect()
}

/// Adding one requirement adds one layer; every other key stays.
#[test]
fn adding_a_requirement_keeps_other_keys() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["main.py", "requirements.txt"] {
        std::fs::copy(testdata("flask").join(f), dir.path().join(f)).unwrap();
    }
    let before = plan_with(
        dir.path(),
        &BuildOptions::default(),
        &ProbeExec::new(bookworm_probe()),
    )
    .unwrap();
    let mut text = std::fs::read_to_string(dir.path().join("requirements.txt")).unwrap();
    text.push_str("six==1.16.0\n");
    std::fs::write(dir.path().join("requirements.txt"), text).unwrap();
    let after = plan_with(
        dir.path(),
        &BuildOptions::default(),
        &ProbeExec::new(bookworm_probe()),
    )
    .unwrap();
    let (b, a) = (keys(&before), keys(&after));
    let new: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    assert_eq!(
        new,
        ["python: lock of 10 distributions", "python: six==1.16.0"]
    );
    for (name, key) in &b {
        if !name.contains("lock of") {
            assert_eq!(
                a[name], *key,
                "{name} (the app too: requirements.txt ships in the lock layer)"
            );
        }
    }
}

/// The keys follow the interpreter read from the base image.
#[test]
fn keys_follow_the_base_interpreter() {
    let p311 = plan("flask").unwrap();
    let mut probe = bookworm_probe();
    probe["version"] = "3.13.5".into();
    probe["cache_tag"] = "cpython-313".into();
    probe["soabi"] = "cpython-313-x86_64-linux-gnu".into();
    probe["markers"]["python_version"] = "3.13".into();
    probe["tag"] = "cp313-cp313-manylinux_2_41_x86_64".into();
    let p313 = plan_with(
        &testdata("flask"),
        &BuildOptions::default(),
        &ProbeExec::new(probe),
    )
    .unwrap();
    for (a, b) in p311.layers.iter().zip(&p313.layers) {
        if a.name == "app" {
            assert_eq!(a.key, b.key);
        } else {
            assert_ne!(a.key, b.key, "{}", a.name);
        }
    }
    // Same interpreter, another base digest: every key is reused (the
    // design decision: dependency layers follow the interpreter, not the
    // base image's bytes).
    let mut other = common::base();
    other.manifest_digest = format!("sha256:{}", "2".repeat(64));
    let source = ftl::SourceTree::scan(&testdata("flask")).unwrap();
    let exec = ProbeExec::new(bookworm_probe());
    let options = BuildOptions::default();
    let ctx = ftl::PlanContext {
        source: &source,
        base: &other,
        options: &options,
        exec: &exec,
    };
    let again = ftl::LanguagePlugin::plan(&ftl_python::PythonPlugin, &ctx).unwrap();
    assert_eq!(keys(&again), keys(&p311));
}

#[test]
fn settings_change_venv_index_and_entrypoint() {
    let mut options = BuildOptions::default();
    options
        .settings
        .insert("python.venv".into(), "/opt/venv".into());
    options.settings.insert(
        "python.index_url".into(),
        "https://me:t0ken@pypi.internal/simple".into(),
    );
    options.entrypoint = Some(vec!["gunicorn".into(), "main:app".into()]);
    options.app_dir = "/app".into();
    let p = plan_with(
        &testdata("flask"),
        &options,
        &ProbeExec::new(bookworm_probe()),
    )
    .unwrap();
    assert_eq!(p.layers[0].name, "python: virtualenv /opt/venv");
    let doc = p.layers[1].key.canonical.clone();
    assert!(doc.contains("https://****@pypi.internal/simple"), "{doc}");
    assert!(!doc.contains("t0ken"), "secrets never in a key document");
    assert_eq!(
        p.config.entrypoint.as_deref(),
        Some(&["gunicorn".to_string(), "main:app".to_string()][..])
    );
    assert_eq!(p.config.workdir.as_deref(), Some("/app"));
    assert!(p
        .config
        .env
        .contains(&("VIRTUAL_ENV".into(), "/opt/venv".into())));

    options.settings.insert("python.typo".into(), "1".into());
    let e = plan_with(
        &testdata("flask"),
        &options,
        &ProbeExec::new(bookworm_probe()),
    )
    .unwrap_err();
    assert!(e.message.contains("python.typo"), "{e}");
}

#[test]
fn many_distributions_are_grouped() {
    let dir = tempfile::tempdir().unwrap();
    let reqs: String = (0..60).map(|i| format!("pkg{i}==1.0\n")).collect();
    std::fs::write(dir.path().join("requirements.txt"), reqs).unwrap();
    std::fs::write(dir.path().join("Procfile"), "web: python main.py\n").unwrap();
    let p = plan_with(
        dir.path(),
        &BuildOptions::default(),
        &ProbeExec::new(bookworm_probe()),
    )
    .unwrap();
    let deps = p.layers.len() - 3;
    assert!(deps <= 40 && deps > 20, "{deps} dependency layers");
}

#[test]
fn missing_interpreter_is_a_clear_error() {
    struct NoPython;
    impl ftl::Exec for NoPython {
        fn run(&self, _: &ftl::ExecRequest) -> Result<ftl::ExecOutput, ftl::PluginError> {
            Ok(ftl::ExecOutput {
                code: Some(127),
                stderr: b"exec: python3: not found".to_vec(),
                ..Default::default()
            })
        }
    }
    let e = plan_with(&testdata("flask"), &BuildOptions::default(), &NoPython).unwrap_err();
    insta::assert_snapshot!(e.to_string(), @"the base image localhost:5000/base/python:bookworm has no `python3`; use a Python base image (for example python:3.12-slim), or set python.interpreter to the interpreter's path");
}

#[test]
fn detects_python_apps() {
    for app in ["flask", "nodeps", "pyproject", "pipfile", "bad-syntax"] {
        let s = ftl::SourceTree::scan(&testdata(app)).unwrap();
        assert!(
            ftl::LanguagePlugin::detect(&ftl_python::PythonPlugin, &s),
            "{app}"
        );
    }
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("package.json"), "{}").unwrap();
    let s = ftl::SourceTree::scan(empty.path()).unwrap();
    assert!(!ftl::LanguagePlugin::detect(&ftl_python::PythonPlugin, &s));
}

// ---- issue 11: lock files and markers ----

fn layer_names(p: &ftl::LayerPlan) -> Vec<&str> {
    p.layers.iter().map(|l| l.name.as_str()).collect()
}

/// uv.lock and poetry.lock (made by real uv and Poetry): one layer per
/// locked distribution the main dependencies reach on Python 3.11, no
/// development group (pytest), nothing only another Python or platform
/// needs (colorama on Windows, importlib-metadata before 3.10).
#[test]
fn uv_and_poetry_locks_plan_their_main_dependencies() {
    // uv resolved gunicorn per Python (27 for 3.10 and later, without
    // packaging); Poetry one version for all (23, with packaging).
    let common = [
        "blinker",
        "click",
        "flask",
        "gunicorn",
        "itsdangerous",
        "jinja2",
        "markupsafe",
        "werkzeug",
    ];
    let mut with_packaging = common.to_vec();
    with_packaging.insert(7, "packaging");
    for (app, want) in [
        ("uv-lock", common.to_vec()),
        ("poetry-lock", with_packaging),
    ] {
        let p = plan(app).unwrap();
        let names = layer_names(&p);
        assert_eq!(names.first(), Some(&"python: virtualenv /env"), "{app}");
        assert_eq!(names.last(), Some(&"app"), "{app}");
        let dists: Vec<&str> = names
            .iter()
            .filter_map(|n| n.strip_prefix("python: "))
            .filter(|n| n.contains("=="))
            .map(|n| n.split("==").next().unwrap())
            .collect();
        assert_eq!(dists, want, "{app}: {names:?}");
        assert!(p.layers.iter().all(|l| l.pinned), "{app}");
    }
}

#[test]
fn bad_lock_syntax() {
    let e = plan("bad-lock-syntax").unwrap_err();
    assert_eq!(
        (e.file.as_deref(), e.line),
        (Some(std::path::Path::new("uv.lock")), Some(18)),
        "{e}"
    );
    assert!(e.message.starts_with("invalid TOML"), "{e}");
}

#[test]
fn bad_requires_python() {
    let e = plan("bad-requires-python").unwrap_err();
    insta::assert_snapshot!(e.to_string(), @"pyproject.toml:4: the app requires Python `>=3.12`, but the base image's Python is 3.11.2; use a base image with a Python that matches `>=3.12`, or change requires-python in pyproject.toml if the app runs on Python 3.11.2");
}

/// The base image's `PIP_EXTRA_INDEX_URL` may list several indexes
/// (pip splits it on whitespace), each with its own credentials: none of
/// them may reach a key's inputs document, which the local index stores
/// and the registry cache publishes as an annotation.
#[test]
fn a_second_index_url_in_a_pip_variable_keeps_its_password_out_of_keys() {
    let plan_for = |extra: &str| {
        let source = ftl::SourceTree::scan(&testdata("flask")).unwrap();
        let mut base = common::base();
        let mut config = base.config.config().clone().unwrap();
        let mut env = config.env().clone().unwrap();
        env.push(format!("PIP_EXTRA_INDEX_URL={extra}"));
        config.set_env(Some(env));
        base.config.set_config(Some(config));
        let exec = ProbeExec::new(bookworm_probe());
        ftl::LanguagePlugin::plan(
            &ftl_python::PythonPlugin,
            &ftl::PlanContext {
                source: &source,
                base: &base,
                options: &BuildOptions::default(),
                exec: &exec,
            },
        )
        .unwrap()
    };
    let p = plan_for("https://a:s3cret1@one.example/simple https://b:s3cret2@two.example/simple");
    for l in &p.layers {
        for secret in ["s3cret1", "s3cret2"] {
            assert!(
                !l.key.canonical.contains(secret),
                "{}: {}",
                l.name,
                l.key.canonical
            );
        }
    }
    // Changing either password still changes the keys.
    let other = plan_for("https://a:s3cret1@one.example/simple https://b:other@two.example/simple");
    assert_ne!(p.layers[1].key.hex, other.layers[1].key.hex);
}
