//! Benchmarks that print numbers (not timed tests).
//!
//! - `layers`: reproducible layer build throughput on ~200 MB of real files
//!   (MB/s of uncompressed input), at the default level and others.
//! - `push`: push of a ~50 MB layer to a local registry (MB/s), and the
//!   no-op rebuild+push latency of a small app (ms).
//! - `python`: the four scenarios on testdata/python/flask (a complete
//!   lock) and testdata/python/appengine-hello (top-level pins), pip on the
//!   host, and the same app as a Dockerfile built with buildah
//!   (`FTL_BENCH_ONLY_APPENGINE=1`, `FTL_BENCH_ONLY_BUILDAH=1` narrow it;
//!   `FTL_BENCH_STEPS=1` prints each added-dependency build's phases and
//!   sandboxed steps).
//! - `node`: the four scenarios on testdata/node/express.
//! - `unpack`: each test base's layers unpacked as a build's first step
//!   gets them (ftl pulling from the rig's registry: download, inflate
//!   and extract overlapped, layers in parallel; and ftl from the local
//!   blobs), and by GNU tar (`tar -xzf`, one per layer, all at once, from
//!   the same blobs), into the same filesystem: MB/s of uncompressed layer
//!   data, and the CPU seconds of ftl and tar from the blobs, medians of
//!   3 (`FTL_BENCH_RUNS`; `FTL_BENCH_BASES=node,python` picks the bases,
//!   by default `python`, `node` and any other already built).
//! - `net`: `pip download` of testdata/python/flask's lock and of a ~67 MB
//!   wheel set, on the host, in a sandboxed step on the host's network,
//!   and in egress steps behind slirp4netns and pasta (as root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ftl::layer::{write_layer, LayerSettings};
use ftl::{LayerContents, LayerInput};
use ftl_test_support::rig::{copy_tree, Rig};

use crate::{build_ftl, root};

pub fn main(args: &[String]) -> Result<()> {
    let what = args.first().map(String::as_str).unwrap_or("all");
    match what {
        "layers" => layers(),
        "push" => push(),
        "python" => python(),
        "node" => node(),
        "net" => net(),
        "unpack" => unpack(),
        "all" => {
            layers()?;
            push()?;
            python()?;
            node()?;
            unpack()?;
            net()
        }
        other => {
            bail!("unknown benchmark {other:?}: layers, push, python, node, unpack, net, all")
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

/// Directories of real files under /usr adding up to at least `want` bytes.
fn real_tree(want: u64) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut total = 0;
    for top in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/share",
        "/usr/lib",
        "/usr/bin",
    ] {
        let Ok(rd) = std::fs::read_dir(top) else {
            continue;
        };
        let mut entries: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir() && !p.is_symlink())
            .collect();
        entries.sort();
        for d in entries {
            if total >= want {
                return dirs;
            }
            let size: u64 = walk_size(&d);
            if size == 0 || size > want {
                continue;
            }
            total += size;
            dirs.push(d);
        }
    }
    dirs
}

fn walk_size(d: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![d.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                n += m.len();
            }
        }
    }
    n
}

fn layers() -> Result<()> {
    let dirs = real_tree(200 << 20);
    let contents = LayerContents {
        root_dependent: false,
        inputs: dirs
            .iter()
            .map(|d| LayerInput::Tree {
                from: ftl::beneath::Beneath::root(d.clone()),
                to: format!("/data{}", d.display()),
            })
            .collect(),
    };
    // Warm the page cache so the numbers measure the pipeline, not the disk.
    let probe = write_layer(&contents, LayerSettings::default(), std::io::sink())?;
    let mb = probe.uncompressed_size as f64 / 1e6;
    println!(
        "\nlayer build: {} entries, {:.0} MB uncompressed, from {} directories of /usr",
        probe.entries,
        mb,
        dirs.len()
    );
    println!(
        "{:<8} {:>10} {:>12} {:>8}",
        "level", "MB/s", "compressed", "ratio"
    );
    for level in [1u32, 3, 6] {
        let settings = LayerSettings {
            level,
            ..LayerSettings::default()
        };
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..3 {
            let out = tempfile::tempfile()?;
            let t = Instant::now();
            let d = write_layer(&contents, settings, std::io::BufWriter::new(out))?;
            times.push(t.elapsed().as_secs_f64());
            size = d.size;
        }
        let secs = median(times);
        let default = if level == ftl::layer::DEFAULT_LEVEL {
            " (default)"
        } else {
            ""
        };
        println!(
            "{:<8} {:>10.1} {:>12} {:>8.2}{default}",
            level,
            mb / secs,
            size,
            size as f64 / probe.uncompressed_size as f64
        );
    }
    Ok(())
}

