//! The dependency step against a fake sandbox that plays pip: which
//! commands run, with what mounts and network, what pip is asked to
//! install, and how its output is split into layers. No network.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::{base, bookworm_probe, hash_pinned_copy, testdata};
use ftl::{
    BuildOptions, Exec, ExecOutput, ExecRequest, LayerInput, LayerPlan, PluginError, SourceTree,
    StepContext, StepNetwork,
};

/// Plays the base image's interpreter and pip on the host directories the
/// step mounts.
struct FakePython {
    requests: Mutex<Vec<ExecRequest>>,
    /// What the lock check's resolution adds beyond the pins (name,
    /// version); the first pinned distribution requires them.
    missing: Vec<(String, String)>,
    /// Makes pip fail with this stderr.
    pip_error: Option<String>,
    /// The requirement files pip was handed.
    pip_inputs: Mutex<Vec<String>>,
    probe: serde_json::Value,
    /// The lock check leaves its report as a link to this host file (as
    /// an sdist's build code could make it), which holds the report.
    report_link: Option<PathBuf>,
    /// The lock check leaves a `.pth` file in the venv, as an sdist's
    /// build code run by the dry run could.
    lock_plants: bool,
    /// What `Exec::remember` kept, by key.
    memos: Mutex<std::collections::BTreeMap<String, serde_json::Value>>,
    /// The installed METADATA of this distribution (name) declares this
    /// requirement.
    metadata_requires: Option<(String, String)>,
}

impl FakePython {
    fn new() -> Self {
        FakePython {
            requests: Mutex::default(),
            missing: Vec::new(),
            pip_error: None,
            pip_inputs: Mutex::default(),
            probe: bookworm_probe(),
            report_link: None,
            lock_plants: false,
            memos: Mutex::default(),
            metadata_requires: None,
        }
    }

    /// The pip command prefix the step must use for this probe.
    fn pip_prefix(&self) -> Vec<String> {
        let pip = &self.probe["pip"];
        if let Some(runner) = pip["runner"].as_str() {
            vec!["/env/bin/python".into(), runner.into()]
        } else if pip["source"] == "base" {
            [
                "/usr/bin/python3",
                "-m",
                "pip",
                "--python",
                "/env/bin/python",
            ]
            .map(String::from)
            .to_vec()
        } else {
            vec![
                "/env/bin/python".into(),
                format!("{}/pip", pip["path"].as_str().unwrap()),
            ]
        }
    }

