//! The dependency step with the host's real python3 and pip (one small
//! pure-Python package from PyPI), run directly on the host instead of in
//! the sandbox: the venv path is the host path itself, so nothing needs
//! rewriting but the work directory. Set FTL_SKIP_NETWORK_TESTS=1 to skip.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::base;
use ftl::{
    BuildOptions, Exec, ExecOutput, ExecRequest, LayerInput, PluginError, SourceTree, StepContext,
};

/// Runs a request on the host, mapping mount targets to their host paths.
struct HostExec;

impl Exec for HostExec {
    fn run(&self, req: &ExecRequest) -> Result<ExecOutput, PluginError> {
        let map = |s: &str| -> String {
            for m in &req.mounts {
                if let Some(rest) = s.strip_prefix(&m.target) {
                    if rest.is_empty() || rest.starts_with('/') {
                        return format!("{}{rest}", m.host.display());
                    }
                }
            }
            s.to_string()
        };
        let args: Vec<String> = req.args.iter().map(|a| map(a)).collect();
        let mut cmd = Command::new(&args[0]);
        cmd.args(&args[1..]).env_clear();
        for (k, v) in std::env::vars() {
            let lk = k.to_ascii_lowercase();
            if k == "PATH"
                || lk.contains("proxy")
                || k == "SSL_CERT_FILE"
                || k == "PIP_CERT"
                || k == "REQUESTS_CA_BUNDLE"
            {
                cmd.env(k, v);
            }
        }
        for (k, v) in &req.env {
            cmd.env(k, v);
        }
        // Keep the host's pip cache out of /tmp collisions between runs.
        cmd.env(
            "PIP_CACHE_DIR",
            std::env::temp_dir().join("ftl-python-test-pip-cache"),
        );
        let out = cmd
            .output()
            .map_err(|e| PluginError::new(format!("{}: {e}", args[0])))?;
        Ok(ExecOutput {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: out.stderr,
            ..Default::default()
        })
    }
}

fn skip() -> bool {
    if std::env::var_os("FTL_SKIP_NETWORK_TESTS").is_some() {
        eprintln!("skipping: FTL_SKIP_NETWORK_TESTS is set");
        return true;
    }
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipping: no python3 on the host");
        return true;
    }
    false
}

struct Built {
    layers: Vec<(String, Vec<PathBuf>)>,
    venv: PathBuf,
    /// Every planned layer's name, and the plan's notes.
    names: Vec<String>,
    notes: serde_json::Value,
}

/// Builds every dependency layer of an app with `requirements`, in `dir`
/// (which must not exist yet).
fn build(requirements: &str, dir: &Path) -> Result<Built, PluginError> {
    build_with(requirements, dir, &HostExec)
}

fn build_with(requirements: &str, dir: &Path, exec: &dyn Exec) -> Result<Built, PluginError> {
    let app = dir.join("app");
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::write(app.join("requirements.txt"), requirements).unwrap();
    std::fs::write(app.join("Procfile"), "web: python main.py\n").unwrap();
    let venv = scratch.join("env");
    let mut options = BuildOptions::default();
    options
        .settings
        .insert("python.venv".into(), venv.display().to_string());
    let source = SourceTree::scan(&app).unwrap();
    let base = base();
    let plan = ftl::LanguagePlugin::plan(
        &ftl_python::PythonPlugin,
        &ftl::PlanContext {
            source: &source,
            base: &base,
            options: &options,
            exec,
        },
    )?;
    let wanted: Vec<usize> = (0..plan.layers.len())
        .filter(|i| plan.layers[*i].step == 0)
        .collect();
    let ctx = StepContext {
        source: &source,
        base: &base,
        options: &options,
        exec,
        scratch: &scratch,
    };
    let mut out = plan.steps[0].build(&wanted, &ctx)?;
    out.sort_by_key(|(i, _)| *i);
    let layers = out
        .into_iter()
        .map(|(i, c)| match c.inputs.into_iter().next() {
            Some(LayerInput::Files { root, to, paths }) => {
                // The venv layer comes from a copy made before the install.
                assert!(
                    root.path() == venv || root.path().ends_with("venv-layer"),
                    "{}",
                    root.path().display()
                );
                assert_eq!(to, venv.display().to_string());
                (plan.layers[i].name.clone(), paths)
            }
            Some(LayerInput::Bytes { path, .. }) => {
                (plan.layers[i].name.clone(), vec![PathBuf::from(path)])
            }
            other => panic!("{other:?}"),
        })
        .collect();
    Ok(Built {
        layers,
        venv,
        names: plan.layers.iter().map(|l| l.name.clone()).collect(),
        notes: plan.notes.clone(),
    })
}

