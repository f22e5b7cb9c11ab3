//! Shared test helpers: a base image description, the testdata apps, and a
//! fake `Exec` that answers the interpreter probe.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ftl::LanguagePlugin;
use ftl::{
    BaseInfo, BuildOptions, Exec, ExecOutput, ExecRequest, LayerPlan, PlanContext, PluginError,
    SourceTree,
};
use ftl_python::PythonPlugin;

pub fn testdata(app: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/python")
        .join(app)
}

pub fn base() -> BaseInfo {
    let config: oci_spec::image::ImageConfiguration = serde_json::from_value(serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
            "Cmd": ["python3"]
        },
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    BaseInfo {
        reference: "localhost:5000/base/python:bookworm".into(),
        manifest_digest: "sha256:1111111111111111111111111111111111111111111111111111111111111111"
            .into(),
        config,
        platform: "linux/amd64".into(),
    }
}

/// What Debian bookworm's python3 (with python3-venv) answers.
pub fn bookworm_probe() -> serde_json::Value {
    serde_json::json!({
        "implementation": "cpython",
        "version": "3.11.2",
        "sys_version": "3.11.2 (main, Mar 13 2023, 12:18:29) [GCC 12.2.0]",
        "cache_tag": "cpython-311",
        "soabi": "cpython-311-x86_64-linux-gnu",
        "ext_suffix": ".cpython-311-x86_64-linux-gnu.so",
        "executable": "/usr/bin/python3",
        "platform": "linux-x86_64",
        "libc": "glibc 2.36",
        "markers": {
            "implementation_name": "cpython",
            "implementation_version": "3.11.2",
            "os_name": "posix",
            "platform_machine": "x86_64",
            "platform_python_implementation": "CPython",
            "platform_release": "6.1.0",
            "platform_system": "Linux",
            "platform_version": "#1 SMP",
            "python_full_version": "3.11.2",
            "python_version": "3.11",
            "sys_platform": "linux"
        },
        "pip": {"source": "base", "version": "23.0.1", "path": "/usr/lib/python3/dist-packages", "runner": "/usr/lib/python3/dist-packages/pip/__pip-runner__.py"},
        "tag": "cp311-cp311-manylinux_2_36_x86_64",
        "pip_config": {}
    })
}

/// Answers the probe with `probe`; refuses anything else (planning must
/// not install).
pub struct ProbeExec {
    pub probe: serde_json::Value,
    pub requests: Mutex<Vec<ExecRequest>>,
}

impl ProbeExec {
    pub fn new(probe: serde_json::Value) -> Self {
        ProbeExec {
            probe,
            requests: Mutex::new(Vec::new()),
        }
    }
}

/// pip's report for a resolution as a stand-in resolver answers it: each
/// requirement of the files pip is pointed at (`-r` followed), at its `==`
/// version or `1.0`, requested, from a wheel. Enough to plan; the real
/// resolver runs in the end-to-end tests.
pub fn fake_resolution(request: &ExecRequest) -> ExecOutput {
    let mount = request
        .mounts
        .iter()
        .find(|m| m.target == "/ftl-resolve")
        .expect("the resolution's inputs are mounted");
    let mut items = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut queue = vec![mount.host.join("ftl-resolve.txt")];
    while let Some(file) = queue.pop() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, line) in text.lines().enumerate() {
            let line = line.split(" #").next().unwrap().trim();
            if let Some(inc) = line.strip_prefix("-r ") {
                queue.push(file.parent().unwrap().join(inc.trim()));
                continue;
            }
            if line.is_empty() || line.starts_with('#') || line.starts_with('-') {
                continue;
            }
            let origin = ftl_python::requirements::Origin {
                file: file.clone(),
                line: i + 1,
            };
            let req = ftl_python::requirements::parse_requirement_line(line, &origin).unwrap();
            // pip skips what its marker excludes on this interpreter.
            let markers: std::collections::BTreeMap<String, String> =
                serde_json::from_value(bookworm_probe()["markers"].clone()).unwrap();
            if !ftl_python::requirements::applies(&req, &markers) {
                continue;
            }
            if !seen.insert(req.key.clone()) {
                continue;
            }
            let version = req.pinned_version().unwrap_or("1.0").to_string();
            items.push(serde_json::json!({
                "metadata": {"name": req.name, "version": version},
                "requested": true,
                "is_direct": req.url.is_some(),
                "download_info": {
                    "url": format!("https://files.example/{}-{version}-py3-none-any.whl", req.key),
                    "archive_info": {"hashes": {"sha256": format!("{:064x}", seen.len())}},
                },
            }));
        }
    }
    ExecOutput {
        code: Some(0),
        stdout: serde_json::json!({"version": "1", "install": items})
            .to_string()
            .into_bytes(),
        ..ExecOutput::default()
    }
}

impl Exec for ProbeExec {
    fn run(&self, request: &ExecRequest) -> Result<ExecOutput, PluginError> {
        self.requests.lock().unwrap().push(request.clone());
        if request.label == "pip resolve" {
            return Ok(fake_resolution(request));
        }
        assert_eq!(
            request.label, "python probe",
            "planning runs only the probe and the resolution"
        );
        assert_eq!(
            request.network,
            ftl::StepNetwork::None,
            "the probe needs no network"
        );
        Ok(ExecOutput {
            code: Some(0),
            stdout: format!("{}\n", self.probe).into_bytes(),
            ..ExecOutput::default()
        })
    }
}

pub fn plan_with(
    app: &Path,
    options: &BuildOptions,
    exec: &dyn Exec,
) -> Result<LayerPlan, PluginError> {
    let source = SourceTree::scan(app).unwrap();
    let base = base();
    let ctx = PlanContext {
        source: &source,
        base: &base,
        options,
        exec,
    };
    PythonPlugin.plan(&ctx)
}

pub fn plan(app: &str) -> Result<LayerPlan, PluginError> {
    plan_with(
        &testdata(app),
        &BuildOptions::default(),
        &ProbeExec::new(bookworm_probe()),
    )
}

/// A plan as the snapshot shows it.
pub fn render(plan: &LayerPlan) -> serde_json::Value {
    let layers: Vec<_> = plan
        .layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "name": l.name,
                "pinned": l.pinned,
                "step": l.step,
                "created_by": l.created_by,
                "key": l.key.hex,
                "inputs": l.key.inputs(),
            })
        })
        .collect();
    let c = &plan.config;
    serde_json::json!({
        "layers": layers,
        "config": {
            "env": c.env,
            "entrypoint": c.entrypoint,
            "cmd": c.cmd,
            "workdir": c.workdir,
            "exposed_ports": c.exposed_ports,
        },
    })
}

/// A copy of a testdata app whose requirements.txt lines each get a
/// (made-up) `--hash`: a complete lock, which is checked, not resolved.
pub fn hash_pinned_copy(app: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let from = testdata(app);
    for e in std::fs::read_dir(&from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
        }
    }
    let text = std::fs::read_to_string(from.join("requirements.txt")).unwrap();
    let hashed: String = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if l.trim().is_empty()
                || l.starts_with('#')
                || l.starts_with('-')
                || l.contains("--hash")
            {
                format!("{l}\n")
            } else {
                format!("{l} --hash=sha256:{:064x}\n", i + 1)
            }
        })
        .collect();
    std::fs::write(dir.path().join("requirements.txt"), hashed).unwrap();
    dir
}