fn ftl_json(ftl: &Path, cache: &Path, args: &[&str]) -> Result<(serde_json::Value, f64)> {
    let t = Instant::now();
    let out = Command::new(ftl)
        .args(args)
        .arg("--json")
        .env("FTL_CACHE_DIR", cache)
        .output()?;
    let wall = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "ftl {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((
        serde_json::from_slice(&out.stdout).context("ftl --json output")?,
        wall,
    ))
}

fn phase(report: &serde_json::Value, name: &str) -> f64 {
    report["timings"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["phase"] == name)
        .and_then(|t| t["ms"].as_f64())
        .unwrap_or(0.0)
}

fn push() -> Result<()> {
    let ftl = build_ftl()?;
    let rig = Rig::start(&ftl, &["python"])?;
    let work = tempfile::tempdir()?;
    // ~50 MB of real, compressible-as-usual files.
    let src = work.path().join("big");
    std::fs::create_dir_all(&src)?;
    // ~50 MB of real files, twice: they compress about 2:1 at the default
    // level, so the layer is about 50 MB.
    let mut total = 0;
    for d in real_tree(60 << 20) {
        let name = d.strip_prefix("/")?.to_string_lossy().replace('/', "_");
        for copy in ["a", "b"] {
            let dest = src.join(copy).join(&name);
            std::fs::create_dir_all(dest.parent().expect("has a parent"))?;
            copy_tree(&d, &dest)?;
        }
        total += walk_size(&d);
        if total >= 50 << 20 {
            break;
        }
    }
    let mut rates = Vec::new();
    let mut size = 0.0;
    for i in 0..3 {
        let cache = work.path().join(format!("cache-{i}"));
        let image = rig.image(&format!("bench/push{i}:latest"));
        let (report, _) = ftl_json(
            &ftl,
            &cache,
            &[
                "build",
                src.to_str().unwrap(),
                "--base",
                &rig.base("python"),
                "--image",
                &image,
                "--language",
                "generic",
                "--no-registry-cache",
            ],
        )?;
        size = report["bytes_uploaded"].as_f64().unwrap_or(0.0);
        rates.push(size / 1e6 / (phase(&report, "push") / 1000.0));
    }
    println!(
        "\npush: {:.1} MB layer to a local registry: {:.0} MB/s (median of 3)",
        size / 1e6,
        median(rates)
    );

    let app = root().join("testdata/python/nodeps");
    let cache = work.path().join("noop-cache");
    let image = rig.image("bench/noop:latest");
    let args = [
        "build",
        app.to_str().unwrap(),
        "--base",
        &rig.base("python"),
        "--image",
        &image,
        "--language",
        "generic",
        "--entrypoint",
        "python3 main.py",
    ];
    ftl_json(&ftl, &cache, &args)?;
    let mut engine = Vec::new();
    let mut wall = Vec::new();
    for _ in 0..10 {
        let (r, w) = ftl_json(&ftl, &cache, &args)?;
        assert_eq!(r["bytes_uploaded"], 0);
        engine.push(phase(&r, "total"));
        wall.push(w);
    }
    println!("no-op rebuild+push of a small app: {:.0} ms in the engine, {:.0} ms for the whole process (medians of 10)", median(engine), median(wall));
    Ok(())
}

/// A benchmark's scenarios in the order first run: each run's wall time
/// and bytes uploaded, and the layers built.
#[derive(Default)]
struct Scenarios(Vec<(String, Vec<f64>, Vec<f64>, f64)>);

impl Scenarios {
    /// One run of scenario `name` that took `ms` and reported `r`.
    fn record(&mut self, name: &str, ms: f64, r: &serde_json::Value) {
        let bytes = r["bytes_uploaded"].as_f64().unwrap_or(0.0);
        let built = r["layers_built"].as_f64().unwrap_or(0.0);
        match self.0.iter_mut().find(|row| row.0 == name) {
            Some(row) => {
                row.1.push(ms);
                row.2.push(bytes);
            }
            None => self
                .0
                .push((name.to_string(), vec![ms], vec![bytes], built)),
        }
    }