    fn host(req: &ExecRequest, target: &str) -> PathBuf {
        req.mounts
            .iter()
            .find(|m| m.target == target)
            .map(|m| m.host.clone())
            .expect("mounted")
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

fn ok(stdout: &str) -> ExecOutput {
    ExecOutput {
        code: Some(0),
        stdout: stdout.as_bytes().to_vec(),
        ..Default::default()
    }
}

impl Exec for FakePython {
    fn remembered(&self, key: &ftl::CacheKey) -> Option<ftl::plugin::Remembered> {
        let value = self.memos.lock().unwrap().get(&key.hex).cloned()?;
        Some(ftl::plugin::Remembered {
            value,
            created: 0,
            expires: None,
        })
    }

    fn remember(&self, key: &ftl::CacheKey, value: &serde_json::Value, _: bool) -> Option<u64> {
        self.memos
            .lock()
            .unwrap()
            .insert(key.hex.clone(), value.clone());
        None
    }

    fn run(&self, req: &ExecRequest) -> Result<ExecOutput, PluginError> {
        self.requests.lock().unwrap().push(req.clone());
        let site = "lib/python3.11/site-packages";
        match req.label.as_str() {
            "python probe" => Ok(ok(&self.probe.to_string())),
            "pip resolve" => {
                assert_eq!(
                    req.network,
                    StepNetwork::Egress,
                    "resolution reads the index"
                );
                Ok(common::fake_resolution(req))
            }
            "python -m venv" => {
                assert_eq!(
                    req.args,
                    ["/usr/bin/python3", "-m", "venv", "--without-pip", "/env"]
                );
                assert_eq!(req.network, StepNetwork::None);
                let env = Self::host(req, "/env");
                std::fs::create_dir_all(env.join("bin")).unwrap();
                std::os::unix::fs::symlink("/usr/bin/python3", env.join("bin/python")).unwrap();
                Self::write(&env.join("pyvenv.cfg"), "home = /usr/bin\n");
                std::fs::create_dir_all(env.join(site)).unwrap();
                Ok(ok(""))
            }
            "pip install" => {
                assert_eq!(req.network, StepNetwork::Egress, "pip downloads");
                let prefix = self.pip_prefix();
                assert_eq!(&req.args[..prefix.len()], &prefix[..]);
                assert!(req.args.contains(&"--no-compile".to_string()));
                let env = Self::host(req, "/env");
                let work = Self::host(req, "/ftl-work");
                let r = req.args.iter().position(|a| a == "-r").unwrap();
                let file = req.args[r + 1].strip_prefix("/ftl-work/").unwrap();
                let text = std::fs::read_to_string(work.join(file)).unwrap();
                self.pip_inputs.lock().unwrap().push(text.clone());
                if let Some(e) = &self.pip_error {
                    return Ok(ExecOutput {
                        code: Some(1),
                        stderr: e.as_bytes().to_vec(),
                        ..Default::default()
                    });
                }
                for line in text.lines().filter(|l| !l.starts_with('-')) {
                    let spec = line.split_whitespace().next().unwrap();
                    let (name, version) = spec.split_once("==").unwrap_or((spec, "9.9"));
                    let module = name.to_lowercase().replace('-', "_");
                    let info = format!("{}-{version}.dist-info", module);
                    Self::write(&env.join(site).join(&module).join("__init__.py"), "x = 1\n");
                    Self::write(&env.join("bin").join(&module), "#!/env/bin/python\n");
                    let requires = match &self.metadata_requires {
                        Some((n, r)) if n == name => format!("Requires-Dist: {r}\n"),
                        _ => String::new(),
                    };
                    Self::write(
                        &env.join(site).join(&info).join("METADATA"),
                        &format!("Name: {name}\nVersion: {version}\n{requires}\n"),
                    );
                    Self::write(
                        &env.join(site).join(&info).join("RECORD"),
                        &format!("{module}/__init__.py,,\n../../../bin/{module},,\n{info}/METADATA,,\n{info}/RECORD,,\n"),
                    );
                }
                Ok(ok("Successfully installed"))
            }
            "pip lock check" => {
                assert_eq!(
                    req.network,
                    StepNetwork::Egress,
                    "resolution reads the index"
                );
                assert!(req.args.contains(&"--dry-run".to_string()));
                let work = Self::host(req, "/ftl-work");
                let text = std::fs::read_to_string(work.join("lock.txt")).unwrap();
                self.pip_inputs.lock().unwrap().push(text.clone());
                let mut items = Vec::new();
                for (i, line) in text.lines().filter(|l| !l.starts_with('-')).enumerate() {
                    let spec = line.split_whitespace().next().unwrap();
                    let (name, version) = spec.split_once("==").unwrap();
                    let requires: Vec<String> = if i == 0 {
                        self.missing
                            .iter()
                            .map(|(n, _)| format!("{n}>=1"))
                            .collect()
                    } else {
                        vec![]
                    };
                    items.push(serde_json::json!({"metadata": {"name": name, "version": version, "requires_dist": requires}}));
                }
                for (n, v) in &self.missing {
                    items.push(serde_json::json!({"metadata": {"name": n, "version": v}}));
                }
                if self.lock_plants {
                    let env = Self::host(req, "/env");
                    Self::write(
                        &env.join("lib/python3.11/site-packages/zz-planted.pth"),
                        "import os\n",
                    );
                }
                let report = serde_json::json!({ "install": items }).to_string();
                match &self.report_link {
                    Some(host) => {
                        std::fs::write(host, report).unwrap();
                        std::os::unix::fs::symlink(host, work.join("report.json")).unwrap();
                    }
                    None => std::fs::write(work.join("report.json"), report).unwrap(),
                }
                Ok(ok(""))
            }
            "python compileall" => {
                // compileall over the site directories, or the per-layer
                // driver given each layer's dist-info directories.
                let per_layer = req.args.get(3).is_some_and(|a| a == "-c");
                if per_layer {
                    assert!(req.args[4].contains("UNCHECKED_HASH"));
                    assert_eq!(req.args[5], "--", "{:?}", req.args);
                    for a in &req.args[5..] {
                        assert!(
                            a == "--" || (a.starts_with("/env/lib/") && a.ends_with(".dist-info")),
                            "{a}"
                        );
                    }
                } else {
                    assert!(req.args.contains(&"unchecked-hash".to_string()));
                }
                // The base's interpreter, isolated and without `site`: a
                // `.pth` file an sdist's build left, or a `bin/python` a
                // wheel replaced, must not run after the install.
                assert_eq!(
                    req.args[..3],
                    ["/usr/bin/python3", "-I", "-S"],
                    "{:?}",
                    req.args
                );
                let env = Self::host(req, "/env");
                for f in walk(&env) {
                    if f.extension().is_some_and(|e| e == "py") {
                        let pyc = env
                            .join(f.parent().unwrap())
                            .join("__pycache__")
                            .join(format!(
                                "{}.cpython-311.pyc",
                                f.file_stem().unwrap().to_string_lossy()
                            ));
                        Self::write(&pyc, "pyc");
                    }
                }
                Ok(ok(""))
            }
            other => panic!("unexpected command {other}: {:?}", req.args),
        }
    }
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let child = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(child);
            } else {
                out.push(child);
            }
        }
    }
    out.sort();
    out
}