fn hashes(b: &Built, layer: usize) -> BTreeMap<PathBuf, Vec<u8>> {
    b.layers[layer]
        .1
        .iter()
        .filter(|p| std::fs::symlink_metadata(b.venv.join(p)).unwrap().is_file())
        .map(|p| (p.clone(), std::fs::read(b.venv.join(p)).unwrap()))
        .collect()
}

#[test]
fn real_pip_install_is_split_by_record() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let b = build("python-dotenv==1.0.1\n", &run).unwrap();
    let names: Vec<&str> = b.layers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "python: virtualenv ".to_string() + &b.venv.display().to_string(),
            "python: python-dotenv==1.0.1".into(),
            "python: lock of 1 distribution".into()
        ]
    );
    let venv_files: Vec<String> = b.layers[0]
        .1
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        venv_files.contains(&"bin/python".to_string()),
        "{venv_files:?}"
    );
    assert!(venv_files.contains(&"pyvenv.cfg".to_string()));
    assert!(!venv_files.iter().any(|f| f.contains("dotenv")));

    let dist: Vec<String> = b.layers[1]
        .1
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let short = |s: &str| format!("lib/python3.11/site-packages/{s}");
    for want in [
        "bin/dotenv".to_string(),
        short("dotenv/main.py"),
        short("dotenv/__pycache__/main.cpython-311.pyc"),
        short("python_dotenv-1.0.1.dist-info/RECORD"),
        short("python_dotenv-1.0.1.dist-info/METADATA"),
    ] {
        assert!(dist.contains(&want), "{want} not in {dist:?}");
    }
    assert!(
        !dist.iter().any(|f| venv_files.contains(f)),
        "no venv file in the dist layer"
    );

    // The script points at the venv's interpreter, not a temp path.
    let script = std::fs::read_to_string(b.venv.join("bin/dotenv")).unwrap();
    assert_eq!(
        script.lines().next().unwrap(),
        format!("#!{}/bin/python", b.venv.display())
    );
    // .pyc are unchecked-hash (flags 0b01), not timestamped.
    let pyc = std::fs::read(
        b.venv
            .join(short("dotenv/__pycache__/main.cpython-311.pyc")),
    )
    .unwrap();
    assert_eq!(u32::from_le_bytes(pyc[4..8].try_into().unwrap()), 1);
    // RECORD has no absolute paths.
    let record =
        std::fs::read_to_string(b.venv.join(short("python_dotenv-1.0.1.dist-info/RECORD")))
            .unwrap();
    assert!(!record.lines().any(|l| l.starts_with('/')), "{record}");

    // A second build at the same path gives the same bytes, .pyc included.
    let (h1, v1) = (hashes(&b, 1), hashes(&b, 0));
    std::fs::remove_dir_all(&run).unwrap();
    let again = build("python-dotenv==1.0.1\n", &run).unwrap();
    assert_eq!(h1, hashes(&again, 1));
    assert_eq!(v1, hashes(&again, 0));
}

#[test]
fn real_pip_resolves_what_the_pins_leave_out() {
    if skip() {
        return;
    }
    // The `cli` extra needs click, which is not pinned: pip's resolver
    // chooses it while planning, and it gets a layer of its own.
    let tmp = tempfile::tempdir().unwrap();
    let b = build("python-dotenv[cli]==1.0.1\n", &tmp.path().join("run")).unwrap();
    let names: Vec<&str> = b.names.iter().map(String::as_str).collect();
    assert!(
        names.iter().any(|n| n.starts_with("python: click==")),
        "{names:?}"
    );
    assert!(names.contains(&"python: python-dotenv==1.0.1"), "{names:?}");
    let chosen = &b.notes["dependencies"]["resolution"]["chosen"];
    let click = chosen
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "click")
        .unwrap();
    assert_eq!(click["requested"], false);
    assert_eq!(click["via"], "python-dotenv");
}

#[test]
fn real_pip_reports_what_a_hash_pinned_lock_misses() {
    if skip() {
        return;
    }
    // Every line pinned with a hash: a complete lock, not resolved; the
    // lock check finds the extra's click missing (from python-dotenv's
    // metadata once installed: no dry run of pip over the set).
    let tmp = tempfile::tempdir().unwrap();
    let e = build(
        "python-dotenv[cli]==1.0.1 --hash=sha256:f7b63ef50f1b690dddf550d03497b66d609393b40b564ed0d674909a68ebf16a\n",
        &tmp.path().join("run"),
    )
    .err()
    .expect("incomplete pins fail");
    assert_eq!(e.file.as_deref(), Some(Path::new("requirements.txt")));
    // Found from the installed metadata (the requirement as declared).
    assert!(e.message.contains("misses dependencies: click>="), "{e}");
    assert!(e.message.contains("(required by python-dotenv)"), "{e}");
}

