//! Throughput of `ftl serve` on this machine: no-op rebuilds of the Flask
//! sample through HTTP with 2 workers, and the latency of `POST /v1/builds`
//! under that load. Everything runs on loopback (a local registry with a
//! base image built from Debian packages); the load is bounded in count and
//! time and stops by itself.
//!
//! ```text
//! cargo build --release -p ftl-cli
//! cargo run --release -p ftl-server --example bench -- [--ftl target/release/ftl] [--secs 60] [--max-builds 400] [--clients 4]
//! ```

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ftl_test_support::rig::Rig;

struct Resp {
    status: u16,
    body: String,
}

fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("bad status line")?;
    Ok(Resp {
        status,
        body: body.to_string(),
    })
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ftl = arg(&args, "--ftl")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/ftl"));
    if !ftl.is_file() {
        bail!(
            "{} does not exist: cargo build --release -p ftl-cli",
            ftl.display()
        );
    }
    let secs: u64 = arg(&args, "--secs")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(60);
    let max_builds: usize = arg(&args, "--max-builds")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(400);
    let clients: usize = arg(&args, "--clients")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(4);

    eprintln!("==> registry and python base image");
    let rig = Rig::start(&ftl, &["python"])?;
    let tmp = tempfile::tempdir()?;
    let token = "bench-token-0123456789";
    std::fs::write(
        tmp.path().join("tokens"),
        format!(
            "[[token]]\nname = \"bench\"\ntoken = \"{token}\"\nimage = [\"*\"]\nbase = [\"*\"]\n"
        ),
    )?;
    let mut child = Command::new(&ftl)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--queue",
            "64",
            "--state-dir",
        ])
        .arg(tmp.path().join("state"))
        .arg("--token-file")
        .arg(tmp.path().join("tokens"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("ftl serve: listening on http://")
        .context("ftl serve did not start")?
        .to_string();
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = out.read_to_string(&mut sink);
    });

    let tar = Command::new("tar")
        .args(["-czf", "-", "--exclude=__pycache__", "-C"])
        .arg(root.join("testdata/python/flask"))
        .arg(".")
        .output()?;
    let archive = tar.stdout;
    let options = serde_json::json!({
        "image": rig.image("bench/flask:latest"),
        "base": rig.base("python"),
    })
    .to_string();
    let auth = format!("Bearer {token}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Ftl-Options", options.as_str()),
    ];

    let submit = || -> Result<(u16, f64, String)> {
        let t = Instant::now();
        let r = request(&addr, "POST", "/v1/builds", &headers, &archive)?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let id = serde_json::from_str::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["id"].as_str().map(String::from))
            .unwrap_or_default();
        Ok((r.status, ms, id))
    };
    let wait = |id: &str| -> Result<serde_json::Value> {
        loop {
            let r = request(
                &addr,
                "GET",
                &format!("/v1/builds/{id}"),
                &[("Authorization", auth.as_str())],
                b"",
            )?;
            let v: serde_json::Value = serde_json::from_str(&r.body)?;
            match v["state"].as_str() {
                Some("queued") | Some("running") => std::thread::sleep(Duration::from_millis(20)),
                _ => return Ok(v),
            }
        }
    };

    eprintln!("==> warm-up: one cold build");
    let t = Instant::now();
    let (status, _, id) = submit()?;
    if status != 202 {
        bail!("warm-up submit answered {status}");
    }
    let v = wait(&id)?;
    if v["state"] != "succeeded" {
        bail!("warm-up build failed: {v:#}");
    }
    eprintln!("    cold build: {:.1}s", t.elapsed().as_secs_f64());

    eprintln!("==> load: {clients} clients, closed loop, at most {secs}s and {max_builds} builds");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = AtomicUsize::new(0);
    let post_ms = Mutex::new(Vec::new());
    let build_ms = Mutex::new(Vec::new());
    let rejected = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                while Instant::now() < deadline
                    && started.fetch_add(1, Ordering::SeqCst) < max_builds
                {
                    let t = Instant::now();
                    let Ok((status, ms, id)) = submit() else {
                        failed.fetch_add(1, Ordering::SeqCst);
                        continue;
                    };
                    post_ms.lock().unwrap().push(ms);
                    if status == 429 {
                        rejected.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    match wait(&id) {
                        Ok(v) if v["state"] == "succeeded" && v["report"]["layers_built"] == 0 => {
                            build_ms
                                .lock()
                                .unwrap()
                                .push(t.elapsed().as_secs_f64() * 1000.0)
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            });
        }
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();

    let mut post = post_ms.into_inner().unwrap();
    let mut builds = build_ms.into_inner().unwrap();
    post.sort_by(f64::total_cmp);
    builds.sort_by(f64::total_cmp);
    println!("ftl serve benchmark: no-op rebuilds of testdata/python/flask over HTTP, --workers 2, {clients} clients");
    println!("  ftl binary:           {}", ftl.display());
    println!("  builds succeeded:     {} in {elapsed:.1}s", builds.len());
    println!(
        "  throughput:           {:.1} builds/minute",
        builds.len() as f64 * 60.0 / elapsed
    );
    println!(
        "  POST /v1/builds:      p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} requests, {} answered 429)",
        percentile(&post, 50.0),
        percentile(&post, 99.0),
        post.last().copied().unwrap_or(f64::NAN),
        post.len(),
        rejected.load(Ordering::SeqCst)
    );
    println!(
        "  submit to succeeded:  p50 {:.0} ms, p99 {:.0} ms",
        percentile(&builds, 50.0),
        percentile(&builds, 99.0)
    );
    println!("  failed or not no-op:  {}", failed.load(Ordering::SeqCst));
    Ok(())
}