fn build(
    plan: &LayerPlan,
    app: &Path,
    exec: &FakePython,
    wanted: &[usize],
) -> Result<Vec<(usize, Vec<String>)>, PluginError> {
    let scratch = tempfile::tempdir().unwrap();
    let source = SourceTree::scan(app).unwrap();
    let base = base();
    let options = BuildOptions::default();
    let ctx = StepContext {
        source: &source,
        base: &base,
        options: &options,
        exec,
        scratch: scratch.path(),
    };
    let mut out = plan.steps[0].build(wanted, &ctx)?;
    out.sort_by_key(|(i, _)| *i);
    Ok(out
        .into_iter()
        .map(|(i, c)| {
            // Venv files relative; other files with their image path;
            // literal files as path then contents.
            let mut paths = Vec::new();
            for input in &c.inputs {
                match input {
                    LayerInput::Files { to, paths: ps, .. } if to == "/env" => {
                        paths.extend(ps.iter().map(|p| p.display().to_string()))
                    }
                    LayerInput::Files { to, paths: ps, .. } => {
                        paths.extend(ps.iter().map(|p| format!("{to}/{}", p.display())))
                    }
                    LayerInput::Bytes { path, data, .. } => {
                        paths.push(path.clone());
                        paths.push(String::from_utf8(data.clone()).unwrap());
                    }
                    other => panic!("{other:?}"),
                }
            }
            (i, paths)
        })
        .collect())
}

fn plan(app: &Path, exec: &FakePython) -> LayerPlan {
    common::plan_with(app, &BuildOptions::default(), exec).unwrap()
}

#[test]
fn builds_only_the_wanted_distributions() {
    let exec = FakePython::new();
    let app = testdata("flask");
    let p = plan(&app, &exec);
    let idx = |name: &str| p.layers.iter().position(|l| l.name == name).unwrap();
    let (flask, click) = (idx("python: flask==3.0.3"), idx("python: click==8.1.7"));
    // The venv layer is a cache hit; two distributions miss.
    let got = build(&p, &app, &exec, &[flask, click]).unwrap();
    assert_eq!(
        exec.pip_inputs.lock().unwrap().as_slice(),
        [format!(
            "click==8.1.7 --hash=sha256:{:064x}\nflask==3.0.3 --hash=sha256:{:064x}\n",
            6, 1
        )]
    );
    assert_eq!(
        got,
        [
            (
                click,
                vec![
                    "bin/click".to_string(),
                    "lib/python3.11/site-packages/click/__init__.py".into(),
                    "lib/python3.11/site-packages/click/__pycache__/__init__.cpython-311.pyc"
                        .into(),
                    "lib/python3.11/site-packages/click-8.1.7.dist-info/METADATA".into(),
                    "lib/python3.11/site-packages/click-8.1.7.dist-info/RECORD".into(),
                ]
            ),
            (
                flask,
                vec![
                    "bin/flask".to_string(),
                    "lib/python3.11/site-packages/flask/__init__.py".into(),
                    "lib/python3.11/site-packages/flask/__pycache__/__init__.cpython-311.pyc"
                        .into(),
                    "lib/python3.11/site-packages/flask-3.0.3.dist-info/METADATA".into(),
                    "lib/python3.11/site-packages/flask-3.0.3.dist-info/RECORD".into(),
                ]
            ),
        ]
    );
    let labels: Vec<String> = exec
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.label.clone())
        .collect();
    assert_eq!(
        labels,
        [
            "python probe",
            "pip resolve",
            "python -m venv",
            "pip install",
            "python compileall"
        ]
    );
    let pip = exec.requests.lock().unwrap()[3].clone();
    assert!(pip.args.contains(&"--no-deps".to_string()));
    assert!(pip.mounts.iter().any(|m| m.target == "/ftl-work"));
    assert!(pip.mounts.iter().any(|m| m.target == "/env" && m.writable));
    assert!(pip.env.contains(&("HOME".to_string(), "/tmp".to_string())));
}