    /// The table of medians under `title`.
    fn print(&self, title: &str) {
        println!("\n{title}");
        println!(
            "{:<30} {:>10} {:>14} {:>13}",
            "scenario", "ms", "bytes uploaded", "layers built"
        );
        for (name, times, bytes, built) in &self.0 {
            println!(
                "{:<30} {:>10.0} {:>14.0} {:>13.0}",
                name,
                median(times.clone()),
                median(bytes.clone()),
                built
            );
        }
    }
}

fn python() -> Result<()> {
    let ftl = build_ftl()?;
    let rig = Rig::start(&ftl, &["python"])?;
    let runs = 3;
    if std::env::var_os("FTL_BENCH_ONLY_BUILDAH").is_some() {
        return buildah(&rig, "appengine-hello", runs);
    }
    // A complete lock, and App Engine's hello world with only its top-level
    // pin (resolved by pip while planning, gunicorn added).
    if std::env::var_os("FTL_BENCH_ONLY_APPENGINE").is_none() {
        python_app(&ftl, &rig, "flask", runs)?;
    }
    python_app(&ftl, &rig, "appengine-hello", runs)?;
    if std::env::var_os("FTL_BENCH_ONLY_APPENGINE").is_some() {
        return Ok(());
    }
    buildah(&rig, "appengine-hello", runs)?;
    Ok(())
}

