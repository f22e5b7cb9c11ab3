//! Start-to-exit latency of `echo hi` in a busybox bundle: ftl's sandbox
//! (library call and command line; a build step without network and with
//! egress through slirp4netns and pasta, and with its output directory on a
//! size-limited volume), runsc (ptrace), runc and crun; medians of 30 runs.
//! `cargo bench -p ftl-sandbox`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ftl_sandbox::{spec_for_step, Network, RunRequest, Sandbox, Source, Stack, StepSpec};

const RUNS: usize = 30;

fn find(binary: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(binary))
        .find(|p| p.exists())
}

fn bundle(dir: &Path) -> PathBuf {
    let busybox =
        find("busybox").expect("busybox is not installed: apt-get install -y busybox-static");
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    for d in ["proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    for a in ["sh", "echo"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    let mut spec = ftl_sandbox::example_spec(false);
    let p = spec.process_mut().as_mut().unwrap();
    p.set_terminal(Some(false));
    p.set_args(Some(vec!["echo".into(), "hi".into()]));
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    dir.to_path_buf()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One timed run of `c`, checking the output.
fn time_once(mut c: Command) -> Result<Duration, String> {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = c.output().map_err(|e| e.to_string())?;
    let dt = t.elapsed();
    if out.stdout != b"hi\n" {
        return Err(format!(
            "unexpected output {:?} {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(dt)
}

type Runner<'a> = Box<dyn FnMut(usize) -> Result<Duration, String> + 'a>;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle(tmp.path());
    let state = tmp.path().join("state");
    let ftl = PathBuf::from(env!("CARGO_BIN_EXE_ftl-sandbox"));
    let crun = find("crun");
    if crun.is_some() {
        // crun refuses the hybrid cgroup layout: every runtime runs in a
        // private mount namespace without /sys/fs/cgroup/unified.
        // SAFETY: single-threaded here; plain unshare + mount calls.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) == 0
                && libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) == 0
            {
                libc::umount2(c"/sys/fs/cgroup/unified".as_ptr(), libc::MNT_DETACH);
            }
        }
    }
    let external =
        |bin: PathBuf, name: &'static str, extra: &'static [&'static str]| -> Runner<'_> {
            let root = tmp.path().join(name);
            let b = b.clone();
            Box::new(move |i| {
                let mut c = Command::new(&bin);
                c.arg("--root")
                    .arg(&root)
                    .args(extra)
                    .args(["run", "--bundle"])
                    .arg(&b)
                    .arg(format!("bench-{name}-{i}"));
                time_once(c)
            })
        };
    let mut runners: Vec<(String, Runner<'_>)> = Vec::new();
    {
        let b = b.clone();
        let state = state.clone();
        runners.push((
            "ftl (library call)".into(),
            Box::new(move |i| {
                let req = RunRequest::new(format!("bench-lib-{i}"), Source::Bundle(b.clone()))
                    .with_state_root(&state);
                let t = Instant::now();
                let o = Sandbox::default().run(&req).map_err(|e| e.to_string())?;
                let dt = t.elapsed();
                if o.stdout != b"hi\n" {
                    return Err(format!("unexpected outcome {o:?}"));
                }
                Ok(dt)
            }),
        ));
    }
    // Build steps as ftl runs them (spec_for_step on the same rootfs): no
    // network, and egress through each user-mode network stack (started,
    // attached, rules installed, torn down).
    let rootfs = b.join("rootfs");
    for (name, network) in [
        ("ftl step, no network", Network::None),
        (
            "ftl step, egress slirp4netns",
            Network::Egress(Stack::Slirp4netns),
        ),
        ("ftl step, egress pasta", Network::Egress(Stack::Pasta)),
    ] {
        let rootfs = rootfs.clone();
        let state = state.clone();
        let spec = spec_for_step(&StepSpec {
            network,
            ..StepSpec::new(&rootfs, ["echo", "hi"])
        });
        runners.push((
            name.into(),
            Box::new(move |i| {
                let req = RunRequest::from_spec(format!("bench-step-{i}"), &rootfs, spec.clone())
                    .with_state_root(&state);
                let t = Instant::now();
                let o = Sandbox::default().run(&req).map_err(|e| e.to_string())?;
                let dt = t.elapsed();
                if o.stdout != b"hi\n" {
                    return Err(format!("unexpected outcome {o:?}"));
                }
                Ok(dt)
            }),
        ));
    }
    // A build step whose output directory is a 16 GiB volume (made,
    // mounted, bound writable, unmounted and deleted around the step):
    // what a size limit costs a step (root only).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let rootfs = rootfs.clone();
        let state = state.clone();
        let dir = tmp.path().join("volumes");
        std::fs::create_dir_all(&dir).unwrap();
        runners.push((
            "ftl step, 16 GiB output volume".into(),
            Box::new(move |i| {
                let out = dir.join(format!("out-{i}"));
                let image = dir.join(format!(".out-{i}.img"));
                let t = Instant::now();
                let volume = ftl_sandbox::volume::Volume::create(&image, &out, 16 << 30)
                    .map_err(|e| e.to_string())?;
                let mut step = StepSpec::new(&rootfs, ["echo", "hi"]);
                step.mounts.push(ftl_sandbox::BindMount {
                    host: out.clone(),
                    target: "/out".into(),
                    writable: true,
                });
                let req =
                    RunRequest::from_spec(format!("bench-vol-{i}"), &rootfs, spec_for_step(&step))
                        .with_state_root(&state);
                let o = Sandbox::default().run(&req).map_err(|e| e.to_string())?;
                drop(volume);
                let dt = t.elapsed();
                if o.stdout != b"hi\n" {
                    return Err(format!("unexpected outcome {o:?}"));
                }
                Ok(dt)
            }),
        ));
        let dir = tmp.path().join("volumes-alone");
        std::fs::create_dir_all(&dir).unwrap();
        runners.push((
            "16 GiB volume alone".into(),
            Box::new(move |i| {
                let out = dir.join(format!("out-{i}"));
                let image = dir.join(format!(".out-{i}.img"));
                let t = Instant::now();
                let volume = ftl_sandbox::volume::Volume::create(&image, &out, 16 << 30)
                    .map_err(|e| e.to_string())?;
                drop(volume);
                Ok(t.elapsed())
            }),
        ));
    }
    runners.push((
        "ftl-sandbox run (CLI)".into(),
        external(ftl.clone(), "ftl", &[]),
    ));
    let mut missing = Vec::new();
    match find("runsc") {
        Some(p) => runners.push((
            "runsc --platform=ptrace".into(),
            external(p, "runsc", &["--network=none", "--platform=ptrace"]),
        )),
        None => missing.push("runsc: not installed (apt-get install -y runsc)"),
    }
    match find("runc") {
        Some(p) => runners.push(("runc".into(), external(p, "runc", &[]))),
        None => missing.push("runc: not installed (apt-get install -y runc)"),
    }
    match crun {
        Some(p) => runners.push(("crun".into(), external(p, "crun", &[]))),
        None => missing.push("crun: not installed (apt-get install -y crun), optional"),
    }
    // Interleaved rounds, so that load from elsewhere hits every runtime
    // alike; the first two rounds warm caches and are dropped.
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); runners.len()];
    let mut errors: Vec<Option<String>> = vec![None; runners.len()];
    for round in 0..RUNS + 2 {
        for (k, (_, run)) in runners.iter_mut().enumerate() {
            if errors[k].is_some() {
                continue;
            }
            match run(round) {
                Ok(d) if round >= 2 => times[k].push(d),
                Ok(_) => {}
                Err(e) => errors[k] = Some(e),
            }
        }
    }
    let mut rows = Vec::new();
    for (k, (name, _)) in runners.iter().enumerate() {
        match &errors[k] {
            Some(e) => rows.push((name.clone(), None, e.clone())),
            None => {
                let min = *times[k].iter().min().unwrap();
                let max = *times[k].iter().max().unwrap();
                rows.push((
                    name.clone(),
                    Some(median(times[k].clone())),
                    format!(
                        "min {:.2} ms, max {:.2} ms",
                        min.as_secs_f64() * 1e3,
                        max.as_secs_f64() * 1e3
                    ),
                ));
            }
        }
    }
    for m in missing {
        rows.push((
            m.split(':').next().unwrap().to_string(),
            None,
            m.to_string(),
        ));
    }
    println!();
    println!("start-to-exit latency of `echo hi` (busybox bundle), median of {RUNS} runs");
    println!("{:<30} {:>12}  notes", "runtime", "median");
    for (name, med, note) in &rows {
        match med {
            Some(m) => println!("{name:<30} {:>9.2} ms  {note}", m.as_secs_f64() * 1e3),
            None => println!("{name:<30} {:>12}  {note}", "-"),
        }
    }
    let get = |n: &str| rows.iter().find(|r| r.0.starts_with(n)).and_then(|r| r.1);
    if let (Some(f), Some(r)) = (get("ftl-sandbox run"), get("runsc")) {
        println!("runsc / ftl CLI: {:.1}x", r.as_secs_f64() / f.as_secs_f64());
    }
    if let (Some(f), Some(c)) = (get("ftl-sandbox run"), get("crun")) {
        println!("crun / ftl CLI: {:.2}x", c.as_secs_f64() / f.as_secs_f64());
    }
}