#[test]
fn venv_layer_alone() {
    let exec = FakePython::new();
    let app = testdata("flask");
    let p = plan(&app, &exec);
    let got = build(&p, &app, &exec, &[0]).unwrap();
    assert_eq!(
        got,
        [(
            0,
            vec![
                "bin".to_string(),
                "bin/python".into(),
                "lib".into(),
                "lib/python3.11".into(),
                "lib/python3.11/site-packages".into(),
                "pyvenv.cfg".into()
            ]
        )]
    );
    assert!(
        exec.pip_inputs.lock().unwrap().is_empty(),
        "no install when only the venv misses"
    );
}

#[test]
fn unpinned_gets_the_files_and_one_layer() {
    let exec = FakePython::new();
    let app = testdata("includes");
    // Make it unpinned: copy and loosen.
    let dir = tempfile::tempdir().unwrap();
    for f in walk(&app) {
        let to = dir.path().join(&f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(app.join(&f), to).unwrap();
    }
    // A direct URL has no version to key a layer by: one unpinned layer.
    std::fs::write(
        dir.path().join("requirements/web.txt"),
        "-r common.txt\nurllib3>=2\nidna==3.10\nmypkg @ https://example.com/mypkg-1.0.tar.gz\n",
    )
    .unwrap();
    let p = plan(dir.path(), &exec);
    assert_eq!(p.layers.len(), 3);
    assert!(!p.layers[1].pinned);
    let got = build(&p, dir.path(), &exec, &[1]).unwrap();
    let inputs = exec.pip_inputs.lock().unwrap().clone();
    assert_eq!(inputs.len(), 1);
    assert!(
        inputs[0].starts_with("# requests is pinned"),
        "pip gets the user's own top file: {}",
        inputs[0]
    );
    let pip = exec
        .requests
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.label == "pip install")
        .unwrap()
        .clone();
    assert!(!pip.args.contains(&"--no-deps".to_string()));
    assert!(pip
        .args
        .contains(&"/ftl-work/req/requirements.txt".to_string()));
    let files: BTreeSet<&str> = got[0].1.iter().map(String::as_str).collect();
    assert!(
        files.contains("lib/python3.11/site-packages/requests/__init__.py"),
        "{files:?}"
    );
    assert!(!files.contains("pyvenv.cfg"));
}

#[test]
fn incomplete_pins_name_the_missing_dependencies() {
    let mut exec = FakePython::new();
    exec.missing = vec![
        ("werkzeug".into(), "3.1.3".into()),
        ("blinker".into(), "1.9.0".into()),
    ];
    let app = testdata("bad-incomplete-lock");
    let p = plan(&app, &exec);
    let lock = p
        .layers
        .iter()
        .position(|l| l.name == "python: lock of 1 distribution")
        .unwrap();
    // Even when every distribution layer is cached, the lock layer misses
    // and its build checks the set.
    let e = build(&p, &app, &exec, &[lock]).unwrap_err();
    insta::assert_snapshot!(e.to_string(), @"requirements.txt: this is a complete lock (every requirement pinned with == and a --hash), but it misses dependencies: werkzeug 3.1.3 (required by flask); blinker 1.9.0 (required by flask); add them with their hashes (`pip-compile --generate-hashes` lists every transitive dependency), or drop the hashes to let ftl resolve the rest with pip");
}