/// The four scenarios on testdata/python/`name`, then pip itself on the
/// host for the same requirements (the floor for a cold build).
fn python_app(ftl: &Path, rig: &Rig, name: &str, runs: usize) -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut table = Scenarios::default();
    let mut record = |name: &str, ms: f64, r: &serde_json::Value| table.record(name, ms, r);
    for i in 0..runs {
        let app = work.path().join(format!("{name}-{i}"));
        copy_tree(&root().join("testdata/python").join(name), &app)?;
        let cache = work.path().join(format!("cache-{i}"));
        // A fresh repository: its registry cache is empty too.
        let image = rig.image(&format!("bench/{name}{i}:latest"));
        let base = rig.base("python");
        let args = || -> Vec<String> {
            vec![
                "build".to_string(),
                app.display().to_string(),
                "--base".into(),
                base.clone(),
                "--image".into(),
                image.clone(),
            ]
        };
        let call = |a: Vec<String>| -> Result<(serde_json::Value, f64)> {
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            ftl_json(ftl, &cache, &refs)
        };
        let (r, ms) = call(args())?;
        record("cold (empty caches)", ms, &r);
        let (r, ms) = call(args())?;
        record("no-op rebuild", ms, &r);
        let main = std::fs::read_to_string(app.join("main.py"))?;
        std::fs::write(app.join("main.py"), format!("{main}\n# change {i}\n"))?;
        let (r, ms) = call(args())?;
        record("one-line app change", ms, &r);
        let reqs = std::fs::read_to_string(app.join("requirements.txt"))?;
        std::fs::write(app.join("requirements.txt"), format!("{reqs}six==1.16.0\n"))?;
        let (r, ms) = call(args())?;
        record("one added dependency (six)", ms, &r);
        if std::env::var_os("FTL_BENCH_STEPS").is_some() {
            println!(
                "{name} run {i}, one added dependency: {ms:.0} ms; timings {}; steps {}",
                r["timings"], r["steps"]
            );
        }
    }
    let reqs = root()
        .join("testdata/python")
        .join(name)
        .join("requirements.txt");
    let mut pip = Vec::new();
    for _ in 0..runs {
        let venv = tempfile::tempdir()?;
        let t = Instant::now();
        let ok = Command::new(host_python())
            .args(["-m", "venv"])
            .arg(venv.path())
            .status()?
            .success()
            && Command::new(venv.path().join("bin/pip"))
                .args([
                    "install",
                    "-q",
                    "--no-cache-dir",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(&reqs)
                .status()?
                .success();
        if !ok {
            bail!("host pip install failed");
        }
        pip.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    table.print(&format!(
        "python: testdata/python/{name}, medians of {runs} runs (whole `ftl build` process)"
    ));
    println!(
        "{:<30} {:>10.0}",
        "host: venv + pip install -r (ref)",
        median(pip)
    );
    Ok(())
}

/// The system's interpreter (Debian's, as a base image has it), not a
/// version manager's shim on `PATH`, which adds its own start to the
/// reference.
fn host_python() -> &'static str {
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// The same app as a Dockerfile built with buildah (installed from Debian
/// when missing): `COPY requirements.txt`, `RUN pip install -r`, then the
/// source, on the same base from the rig's registry; cold, then with one
/// added requirement (the layers before it cached).
fn buildah(rig: &Rig, name: &str, runs: usize) -> Result<()> {
    if Command::new("buildah").arg("--version").output().is_err() {
        println!("\ninstalling buildah (apt) for the comparison");
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-q", "buildah"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?
            .success();
        if !ok {
            println!("buildah is not available: no Dockerfile comparison");
            return Ok(());
        }
    }
    let work = tempfile::tempdir()?;
    let ca = std::env::var("SSL_CERT_FILE")
        .unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".into());
    let mut cold = Vec::new();
    let mut added = Vec::new();
    for i in 0..runs {
        let ctx = work.path().join(format!("ctx-{i}"));
        copy_tree(&root().join("testdata/python").join(name), &ctx)?;
        std::fs::write(
            ctx.join("Dockerfile"),
            format!(
                "FROM {base}\n\
                 RUN python3 -m venv /env\n\
                 COPY requirements.txt /srv/requirements.txt\n\
                 RUN PIP_CERT=/etc/ssl/certs/ca-certificates.crt /env/bin/pip install --no-cache-dir --disable-pip-version-check -q -r /srv/requirements.txt gunicorn\n\
                 COPY . /srv\n\
                 WORKDIR /srv\n\
                 CMD [\"/env/bin/gunicorn\", \"-b\", \":8080\", \"main:app\"]\n",
                base = rig.base("python"),
            ),
        )?;
        let store = work.path().join(format!("store-{i}"));
        let bud = || -> Result<f64> {
            let t = Instant::now();
            let out = Command::new("buildah")
                .arg("--root")
                .arg(store.join("root"))
                .arg("--runroot")
                .arg(store.join("run"))
                .args([
                    "--storage-driver",
                    "overlay",
                    "bud",
                    "--isolation",
                    "chroot",
                    "--layers",
                    "--tls-verify=false",
                    "-q",
                    "-v",
                ])
                .arg(format!("{ca}:/etc/ssl/certs/ca-certificates.crt:ro"))
                .args(["-t", "bench-buildah", "."])
                .current_dir(&ctx)
                .output()?;
            if !out.status.success() {
                bail!(
                    "buildah bud failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(t.elapsed().as_secs_f64() * 1000.0)
        };
        cold.push(bud()?);
        let reqs = std::fs::read_to_string(ctx.join("requirements.txt"))?;
        std::fs::write(ctx.join("requirements.txt"), format!("{reqs}six==1.16.0\n"))?;
        added.push(bud()?);
    }
    println!("\nbuildah 1.x (overlay storage, chroot isolation, --layers): testdata/python/{name} as a Dockerfile, medians of {runs} runs");
    println!("{:<30} {:>10.0}", "cold (empty storage)", median(cold));
    println!(
        "{:<30} {:>10.0}",
        "one added dependency (six)",
        median(added)
    );
    Ok(())
}

/// The four scenarios on testdata/node/express (node 18 and npm 9 of the
/// `node` test base; npm downloads from the npm registry).
fn node() -> Result<()> {
    let ftl = build_ftl()?;
    let rig = Rig::start(&ftl, &["node"])?;
    let work = tempfile::tempdir()?;
    let runs = 3;
    let mut table = Scenarios::default();
    let mut record = |name: &str, ms: f64, r: &serde_json::Value| table.record(name, ms, r);
    for i in 0..runs {
        let app = work.path().join(format!("express-{i}"));
        copy_tree(&root().join("testdata/node/express"), &app)?;
        let cache = work.path().join(format!("cache-{i}"));
        // A fresh repository: its registry cache is empty too.
        let image = rig.image(&format!("bench/express{i}:latest"));
        let base = rig.base("node");
        let args = [
            "build".to_string(),
            app.display().to_string(),
            "--base".into(),
            base.clone(),
            "--image".into(),
            image.clone(),
        ];
        let call = || -> Result<(serde_json::Value, f64)> {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            ftl_json(&ftl, &cache, &refs)
        };
        let (r, ms) = call()?;
        record("cold (empty caches)", ms, &r);
        let (r, ms) = call()?;
        record("no-op rebuild", ms, &r);
        let msg = std::fs::read_to_string(app.join("lib/message.js"))?;
        std::fs::write(app.join("lib/message.js"), format!("{msg}// change {i}\n"))?;
        let (r, ms) = call()?;
        record("one-line app change", ms, &r);
        for f in ["package.json", "package-lock.json"] {
            std::fs::copy(
                root().join("testdata/node/express-plus-ms").join(f),
                app.join(f),
            )?;
        }
        let (r, ms) = call()?;
        record("one added dependency (ms)", ms, &r);
    }
    table.print(&format!(
        "node: testdata/node/express, medians of {runs} runs (whole `ftl build` process)"
    ));
    Ok(())
}

/// Pinned wheels of about 67 MB (cp311, manylinux x86_64).
const BIG_WHEELS: &str = "numpy==1.26.4\npandas==2.2.2\nscipy==1.13.1\n";

/// `pip download` through each network a step can have, against the host.
fn net() -> Result<()> {
    use ftl_sandbox::{spec_for_step, BindMount, Network, RunRequest, Sandbox, Stack, StepSpec};
    let work = tempfile::tempdir()?;
    // The steps' root is an unprivileged id (a user namespace, as ftl's
    // own steps): it must be able to reach the container's state below.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let reqs = work.path().join("reqs");
    std::fs::create_dir_all(&reqs)?;
    std::fs::copy(
        root().join("testdata/python/flask/requirements.txt"),
        reqs.join("flask.txt"),
    )?;
    std::fs::write(reqs.join("big.txt"), BIG_WHEELS)?;
    // The system's interpreter where it has pip: the steps' root is an
    // unprivileged id, which cannot reach one below root's home (pyenv).
    // Else the host's interpreter by its real path (a shim needs more).
    let system_pip = Command::new("/usr/bin/python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let python = if system_pip {
        "/usr/bin/python3".to_string()
    } else {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .context("python3 on the host")?;
        String::from_utf8(out.stdout)?.trim().to_string()
    };
    let ca = "/etc/ssl/certs/ca-certificates.crt";
    let pip = |req: &str, dest: &str| -> Vec<String> {
        [
            python.as_str(),
            "-m",
            "pip",
            "download",
            "--no-cache-dir",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            dest,
            "-r",
            req,
        ]
        .map(String::from)
        .to_vec()
    };
    let env = [
        "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        "HOME=/tmp".into(),
        format!("PIP_CERT={ca}"),
        format!("SSL_CERT_FILE={ca}"),
    ];
    let state = work.path().join("state");
    let ways: [(&str, Option<Network>); 4] = [
        ("host", None),
        ("step, host network", Some(Network::Host)),
        (
            "step, egress slirp4netns",
            Some(Network::Egress(Stack::Slirp4netns)),
        ),
        ("step, egress pasta", Some(Network::Egress(Stack::Pasta))),
    ];
    let runs = 3;
    let mut rows: Vec<(String, &str, Vec<f64>)> = Vec::new();
    for set in ["flask", "big"] {
        for (name, _) in &ways {
            rows.push((set.to_string(), name, Vec::new()));
        }
        // Interleaved, so that the network's ups and downs hit all alike.
        for round in 0..runs {
            for (k, (_, network)) in ways.iter().enumerate() {
                let dest = work.path().join(format!("d-{set}-{k}-{round}"));
                std::fs::create_dir_all(&dest)?;
                let t = Instant::now();
                match network {
                    None => {
                        let req = reqs.join(format!("{set}.txt"));
                        let st = Command::new(&python)
                            .args(
                                &pip(&req.display().to_string(), &dest.display().to_string())[1..],
                            )
                            .env("PIP_CERT", ca)
                            .status()?;
                        if !st.success() {
                            bail!("pip download on the host failed: {st}");
                        }
                    }
                    Some(network) => {
                        // Mount points below /tmp (a tmpfs of the step), as
                        // the engine's steps on the host's root have them.
                        let mut step =
                            StepSpec::new("/", pip(&format!("/tmp/reqs/{set}.txt"), "/tmp/out"));
                        step.env = env.to_vec();
                        step.network = *network;
                        step.mounts = vec![
                            BindMount {
                                host: reqs.clone(),
                                target: "/tmp/reqs".into(),
                                writable: false,
                            },
                            BindMount {
                                host: dest.clone(),
                                target: "/tmp/out".into(),
                                writable: true,
                            },
                        ];
                        let req = RunRequest::from_spec(
                            format!("bench-net-{set}-{k}-{round}"),
                            "/",
                            spec_for_step(&step),
                        )
                        .with_state_root(&state);
                        let o = Sandbox::default().run(&req)?;
                        if !o.success() {
                            bail!(
                                "pip download in a step ({network:?}) failed: {}",
                                String::from_utf8_lossy(&o.stderr)
                            );
                        }
                    }
                }
                let ms = t.elapsed().as_secs_f64() * 1e3;
                let row = rows.len() - ways.len() + k;
                rows[row].2.push(ms);
            }
        }
    }
    println!();
    println!("pip download, median of {runs} interleaved runs (no cache; flask = testdata/python/flask, big = numpy+pandas+scipy, 67 MB)");
    println!(
        "{:<6} {:<26} {:>10} {:>14} {:>10}",
        "set", "network", "median", "vs host", "vs step"
    );
    for set in ["flask", "big"] {
        let med = |name: &str| {
            rows.iter()
                .find(|r| r.0 == set && r.1 == name)
                .map(|r| median(r.2.clone()))
                .unwrap_or(f64::NAN)
        };
        let (host, step) = (med("host"), med("step, host network"));
        for (name, _) in &ways {
            let m = med(name);
            println!(
                "{set:<6} {name:<26} {m:>7.0} ms {:>13.2}x {:>9.2}x",
                m / host,
                m / step
            );
        }
    }
    Ok(())
}

/// The bases `unpack` measures: `FTL_BENCH_BASES`, else `python`, `node`
/// and any other base already built (building one takes minutes).
fn unpack_bases() -> Vec<String> {
    use ftl_test_support::base_images::{base_image_dir, BASE_IMAGE_NAMES};
    if let Some(v) = std::env::var_os("FTL_BENCH_BASES") {
        return v
            .to_string_lossy()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
    }
    BASE_IMAGE_NAMES
        .iter()
        .filter(|n| {
            ["python", "node"].contains(n)
                || base_image_dir(n).is_ok_and(|d| d.join("index.json").is_file())
        })
        .map(|n| n.to_string())
        .collect()
}

/// The blobs of `name`'s layers in its OCI layout, bottom first.
fn layout_layers(name: &str) -> Result<Vec<PathBuf>> {
    let dir = ftl_test_support::base_images::ensure_base_image(name)?;
    let blob = |digest: &str| {
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let manifest = index["manifests"][0]["digest"]
        .as_str()
        .context("index.json names no manifest")?;
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(manifest))?)?;
    Ok(manifest["layers"]
        .as_array()
        .context("a manifest without layers")?
        .iter()
        .filter_map(|l| l["digest"].as_str().map(blob))
        .collect())
}

/// Bytes of a layer's tar stream, decompressed.
fn uncompressed_bytes(blob: &Path) -> Result<u64> {
    let file = std::fs::File::open(blob)?;
    let mut r = ftl::rootfs::decompress(std::io::BufReader::new(file))?;
    Ok(std::io::copy(&mut r, &mut std::io::sink())?)
}

fn unpack() -> Result<()> {
    let bases = unpack_bases();
    let rig = Rig::start(root().join("target/release/ftl"), &[])?;
    for name in &bases {
        ftl_test_support::base_images::push_base_image(
            name,
            &rig.registry.host(),
            &format!("base/{name}"),
        )?;
    }
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    // Same filesystem for all: below the workspace's target directory.
    let scratch_parent = root().join("target");
    let rt = tokio::runtime::Runtime::new()?;
    let client = ftl_registry_client::Client::new(Default::default())?;
    let platform = ftl_registry_client::default_platform();
    let runs: usize = std::env::var("FTL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    println!(
        "\nunpack: base layers into {} ({}), MB/s of uncompressed layer data (wall), \
         and CPU seconds (user+sys) from local blobs, medians of {runs}",
        scratch_parent.display(),
        if as_root {
            "as root: a directory per layer, whiteouts for overlayfs"
        } else {
            "unprivileged: one merged tree, layers in order"
        }
    );
    println!(
        "{:<14} {:>6} {:>6} {:>6} {:>12} {:>10} {:>11} {:>8} {:>8}",
        "base",
        "layers",
        "gz MB",
        "tar MB",
        "ftl registry",
        "ftl blobs",
        "GNU tar ||",
        "ftl cpu",
        "tar cpu"
    );
    for name in &bases {
        let blobs = layout_layers(name)?;
        let gz: u64 = blobs
            .iter()
            .map(|b| std::fs::metadata(b).map(|m| m.len()).unwrap_or(0))
            .sum();
        let mut raw = 0;
        for b in &blobs {
            raw += uncompressed_bytes(b)?;
        }
        let mb = raw as f64 / 1e6;
        let reference: ftl_registry_client::Reference = rig.base(name).parse()?;
        let (mut from_registry, mut from_blobs, mut gnu) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ftl_cpu, mut tar_cpu) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            // ftl, pulling from the registry into an empty cache.
            let work = tempfile::tempdir_in(&scratch_parent)?;
            let cache = ftl_cache::Cache::open(work.path())?;
            let t = Instant::now();
            rt.block_on(ftl::engine::unpack_base(
                &client,
                &cache,
                work.path(),
                &reference,
                &platform,
            ))?;
            from_registry.push(mb / t.elapsed().as_secs_f64());
            drop(work);

            // ftl, from the local blobs, layers in parallel.
            let work = tempfile::tempdir_in(&scratch_parent)?;
            let t = Instant::now();
            let cpu = cpu_secs(libc::RUSAGE_SELF);
            let handles: Vec<_> = blobs
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let (b, dest) = (b.clone(), work.path().join(i.to_string()));
                    std::thread::spawn(move || -> Result<()> {
                        let file = std::fs::File::open(&b)?;
                        let mut r = ftl::rootfs::read_ahead(ftl::rootfs::decompress(
                            std::io::BufReader::with_capacity(1 << 20, file),
                        )?);
                        if as_root {
                            ftl::rootfs::unpack_layer_dir(&mut r, &dest, &b)?;
                        } else {
                            std::fs::create_dir_all(&dest)?;
                            ftl::rootfs::extract(&mut r, &dest, ftl::rootfs::Whiteouts::Apply, &b)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().expect("no panic")?;
            }
            from_blobs.push(mb / t.elapsed().as_secs_f64());
            ftl_cpu.push(cpu_secs(libc::RUSAGE_SELF) - cpu);
            drop(work);

            // GNU tar, one per layer, all at once.
            let work = tempfile::tempdir_in(&scratch_parent)?;
            let t = Instant::now();
            let cpu = cpu_secs(libc::RUSAGE_CHILDREN);
            let children: Vec<_> = blobs
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let dest = work.path().join(i.to_string());
                    std::fs::create_dir_all(&dest)?;
                    Ok(Command::new("tar")
                        .arg("-xzf")
                        .arg(b)
                        .arg("-C")
                        .arg(&dest)
                        .spawn()?)
                })
                .collect::<Result<_>>()?;
            for mut c in children {
                if !c.wait()?.success() {
                    bail!("tar failed on a layer of {name}");
                }
            }
            gnu.push(mb / t.elapsed().as_secs_f64());
            tar_cpu.push(cpu_secs(libc::RUSAGE_CHILDREN) - cpu);
            drop(work);
        }
        println!(
            "{:<14} {:>6} {:>6.0} {:>6.0} {:>12.0} {:>10.0} {:>11.0} {:>8.2} {:>8.2}",
            name,
            blobs.len(),
            gz as f64 / 1e6,
            mb,
            median(from_registry),
            median(from_blobs),
            median(gnu),
            median(ftl_cpu),
            median(tar_cpu)
        );
    }
    Ok(())
}

/// User plus system CPU seconds of `who` (`RUSAGE_SELF`, `RUSAGE_CHILDREN`).
fn cpu_secs(who: libc::c_int) -> f64 {
    // SAFETY: getrusage into a zeroed struct we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut ru);
        ru
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}