/// [`HostExec`], then `then(venv)` after `pip install`: what a package of
/// the install could have done to the venv.
struct AfterInstall(fn(&Path));

impl Exec for AfterInstall {
    fn run(&self, req: &ExecRequest) -> Result<ExecOutput, PluginError> {
        let out = HostExec.run(req)?;
        if req.label == "pip install" {
            let env = &req
                .mounts
                .iter()
                .find(|m| m.writable && m.host.ends_with("env"))
                .unwrap()
                .host;
            (self.0)(env);
        }
        Ok(out)
    }
}

/// Leaves a `.pth` file in the venv, as an sdist's build code can (it
/// runs with the venv writable), which appends to another distribution's
/// module when Python next starts there, and replaces `bin/python`, as a
/// wheel's `*.data/scripts` can.
fn plant(env: &Path) {
    let site = env.join("lib/python3.11/site-packages");
    let module = site.join("dotenv/main.py");
    let bin = env.join("bin/python");
    let real = std::fs::canonicalize(&bin).unwrap();
    std::fs::remove_file(&bin).unwrap();
    std::fs::write(
        &bin,
        format!(
            "#!/bin/sh\ntouch {}/TROJAN-RAN\nexec {} \"$@\"\n",
            env.display(),
            real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        site.join("zz-planted.pth"),
        format!(
            "import sys; open({:?}, 'a').write('# TROJAN\\n')\n",
            module.display().to_string()
        ),
    )
    .unwrap();
}

/// After the install, nothing of a package runs in the step, and the
/// venv layer is the venv from before it: compileall runs the base's
/// interpreter isolated and without `site` (`-I -S`), so neither a `.pth`
/// file an sdist's build left nor a `bin/python` a wheel replaced can
/// rewrite files before ftl collects them into layers that every app with
/// the same pins (or interpreter) reuses.
#[test]
fn nothing_an_install_leaves_runs_or_changes_the_venv_layer() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let b = build_with(
        "python-dotenv==1.0.1\n",
        &tmp.path().join("run"),
        &AfterInstall(plant),
    )
    .unwrap();
    let main = std::fs::read_to_string(b.venv.join("lib/python3.11/site-packages/dotenv/main.py"))
        .unwrap();
    assert!(!main.contains("TROJAN"), "the planted .pth ran");
    assert!(
        !b.venv.join("TROJAN-RAN").exists(),
        "the replaced bin/python ran"
    );
    // The venv layer is the venv as it was before the install.
    let venv_layer = b.layers[0].1.clone();
    assert!(venv_layer.contains(&PathBuf::from("bin/python")));
    let snapshot = b.venv.parent().unwrap().join("venv-layer/bin/python");
    assert!(
        std::fs::symlink_metadata(&snapshot)
            .unwrap()
            .file_type()
            .is_symlink(),
        "{}",
        snapshot.display()
    );
    let dist: Vec<String> = b.layers[1]
        .1
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert!(!dist.iter().any(|f| f.ends_with(".pth")), "{dist:?}");
}

/// Writes over a module of `python-dotenv`, as another package of the
/// install can (a wheel may carry any path of the venv, and pip installs
/// it without a word).
fn overwrite(env: &Path) {
    let module = env.join("lib/python3.11/site-packages/dotenv/main.py");
    let mut text = std::fs::read_to_string(&module).unwrap();
    text.push_str("\n# TROJAN\n");
    std::fs::write(&module, text).unwrap();
}

/// A distribution's layer is keyed by its pin alone, so its files must be
/// what pip installed for it: one another package of the same install
/// wrote over fails the build, naming the file and the pin, instead of
/// becoming the layer every app with that pin reuses.
#[test]
fn a_layer_whose_files_another_package_changed_is_refused() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let e = match build_with(
        "python-dotenv==1.0.1\n",
        &tmp.path().join("run"),
        &AfterInstall(overwrite),
    ) {
        Ok(_) => panic!("a changed file became a layer"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("dotenv/main.py of `python-dotenv==1.0.1` is not what pip installed for it"),
        "{e}"
    );
}