/// pip's report is left by a step whose sdist builds run other people's
/// code: a link there to a host file must not be followed (the host
/// file's content would reach the build's error).
#[test]
fn a_report_left_as_a_link_to_a_host_file_is_not_followed() {
    let host = tempfile::tempdir().unwrap();
    let mut exec = FakePython::new();
    exec.missing = vec![("host-file-leak".into(), "1".into())];
    exec.report_link = Some(host.path().join("secret.json"));
    let copy = hash_pinned_copy("flask");
    let app = copy.path().to_path_buf();
    let p = plan(&app, &exec);
    let lock = p.layers.len() - 2;
    let e = build(&p, &app, &exec, &[lock]).unwrap_err().to_string();
    assert!(e.contains("symlink"), "{e}");
    assert!(!e.contains("host-file-leak"), "{e}");
}

/// The lock check's dry run builds sdists (their code runs with the venv
/// writable): a `.pth` file one leaves would run inside the pip of the
/// install that follows, so a venv the dry run changed is refused.
#[test]
fn a_lock_check_that_changes_the_venv_is_refused() {
    let mut exec = FakePython::new();
    exec.lock_plants = true;
    let copy = hash_pinned_copy("flask");
    let app = copy.path().to_path_buf();
    let p = plan(&app, &exec);
    let lock = p.layers.len() - 2;
    let e = build(&p, &app, &exec, &[lock]).unwrap_err().to_string();
    assert!(
        e.contains("resolving the lock changed the virtualenv (lib/python3.11/site-packages/zz-planted.pth)"),
        "{e}"
    );
}

#[test]
fn lock_layer_lists_the_set_after_checking_it() {
    let exec = FakePython::new();
    let copy = hash_pinned_copy("flask");
    let app = copy.path().to_path_buf();
    let p = plan(&app, &exec);
    let lock = p.layers.len() - 2;
    assert_eq!(p.layers[lock].name, "python: lock of 9 distributions");
    let got = build(&p, &app, &exec, &[lock]).unwrap();
    assert_eq!(got[0].1[0], "/env/ftl-requirements.txt");
    assert_eq!(
        got[0].1[2..],
        ["/srv/requirements.txt"],
        "requirement files ship with the lock, not the app"
    );
    insta::assert_snapshot!(got[0].1[1], @r"
    # The distributions ftl installed in this virtualenv, one layer each.
    blinker==1.8.2
    click==8.1.7
    flask==3.0.3
    gunicorn==23.0.0
    itsdangerous==2.2.0
    jinja2==3.1.4
    markupsafe==3.0.2
    packaging==24.2
    werkzeug==3.0.6
    ");
    let checked = exec.pip_inputs.lock().unwrap().clone();
    assert_eq!(checked.len(), 1, "one dry-run resolution, no install");
    assert!(checked[0].contains("flask==3.0.3\n"), "{}", checked[0]);
}

/// Adds `line` to the app's requirements.txt.
fn add_line(app: &Path, line: &str) {
    let reqs = app.join("requirements.txt");
    let text = std::fs::read_to_string(&reqs).unwrap();
    std::fs::write(&reqs, format!("{text}{line}\n")).unwrap();
}

#[test]
fn a_changed_lock_is_checked_from_metadata_without_starting_pip() {
    let mut exec = FakePython::new();
    exec.metadata_requires = Some(("bad".into(), "not-pinned>=1".into()));
    let copy = hash_pinned_copy("flask");
    let app = copy.path().to_path_buf();
    let p = plan(&app, &exec);
    let lock = p.layers.len() - 2;
    build(&p, &app, &exec, &[lock]).unwrap();
    let checks = |exec: &FakePython| {
        exec.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.label == "pip lock check")
            .count()
    };
    assert_eq!(
        checks(&exec),
        1,
        "the first check is pip's; its report is kept"
    );

    // One added line: its distribution's metadata (read once installed)
    // and the kept report answer.
    add_line(&app, &format!("six==1.16.0 --hash=sha256:{:064x}", 99));
    let p = plan(&app, &exec);
    let lock = p.layers.len() - 2;
    let six = p
        .layers
        .iter()
        .position(|l| l.name == "python: six==1.16.0")
        .unwrap();
    build(&p, &app, &exec, &[six, lock]).unwrap();
    assert_eq!(
        checks(&exec),
        1,
        "no pip for a lock whose metadata is known"
    );

    // A line whose distribution needs one the lock does not pin.
    add_line(&app, &format!("bad==1.0 --hash=sha256:{:064x}", 98));
    let p = plan(&app, &exec);
    let lock = p.layers.len() - 2;
    let bad = p
        .layers
        .iter()
        .position(|l| l.name == "python: bad==1.0")
        .unwrap();
    let e = build(&p, &app, &exec, &[bad, lock]).unwrap_err();
    assert!(
        e.to_string()
            .contains("requirements.txt: this is a complete lock (every requirement pinned with == and a --hash), but it misses dependencies: not-pinned>=1 (required by bad)"),
        "{e}"
    );
    assert_eq!(checks(&exec), 1);

    // A distribution of a cached layer whose metadata is unknown: pip.
    exec.memos.lock().unwrap().clear();
    let reqs = app.join("requirements.txt");
    let text = std::fs::read_to_string(&reqs).unwrap();
    std::fs::write(
        &reqs,
        text.replace(&format!("bad==1.0 --hash=sha256:{:064x}\n", 98), ""),
    )
    .unwrap();
    add_line(&app, &format!("ms==1.0 --hash=sha256:{:064x}", 97));
    let p = plan(&app, &exec);
    let lock = p.layers.len() - 2;
    let ms = p
        .layers
        .iter()
        .position(|l| l.name == "python: ms==1.0")
        .unwrap();
    build(&p, &app, &exec, &[ms, lock]).unwrap();
    assert_eq!(checks(&exec), 2);
}

#[test]
fn missing_package_names_file_and_line() {
    let mut exec = FakePython::new();
    exec.pip_error = Some(
        "ERROR: Could not find a version that satisfies the requirement ftl-this-package-does-not-exist==1.0.0 (from versions: none)\nERROR: No matching distribution found for ftl-this-package-does-not-exist==1.0.0\n".into(),
    );
    let app = testdata("bad-missing-package");
    let p = plan(&app, &exec);
    let e = build(&p, &app, &exec, &[1]).unwrap_err();
    insta::assert_snapshot!(e.to_string(), @"requirements.txt:1: package `ftl-this-package-does-not-exist==1.0.0` was not found on the package index https://pypi.org/simple; check the name and version exist (pip said: No matching distribution found for ftl-this-package-does-not-exist==1.0.0)");
}

#[test]
fn app_layer_is_the_source_at_the_app_dir() {
    let exec = FakePython::new();
    let app = testdata("nodeps");
    let p = plan(&app, &exec);
    assert_eq!(p.layers.len(), 2);
    let scratch = tempfile::tempdir().unwrap();
    let source = SourceTree::scan(&app).unwrap();
    let base = base();
    let options = BuildOptions::default();
    let ctx = StepContext {
        source: &source,
        base: &base,
        options: &options,
        exec: &exec,
        scratch: scratch.path(),
    };
    let out = p.steps[p.layers[1].step].build(&[1], &ctx).unwrap();
    match &out[0].1.inputs[..] {
        [LayerInput::Files { to, paths, .. }] => {
            assert_eq!(to, "/srv");
            assert_eq!(
                paths,
                &[
                    PathBuf::from("Procfile"),
                    "README.md".into(),
                    "main.py".into()
                ]
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Without a usable pip in the base, the step runs pip from the wheel
/// ensurepip ships (nothing of it lands in the venv).
#[test]
fn pip_from_the_ensurepip_wheel() {
    let mut exec = FakePython::new();
    exec.probe["pip"] = serde_json::json!({
        "source": "ensurepip",
        "version": "24.0",
        "path": "/usr/local/lib/python3.11/ensurepip/_bundled/pip-24.0-py3-none-any.whl"
    });
    let app = testdata("flask");
    let p = plan(&app, &exec);
    let flask = p
        .layers
        .iter()
        .position(|l| l.name == "python: flask==3.0.3")
        .unwrap();
    build(&p, &app, &exec, &[flask]).unwrap();
    let pip = exec
        .requests
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.label == "pip install")
        .unwrap()
        .clone();
    assert_eq!(
        pip.args[1],
        "/usr/local/lib/python3.11/ensurepip/_bundled/pip-24.0-py3-none-any.whl/pip"
    );
}
