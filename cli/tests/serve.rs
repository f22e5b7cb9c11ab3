//! `ftl serve` end to end, as a client uses it: the real binary serving
//! HTTP on loopback, a real registry with base images built from Debian
//! packages, real pip in ftl's sandbox. The client here is a few lines of
//! HTTP/1.1 over a TcpStream, so what is tested is the wire, not a library.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ftl_test_support::rig::Rig;
use serde_json::{json, Value};

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let mut bases = vec!["python"];
        if node_sample().is_some() {
            bases.push("node");
        }
        Rig::start(env!("CARGO_BIN_EXE_ftl"), &bases).expect("test rig starts")
    })
}

/// Tests that run many builds take turns: two cores are shared.
fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn flask() -> PathBuf {
    root().join("testdata/python/flask")
}

fn node_sample() -> Option<PathBuf> {
    let p = root().join("testdata/node/express");
    p.join("package.json").is_file().then_some(p)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `tar -czf - -C DIR .`
fn tar_gz(dir: &Path) -> Vec<u8> {
    let out = Command::new("tar")
        .args([
            "-czf",
            "-",
            "--exclude=node_modules",
            "--exclude=__pycache__",
            "-C",
        ])
        .arg(dir)
        .arg(".")
        .output()
        .expect("tar runs");
    assert!(out.status.success(), "tar failed");
    out.stdout
}

// ---- a small HTTP/1.1 client -------------------------------------------

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text()))
    }
}

fn send(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // The server may answer (413, 401) before reading the whole body.
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
    s
}

fn read_head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (status, headers)
}

/// Reads one chunk of a chunked body; `None` at the end.
fn read_chunk(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut size = String::new();
    if r.read_line(&mut size).ok()? == 0 {
        return None;
    }
    let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16).ok()?;
    if n == 0 {
        return None;
    }
    let mut buf = vec![0; n + 2];
    r.read_exact(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let s = send(addr, method, path, headers, body);
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        while let Some(c) = read_chunk(&mut r) {
            body.extend(c);
        }
    } else {
        let _ = r.read_to_end(&mut body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

// ---- a server under test ------------------------------------------------

struct Server {
    child: Child,
    addr: String,
    token: String,
    dir: PathBuf,
    state: PathBuf,
}

impl Server {
    /// `ftl serve` with its state in `DIR/state` and its token in
    /// `DIR/tokens`, on a free port.
    fn start(dir: &Path, extra: &[&str]) -> Server {
        Server::start_with(dir, extra, &[])
    }

    fn start_with(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let token = "test-token-0123456789abcdef";
        let tokens = format!(
            "# the test's token: any repository\n[[token]]\nname = \"test\"\ntoken = \"{token}\"\nimage = [\"*\"]\nbase = [\"*\"]\n"
        );
        Server::start_tokens(dir, extra, env, &tokens, token)
    }

    /// `ftl serve` with the token file `tokens` (TOML); `token` is the one
    /// [`Server::get`] and [`Server::submit`] send.
    fn start_tokens(
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        tokens: &str,
        token: &str,
    ) -> Server {
        let state = dir.join("state");
        let token = token.to_string();
        std::fs::write(dir.join("tokens"), tokens).unwrap();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("serve.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ftl"))
            .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&state)
            .arg("--token-file")
            .arg(dir.join("tokens"))
            .args(extra)
            .envs(env.iter().copied())
            .env("FTL_LOG", "info")
            .env_remove("SOURCE_DATE_EPOCH")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("ftl serve starts");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("ftl serve: listening on http://")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; log:\n{}",
                    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
                )
            })
            .to_string();
        // Keep draining stdout so that the server never writes to a closed pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = out.read_to_string(&mut sink);
        });
        Server {
            child,
            addr,
            token,
            dir: dir.to_path_buf(),
            state,
        }
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    fn get(&self, path: &str) -> Resp {
        request(
            &self.addr,
            "GET",
            path,
            &[("Authorization", &self.auth())],
            b"",
        )
    }

    fn submit(&self, archive: &[u8], options: &Value) -> Resp {
        let opts = options.to_string();
        request(
            &self.addr,
            "POST",
            "/v1/builds",
            &[
                ("Authorization", &self.auth()),
                ("Ftl-Options", &opts),
                ("Content-Type", "application/gzip"),
            ],
            archive,
        )
    }

    fn submit_ok(&self, archive: &[u8], options: &Value) -> String {
        let r = self.submit(archive, options);
        assert_eq!(r.status, 202, "{}", r.text());
        r.json()["id"].as_str().unwrap().to_string()
    }

    /// Polls until the build ends.
    fn wait(&self, id: &str, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let r = self.get(&format!("/v1/builds/{id}"));
            assert_eq!(r.status, 200, "{}", r.text());
            let v = r.json();
            if ["succeeded", "failed", "cancelled"].contains(&v["state"].as_str().unwrap()) {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "build {id} still {} after {timeout:?}; server log:\n{}",
                v["state"],
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn sigterm(&self) {
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn flask_options(image: &str, verify: bool) -> Value {
    json!({
        "image": rig().image(image),
        "base": rig().base("python"),
        "verify": verify,
    })
}

/// Reads a log stream as it arrives: (arrival time in ms, text) per chunk.
fn stream_log(
    addr: String,
    token: String,
    id: String,
) -> std::thread::JoinHandle<Vec<(i64, String)>> {
    std::thread::spawn(move || {
        let auth = format!("Bearer {token}");
        let s = send(
            &addr,
            "GET",
            &format!("/v1/builds/{id}/log"),
            &[("Authorization", &auth)],
            b"",
        );
        let mut r = BufReader::new(s);
        let (status, _) = read_head(&mut r);
        assert_eq!(status, 200);
        let mut chunks = Vec::new();
        while let Some(c) = read_chunk(&mut r) {
            chunks.push((now_ms(), String::from_utf8_lossy(&c).into_owned()));
        }
        chunks
    })
}

fn registry_has_manifest(repo: &str, digest: &str) -> bool {
    let host = rig().registry.host();
    let r = request(
        &host,
        "GET",
        &format!("/v2/{repo}/manifests/{digest}"),
        &[(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )],
        b"",
    );
    r.status == 200
}

// ---- the tests ------------------------------------------------------------

#[test]
fn http_build_of_flask_verifies_pushes_and_streams_its_log() {
    let rig = rig();
    let _turn = heavy();
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &["--workers", "2"]);

    let health = request(&server.addr, "GET", "/healthz", &[], b"");
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));

    let mut apps = vec![("serve-e2e/flask", flask(), "python")];
    if let Some(node) = node_sample() {
        apps.push(("serve-e2e/express", node, "node"));
    }
    for (repo, dir, base) in apps {
        let submitted = Instant::now();
        let r = server.submit(
            &tar_gz(&dir),
            &json!({"image": rig.image(&format!("{repo}:v1")), "base": rig.base(base), "verify": true}),
        );
        assert_eq!(r.status, 202, "{}", r.text());
        assert!(
            submitted.elapsed() < Duration::from_secs(5),
            "202 comes at once"
        );
        let v = r.json();
        let id = v["id"].as_str().unwrap().to_string();
        assert_eq!(v["state"], "queued");
        assert_eq!(
            r.header("location"),
            Some(format!("/v1/builds/{id}").as_str())
        );
        let log = stream_log(server.addr.clone(), server.token.clone(), id.clone());

        let done = server.wait(&id, Duration::from_secs(900));
        assert_eq!(done["state"], "succeeded", "{done:#}\n{}", server.log());
        assert_eq!(done["report"]["verify"]["status"], 200, "{done:#}");
        let digest = done["digest"].as_str().unwrap();
        assert!(digest.starts_with("sha256:"));
        assert!(done["image"].as_str().unwrap().ends_with(digest));
        assert!(
            registry_has_manifest(repo, digest),
            "{repo}@{digest} is in the registry"
        );
        let layers = done["report"]["layers"].as_array().unwrap();
        assert!(layers.iter().any(|l| l["source"] == "built"), "{done:#}");
        assert!(done["report"]["timings"].as_array().unwrap().len() > 2);

        // The log arrived in pieces while the build ran, and ended with it.
        let chunks = log.join().unwrap();
        let finished = done["finished_ms"].as_i64().unwrap();
        assert!(chunks.len() > 3, "{chunks:?}");
        assert!(
            chunks[0].0 < finished - 500,
            "the first log line arrived before the build ended: {chunks:?} finished {finished}"
        );
        let text: String = chunks.iter().map(|c| c.1.as_str()).collect();
        for want in [
            "queued:",
            "running (attempt 1)",
            "plan:",
            "push: started",
            "verify: passed",
            "succeeded:",
        ] {
            assert!(text.contains(want), "log lacks {want:?}:\n{text}");
        }
        // Read again after the end: the same log, from the file.
        let again = server.get(&format!("/v1/builds/{id}/log"));
        assert_eq!(again.text(), text);
    }

    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200);
    let m = metrics.text();
    assert!(m.contains("ftl_builds_total{outcome=\"succeeded\"}"), "{m}");
    assert!(m.contains("ftl_queue_depth 0"), "{m}");
    assert!(m.contains("ftl_build_duration_seconds_count"), "{m}");

    // Cancelling an ended build is a conflict; an unknown id is 404.
    let list = server.get("/v1/builds").json();
    let id = list["builds"][0]["id"].as_str().unwrap();
    let r = request(
        &server.addr,
        "POST",
        &format!("/v1/builds/{id}:cancel"),
        &[("Authorization", &server.auth())],
        b"",
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(server.get("/v1/builds/b0000000000000000000").status, 404);
}

#[test]
fn ten_builds_at_once_with_two_workers_all_finish_and_share_the_cache() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &["--workers", "2", "--queue", "8"]);
    let archive = tar_gz(&flask());
    let options = flask_options("serve-ten/flask:v1", false);

    // Ten at once, from ten threads.
    let results: Vec<Resp> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|_| s.spawn(|| server.submit(&archive, &options)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ids: Vec<String> = results
        .iter()
        .map(|r| {
            assert_eq!(r.status, 202, "{}", r.text());
            r.json()["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 10);

    // Two running and eight waiting fill it: the next is refused.
    let full = server.submit(&archive, &options);
    assert_eq!(full.status, 429, "{}", full.text());
    assert_eq!(full.header("retry-after"), Some("5"));
    assert_eq!(full.json()["error"], "queue-full");
    let m = server.get("/metrics").text();
    assert!(
        m.contains("ftl_builds_rejected_total{reason=\"queue-full\"} 1"),
        "{m}"
    );

    let mut done = Vec::new();
    for id in &ids {
        let v = server.wait(id, Duration::from_secs(900));
        assert_eq!(v["state"], "succeeded", "{v:#}\n{}", server.log());
        done.push(v);
    }
    // Same app, same image: the later builds build nothing, the cache
    // (shared by the workers) has every layer.
    let digests: BTreeSet<&str> = done.iter().map(|v| v["digest"].as_str().unwrap()).collect();
    assert_eq!(digests.len(), 1, "one app, one digest");
    let mut by_start: Vec<&Value> = done.iter().collect();
    by_start.sort_by_key(|v| v["started_ms"].as_i64());
    let no_work = by_start
        .iter()
        .filter(|v| v["report"]["layers_built"] == 0)
        .count();
    assert!(
        no_work >= 8,
        "at most the first two (concurrent) builds build: {no_work} of 10 built nothing"
    );
    let last = by_start.last().unwrap();
    assert_eq!(last["report"]["layers_built"], 0);
    for l in last["report"]["layers"].as_array().unwrap() {
        assert_ne!(l["source"], "built", "{l}");
    }
    let m = server.get("/metrics").text();
    assert!(
        m.contains("ftl_builds_total{outcome=\"succeeded\"} 10"),
        "{m}"
    );
    let ratio: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("ftl_cache_hit_ratio "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(ratio > 0.7, "{m}");
    // And now there is room again.
    assert_eq!(server.submit(&archive, &options).status, 202);
}

#[test]
fn a_killed_server_loses_no_build() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(tmp.path(), &["--workers", "1"]);
    let archive = tar_gz(&flask());
    // A repository of its own: the first build is cold, so it is still
    // running when the server dies.
    let ids: Vec<String> = (0..3)
        .map(|i| {
            server.submit_ok(
                &archive,
                &flask_options(&format!("serve-crash/flask:v{i}"), false),
            )
        })
        .collect();
    let start = Instant::now();
    loop {
        let v = server.get(&format!("/v1/builds/{}", ids[0])).json();
        if v["state"] == "running" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{v:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let before: Vec<String> = ids
        .iter()
        .map(|id| {
            server.get(&format!("/v1/builds/{id}")).json()["state"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(before, ["running", "queued", "queued"]);
    server.kill(); // SIGKILL

    let server = Server::start(tmp.path(), &["--workers", "1"]);
    for id in &ids {
        let r = server.get(&format!("/v1/builds/{id}"));
        assert_eq!(r.status, 200, "build {id} answers after the restart");
        // Back in the queue (the worker may have taken the first already).
        let state = r.json()["state"].as_str().unwrap().to_string();
        assert!(
            ["queued", "running"].contains(&state.as_str()),
            "{}",
            r.text()
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let v = server.wait(id, Duration::from_secs(900));
        assert_eq!(v["state"], "succeeded", "{v:#}\n{}", server.log());
        assert!(
            v["note"]
                .as_str()
                .unwrap()
                .contains("re-queued after a server restart"),
            "{v:#}"
        );
        let want_attempts = if i == 0 { 2 } else { 1 };
        assert_eq!(v["attempts"], want_attempts, "{v:#}");
        if i == 0 {
            assert!(v["note"].as_str().unwrap().contains("interrupted"), "{v:#}");
        }
    }
    // Its log tells the story across both processes.
    let log = server.get(&format!("/v1/builds/{}/log", ids[0])).text();
    assert!(
        log.contains("running (attempt 1)") && log.contains("running (attempt 2)"),
        "{log}"
    );
}

/// Builds a hostile archive with Python's tarfile, which writes what it is
/// told to.
fn python_tar(script: &str) -> Vec<u8> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import tarfile, io, sys, gzip\nbuf = io.BytesIO()\n{script}\nsys.stdout.buffer.write(buf.getvalue())\n"
        ))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn list_tree(dir: &Path) -> BTreeSet<String> {
    let out = Command::new("find").arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn hostile_uploads_get_400_naming_the_problem_and_write_nothing_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        tmp.path(),
        &[
            "--max-extract",
            "64M",
            "--max-files",
            "1000",
            "--max-upload",
            "8M",
        ],
    );
    let options = flask_options("serve-hostile/app:v1", false);
    let evil = format!("/tmp/ftl-serve-evil-{}", std::process::id());
    let add = |name: &str, data: &str| {
        format!("ti = tarfile.TarInfo({name:?}); d = {data:?}.encode(); ti.size = len(d); t.addfile(ti, io.BytesIO(d))\n")
    };
    let gz = |body: String| format!("t = tarfile.open(fileobj=buf, mode='w:gz')\n{body}t.close()");
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "path traversal",
            python_tar(&gz(add("main.py", "print(1)") + &add("../../escaped.txt", "x"))),
            "archive entry `../../escaped.txt` escapes the upload directory".into(),
        ),
        (
            "absolute path",
            python_tar(&gz(add(&evil, "x"))),
            format!("archive entry `{evil}` is an absolute path"),
        ),
        (
            "symlink escape",
            python_tar(&gz(
                "ti = tarfile.TarInfo('link'); ti.type = tarfile.SYMTYPE; ti.linkname = '../../..'; t.addfile(ti)\n".to_string()
                    + &add("link/escaped.txt", "x"),
            )),
            "archive entry `link` is a symlink pointing out of the upload".into(),
        ),
        (
            "symlink to an absolute path",
            python_tar(&gz(
                "ti = tarfile.TarInfo('etc'); ti.type = tarfile.SYMTYPE; ti.linkname = '/etc'; t.addfile(ti)\n".to_string(),
            )),
            "archive entry `etc` is a symlink to an absolute path".into(),
        ),
        (
            "hardlink out",
            python_tar(&gz(
                "ti = tarfile.TarInfo('passwd'); ti.type = tarfile.LNKTYPE; ti.linkname = '/etc/passwd'; t.addfile(ti)\n".to_string(),
            )),
            "archive entry `passwd` is a hardlink pointing out of the upload".into(),
        ),
        (
            "device file",
            python_tar(&gz(
                "ti = tarfile.TarInfo('null'); ti.type = tarfile.CHRTYPE; ti.devmajor = 1; ti.devminor = 3; t.addfile(ti)\n".to_string(),
            )),
            "archive entry `null` is a device file".into(),
        ),
        (
            "gzip bomb",
            // 256 MiB of zeros in about 256 KiB, streamed through gzip.
            python_tar(
                "g = gzip.GzipFile(fileobj=buf, mode='wb')\nt = tarfile.open(fileobj=g, mode='w|')\nti = tarfile.TarInfo('zeros'); ti.size = 256 << 20\nclass Z:\n    def read(self, n=-1):\n        return bytes(n)\nt.addfile(ti, Z())\nt.close(); g.close()",
            ),
            "the archive expands to more than 67108864 bytes".into(),
        ),
        (
            "too many files",
            python_tar(&gz((0..1100).map(|i| add(&format!("f{i}"), "")).collect())),
            "more than 1000 entries".into(),
        ),
        ("truncated archive", {
            let whole = tar_gz(&flask());
            whole[..whole.len() / 2].to_vec()
        }, "the archive is invalid or truncated".into()),
        ("a non-archive", b"#!/bin/sh\necho this is not an archive\n".to_vec(), "the upload is not an archive".into()),
    ];
    for (what, data, want) in &cases {
        let r = server.submit(data, &options);
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        let msg = r.json()["message"].as_str().unwrap().to_string();
        assert!(
            msg.contains(want.as_str()),
            "{what}: {msg:?} should contain {want:?}"
        );
    }
    // Too big to upload at all.
    let big = vec![0x1fu8; 9 << 20];
    let r = server.submit(&big, &options);
    assert_eq!(r.status, 413, "{}", r.text());
    // Bad options are 400 too, naming the option.
    let r = server.submit(&tar_gz(&flask()), &json!({"image": "", "base": "x"}));
    assert_eq!(
        (r.status, r.json()["message"].as_str().unwrap()),
        (400, "option `image`: is required")
    );
    let r = request(
        &server.addr,
        "POST",
        "/v1/builds",
        &[("Authorization", &server.auth())],
        &tar_gz(&flask()),
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("Ftl-Options"), "{}", r.text());

    // Nothing landed outside the state dir, and no upload was kept.
    assert!(!Path::new(&evil).exists());
    let outside: BTreeSet<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        outside,
        ["serve.log", "state", "tokens"].map(String::from).into()
    );
    let builds: Vec<_> = std::fs::read_dir(server.state.join("builds"))
        .unwrap()
        .collect();
    assert!(
        builds.is_empty(),
        "refused uploads leave no directory: {builds:?}"
    );
    let tree = list_tree(&server.state);
    assert!(!tree.iter().any(|p| p.contains("escaped")), "{tree:?}");
    let m = server.get("/metrics").text();
    assert!(
        m.contains(&format!(
            "ftl_builds_rejected_total{{reason=\"bad-upload\"}} {}",
            cases.len()
        )),
        "{m}"
    );
}

#[test]
fn requests_without_a_valid_token_get_401() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &[]);
    let flask_tgz = tar_gz(&flask());
    let opts = flask_options("serve-auth/app:v1", false).to_string();
    for auth in [
        None,
        Some("Bearer wrong-token"),
        Some("Basic dXNlcjpwYXNz"),
        Some("Bearer "),
    ] {
        let h: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        for (method, path, body) in [
            ("GET", "/v1/builds", &b""[..]),
            ("GET", "/v1/builds/b0000000000000000000", b""),
            ("GET", "/v1/builds/b0000000000000000000/log", b""),
            ("POST", "/v1/builds/b0000000000000000000:cancel", b""),
            ("GET", "/metrics", b""),
        ] {
            let r = request(&server.addr, method, path, &h, body);
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {}", r.text());
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
        let mut h2 = h.clone();
        h2.push(("Ftl-Options", &opts));
        let r = request(&server.addr, "POST", "/v1/builds", &h2, &flask_tgz);
        assert_eq!(r.status, 401, "POST with {auth:?}");
    }
    // Nothing was accepted, and health needs no token.
    assert_eq!(server.get("/v1/builds").json()["builds"], json!([]));
    assert_eq!(
        request(&server.addr, "GET", "/healthz", &[], b"").status,
        200
    );
}

#[test]
fn sigterm_lets_the_running_build_finish_and_keeps_the_queue() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(tmp.path(), &["--workers", "1", "--grace", "600s"]);
    let archive = tar_gz(&flask());
    let first = server.submit_ok(&archive, &flask_options("serve-term/flask:v1", false));
    let second = server.submit_ok(&archive, &flask_options("serve-term/flask:v2", false));
    let start = Instant::now();
    while server.get(&format!("/v1/builds/{first}")).json()["state"] != "running" {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(50));
    }
    server.sigterm();
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", server.log());
    // New connections are refused once it stopped; a restart shows the
    // running build finished and the queued one still queued, then runs it.
    let server = Server::start(tmp.path(), &["--workers", "1"]);
    let v = server.get(&format!("/v1/builds/{first}")).json();
    assert_eq!(v["state"], "succeeded", "{v:#}");
    let v = server.wait(&second, Duration::from_secs(600));
    assert_eq!(v["state"], "succeeded", "{v:#}");
}

#[test]
fn cancel_a_queued_and_a_running_build() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &["--workers", "1"]);
    let archive = tar_gz(&flask());
    let running = server.submit_ok(&archive, &flask_options("serve-cancel/flask:v1", false));
    let queued = server.submit_ok(&archive, &flask_options("serve-cancel/flask:v2", false));
    let cancel = |id: &str| {
        request(
            &server.addr,
            "POST",
            &format!("/v1/builds/{id}:cancel"),
            &[("Authorization", &server.auth())],
            b"",
        )
    };
    // Cancel while a sandboxed step of the running build is in flight.
    let containers = tmp.path().join("state/cache/sandbox-state");
    let steps_running = || -> Vec<String> {
        std::fs::read_dir(&containers)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ftl-step-"))
            .collect()
    };
    // Layers the build has recorded in the cache so far.
    let recorded = || {
        let mut n = 0;
        let mut stack = vec![tmp.path().join("state/cache/keys-v1")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    n += 1;
                }
            }
        }
        n
    };
    // A long step (an install, not a probe): one seen running for 300 ms.
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no long step ran"
        );
        let now = steps_running();
        if !now.is_empty() {
            std::thread::sleep(Duration::from_millis(300));
            if steps_running().iter().any(|s| now.contains(s)) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let recorded_before = recorded();
    assert_eq!(
        server.get(&format!("/v1/builds/{running}")).json()["state"],
        "running"
    );
    assert_eq!(cancel(&queued).status, 202);
    assert_eq!(
        server.get(&format!("/v1/builds/{queued}")).json()["state"],
        "cancelled"
    );
    assert_eq!(cancel(&running).status, 202);
    let v = server.wait(&running, Duration::from_secs(60));
    assert_eq!(v["state"], "cancelled", "{v:#}");
    assert_eq!(v["error"], "cancelled by request");
    let log = server.get(&format!("/v1/builds/{running}/log")).text();
    assert!(log.trim_end().ends_with("cancelled by request"), "{log}");
    // The step was killed, and no other starts.
    let start = Instant::now();
    while !steps_running().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the cancelled build's step still runs: {:?}",
            steps_running()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(steps_running().is_empty(), "{:?}", steps_running());
    assert_eq!(
        recorded(),
        recorded_before,
        "the cancelled step's layers reached the cache"
    );
}

// ---- integrations and the builder image ------------------------------------

fn yaml(path: &str) -> serde_yaml::Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

fn s<'a>(v: &'a serde_yaml::Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is a string in {v:?}"))
}

fn names(v: &serde_yaml::Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("a list: {v:?}"))
        .iter()
        .map(|p| s(p, "name").to_string())
        .collect()
}

#[test]
fn github_action_and_tekton_task_have_what_a_pipeline_needs() {
    let action = yaml("integrations/github-action/action.yml");
    assert!(!s(&action, "name").is_empty());
    assert!(!s(&action, "description").is_empty());
    for input in ["image", "base", "cache-repo"] {
        assert!(
            action["inputs"][input]["description"].is_string(),
            "input {input}"
        );
    }
    assert!(s(&action["outputs"]["digest"], "value").contains("steps.build.outputs.digest"));
    assert_eq!(s(&action["runs"], "using"), "composite");
    let step = action_step(&action, "build");
    assert_eq!(s(step, "if"), "inputs.mode != 'setup'");
    let run = s(step, "run");
    for flag in [
        // image and base are required in build mode (not for setup).
        "needs the image and base inputs",
        "build \"$FTL_PATH\"",
        "--base=",
        "--image=",
        "--cache-repo=",
        "--json",
        "digest=",
        "$GITHUB_OUTPUT",
    ] {
        assert!(run.contains(flag), "the action's script lacks {flag}");
    }

    let task = yaml("integrations/tekton/task.yaml");
    assert_eq!(s(&task, "apiVersion"), "tekton.dev/v1");
    assert_eq!(s(&task, "kind"), "Task");
    assert_eq!(s(&task["metadata"], "name"), "ftl-build");
    let params = names(&task["spec"]["params"]);
    for p in ["IMAGE", "BASE", "CACHE_REPO", "CONTEXT", "FTL_BUILDER"] {
        assert!(params.iter().any(|n| n == p), "param {p} in {params:?}");
    }
    assert_eq!(
        names(&task["spec"]["results"]),
        ["IMAGE_DIGEST", "IMAGE_URL"]
    );
    assert!(names(&task["spec"]["workspaces"]).contains(&"source".to_string()));
    let step = &task["spec"]["steps"][0];
    assert_eq!(s(step, "image"), "$(params.FTL_BUILDER)");
    let script = s(step, "script");
    assert!(script.starts_with("#!/bin/sh"));
    for part in [
        "ftl build . --base=\"$BASE\" --image=\"$IMAGE\"",
        "--json",
        // The digest comes from ftl, not from parsing its report.
        "--digest-file=\"$(results.IMAGE_DIGEST.path)\"",
    ] {
        assert!(script.contains(part), "the task's script lacks {part}");
    }
    // Every $(params.X) it uses is declared.
    let text = std::fs::read_to_string(root().join("integrations/tekton/task.yaml")).unwrap();
    for used in text.split("$(params.").skip(1) {
        let name = used.split(')').next().unwrap();
        assert!(params.iter().any(|p| p == name), "undeclared param {name}");
    }
}

fn action_step<'a>(action: &'a serde_yaml::Value, id: &str) -> &'a serde_yaml::Value {
    action["runs"]["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|st| st["id"] == id)
        .unwrap_or_else(|| panic!("the action has a step {id}"))
}

/// The integrations run the builder image of their own release: the
/// workspace version, written once per file, never a floating tag. A
/// version bump fails here until the integrations follow.
#[test]
fn integrations_pin_the_builder_image_of_their_release() {
    let version = env!("CARGO_PKG_VERSION");
    let image = format!("ghcr.io/ftl-build/ftl:{version}");

    let action = yaml("integrations/github-action/action.yml");
    assert_eq!(s(&action["inputs"]["version"], "default"), version);
    assert_eq!(s(&action["inputs"]["mode"], "default"), "build");
    assert_eq!(s(&action["inputs"]["ftl-builder"], "default"), "");
    let build = s(action_step(&action, "build"), "run");
    assert!(
        build.contains("builder=\"${FTL_BUILDER:-ghcr.io/ftl-build/ftl:${FTL_VERSION#v}}\""),
        "the action's default builder is the image of its version:\n{build}"
    );
    // setup: the release asset `cargo xtask dist` names, checked against
    // the release's SHA256SUMS, then on PATH.
    let setup = action_step(&action, "setup");
    assert_eq!(s(setup, "if"), "inputs.mode == 'setup'");
    let script = s(setup, "run");
    for part in [
        &format!(
            "name=\"{}\"",
            ftl_test_support::dist::binary_asset_name("${version}")
        ),
        "releases/download/v${version}",
        "SHA256SUMS",
        "sha256sum --check --strict",
        "$GITHUB_PATH",
    ] {
        assert!(
            script.contains(part),
            "the setup step lacks {part}:\n{script}"
        );
    }

    let task = yaml("integrations/tekton/task.yaml");
    assert_eq!(
        s(&task["metadata"]["labels"], "app.kubernetes.io/version"),
        version
    );
    let builder = task["spec"]["params"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "FTL_BUILDER")
        .unwrap();
    assert_eq!(s(builder, "default"), image);

    let cb = yaml("integrations/cloudbuild/cloudbuild.yaml");
    assert_eq!(s(&cb["substitutions"], "_FTL_BUILDER"), image);

    for file in [
        "integrations/github-action/action.yml",
        "integrations/tekton/task.yaml",
        "integrations/cloudbuild/cloudbuild.yaml",
    ] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        assert!(!text.contains("ftl:latest"), "{file} names ftl:latest");
    }
}

/// Replaces `${NAME}` with values, as Cloud Build does with substitutions.
fn substitute(arg: &str, values: &[(&str, String)]) -> String {
    let mut out = arg.to_string();
    for (k, v) in values {
        out = out.replace(&format!("${{{k}}}"), v);
    }
    assert!(!out.contains("${"), "unsubstituted: {out}");
    out
}

#[test]
fn cloud_build_step_is_the_command_line_a_test_runs() {
    let rig = rig();
    let _turn = heavy();
    let cb = yaml("integrations/cloudbuild/cloudbuild.yaml");
    let steps = cb["steps"].as_sequence().unwrap();
    let step = steps
        .iter()
        .find(|st| st["id"] == "ftl-build")
        .expect("an ftl-build step");
    assert_eq!(s(step, "name"), "${_FTL_BUILDER}");
    for sub in ["_FTL_BUILDER", "_BASE", "_IMAGE", "_CACHE_REPO"] {
        assert!(cb["substitutions"][sub].is_string(), "substitution {sub}");
    }
    let args: Vec<&str> = step["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[..2], ["build", "."]);
    let values = [
        ("_BASE", rig.base("python")),
        ("_IMAGE", rig.image("serve-cloudbuild/flask:abc123")),
        ("_CACHE_REPO", rig.image("serve-cloudbuild/ftl-cache")),
    ];
    let args: Vec<String> = args.iter().map(|a| substitute(a, &values)).collect();
    // Cloud Build runs the step in /workspace, the checked-out source.
    let workspace = tempfile::tempdir().unwrap();
    ftl_test_support::rig::copy_tree(&flask(), &workspace.path().join("w")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = rig
        .command(cache.path(), &argv)
        .current_dir(workspace.path().join("w"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verify"]["status"], 200);
    let digest = report["digest"].as_str().unwrap();
    assert!(registry_has_manifest("serve-cloudbuild/flask", digest));
}

/// The builder image: the ftl binary, packaged by ftl itself, entrypoint
/// `ftl`. Here the test's (dynamic) binary on a base whose glibc matches the
/// build host (Debian bookworm); `cargo xtask dist` packages the static one
/// on the `builder` base with the same arguments.
#[test]
fn the_builder_image_is_ftl_built_by_ftl() {
    let rig = rig();
    let _turn = heavy();
    let ctx = tempfile::tempdir().unwrap();
    let bin = ctx.path().join("ftl");
    let st = Command::new("strip")
        .args(["--strip-debug", "-o"])
        .arg(&bin)
        .arg(env!("CARGO_BIN_EXE_ftl"))
        .status()
        .expect("strip runs");
    assert!(st.success());
    let cache = tempfile::tempdir().unwrap();
    let image = rig.image("ftl/ftl:test");
    // The command line `cargo xtask dist` runs (there with the static
    // binary on the builder base, written to an OCI layout).
    let args = ftl_test_support::dist::builder_image_args(
        ctx.path(),
        &rig.base("python"),
        env!("CARGO_PKG_VERSION"),
        &["--image", &image],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = rig.ftl(cache.path(), &args);
    let report = run.report();
    assert_eq!(report["verify"]["mode"], "command");
    assert_eq!(report["verify"]["exit_code"], 0);
    assert!(registry_has_manifest(
        "ftl/ftl",
        report["digest"].as_str().unwrap()
    ));
    let inspect = rig.ftl(cache.path(), &["inspect", &image, "--json"]);
    assert_eq!(inspect.status, 0, "{}", inspect.stderr);
    assert!(inspect.stdout.contains("\"ftl\""), "{}", inspect.stdout);
    let v: Value = serde_json::from_str(&inspect.stdout).unwrap();
    let text = v.to_string();
    assert!(
        text.contains("[\"ftl\"]"),
        "entrypoint is [\"ftl\"]: {text}"
    );
}

/// The server's registry credentials and environment stay with the server:
/// what runs in the sandbox (install steps, verification) sees neither.
#[test]
fn the_sandbox_sees_no_server_credentials() {
    let rig = rig();
    let tmp = tempfile::tempdir().unwrap();
    let docker = tmp.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    let config = docker.join("config.json");
    std::fs::write(
        &config,
        r#"{"auths":{"registry.invalid":{"auth":"dXNlcjpzM2NyM3QtcGFzc3dvcmQ="}}}"#,
    )
    .unwrap();
    let server = Server::start_with(
        tmp.path(),
        &[],
        &[
            ("DOCKER_CONFIG", docker.to_str().unwrap()),
            ("FTL_SERVER_SECRET", "s3cr3t-in-env"),
        ],
    );
    let check = format!(
        "test ! -e {} && test -z \"${{FTL_SERVER_SECRET:-}}\" && test -z \"${{DOCKER_CONFIG:-}}\"",
        config.display()
    );
    let id = server.submit_ok(
        &tar_gz(&root().join("testdata/python/nodeps")),
        &json!({
            "image": rig.image("serve-creds/nodeps:v1"),
            "base": rig.base("python"),
            "verify": {"command": ["/bin/sh", "-c", check], "timeout_secs": 60},
        }),
    );
    let v = server.wait(&id, Duration::from_secs(600));
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["report"]["verify"]["exit_code"], 0, "{v:#}");
    let log = server.get(&format!("/v1/builds/{id}/log")).text();
    for text in [v.to_string(), log] {
        assert!(!text.contains("s3cr3t"), "{text}");
    }
}

/// The other upload form: `multipart/form-data` with `options` and
/// `source` parts, here a zip.
#[test]
fn a_multipart_zip_upload_builds() {
    let rig = rig();
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &[]);
    let zip = tmp.path().join("app.zip");
    let st = Command::new("python3")
        .args(["-m", "zipfile", "-c"])
        .arg(&zip)
        .args(["main.py", "Procfile"])
        .current_dir(root().join("testdata/python/nodeps"))
        .status()
        .unwrap();
    assert!(st.success());
    let options = json!({"image": rig.image("serve-zip/nodeps:v1"), "base": rig.base("python"), "verify": true});
    let boundary = "ftl-test-boundary-7d3f";
    let mut body = Vec::new();
    body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"options\"\r\nContent-Type: application/json\r\n\r\n{options}\r\n").as_bytes());
    body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"source\"; filename=\"app.zip\"\r\nContent-Type: application/zip\r\n\r\n").as_bytes());
    body.extend(std::fs::read(&zip).unwrap());
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = request(
        &server.addr,
        "POST",
        "/v1/builds",
        &[("Authorization", &server.auth()), ("Content-Type", &ct)],
        &body,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let v = server.wait(&id, Duration::from_secs(600));
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["report"]["verify"]["status"], 200);
    let log = server.get(&format!("/v1/builds/{id}/log")).text();
    assert!(log.contains("from a Zip upload"), "{log}");
}

#[test]
fn sigterm_cancels_what_outlives_the_grace_period() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(tmp.path(), &["--workers", "1", "--grace", "1s"]);
    // A cold build of its own repository: it outlives one second.
    let id = server.submit_ok(
        &tar_gz(&flask()),
        &flask_options("serve-grace/flask:v1", false),
    );
    let log = stream_log(server.addr.clone(), server.token.clone(), id.clone());
    let start = Instant::now();
    while server.get(&format!("/v1/builds/{id}")).json()["state"] != "running" {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopping = Instant::now();
    server.sigterm();
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "{:?}",
        stopping.elapsed()
    );
    let streamed: String = log.join().unwrap().into_iter().map(|c| c.1).collect();
    assert!(streamed.contains("grace period"), "{streamed}");

    let server = Server::start(tmp.path(), &["--workers", "1"]);
    let v = server.get(&format!("/v1/builds/{id}")).json();
    assert_eq!(v["state"], "cancelled", "{v:#}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("did not end within the 1s grace period"),
        "{v:#}"
    );
}

// ---- issue 10: hostile uploads -------------------------------------------

/// Options naming repositories on a closed loopback port: for tests whose
/// requests never get as far as a build.
fn placeholder_options(repo: &str) -> Value {
    json!({"image": format!("127.0.0.1:9/{repo}:v1"), "base": "127.0.0.1:9/base/python"})
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Every text the server left anywhere: its log, the state directory's
/// files (logs, database).
fn everything_the_server_wrote(server: &Server) -> String {
    let mut all = server.log();
    let mut stack = vec![server.state.clone()];
    while let Some(d) = stack.pop() {
        for p in files_in(&d) {
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else if p.is_file() && !ftl_test_support::rig::is_volume_image(&p) {
                all.push_str(&String::from_utf8_lossy(
                    &std::fs::read(&p).unwrap_or_default(),
                ));
            }
        }
    }
    all
}

#[test]
fn an_upload_link_chain_out_of_the_tree_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &[]);
    // The uploaded tree lands at TMP/state/builds/ID/src: four levels
    // above it is TMP, where a "host file" waits.
    let secret = format!("HOST SECRET {}", std::process::id());
    std::fs::write(tmp.path().join("host-file"), &secret).unwrap();
    // Each link stays inside by its text (`a/b/c/d/s/../../../..` is `a`);
    // resolved as the kernel does, `s` is the root and the second climbs
    // out of it.
    let links = |archive: &str| {
        format!(
            "{archive}\
             link('a/b/c/d/s', '../../../..')\n\
             link('requirements.txt', 'a/b/c/d/s/../../../../host-file')\n\
             add('main.py', b'print(1)\\n')\n"
        )
    };
    let tgz = python_tar(&(links(
        "t = tarfile.open(fileobj=buf, mode='w:gz')\n\
         def link(name, target):\n    ti = tarfile.TarInfo(name); ti.type = tarfile.SYMTYPE; ti.linkname = target; t.addfile(ti)\n\
         def add(name, data):\n    ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))\n\
         ti = tarfile.TarInfo('a/b/c/d'); ti.type = tarfile.DIRTYPE; t.addfile(ti)\n",
    ) + "t.close()\n"));
    let zip = python_tar(&(links(
        "import zipfile\nz = zipfile.ZipFile(buf, 'w')\n\
         def link(name, target):\n    zi = zipfile.ZipInfo(name); zi.create_system = 3; zi.external_attr = 0o120777 << 16; z.writestr(zi, target)\n\
         def add(name, data):\n    z.writestr(name, data)\n\
         z.writestr('a/b/c/d/', '')\n",
    ) + "z.close()\n"));
    for (what, archive) in [("tar.gz", tgz), ("zip", zip)] {
        let r = server.submit(&archive, &placeholder_options("serve-chain/app"));
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert_eq!(r.json()["error"], "bad-entry", "{what}");
        let msg = r.json()["message"].as_str().unwrap().to_string();
        assert_eq!(
            msg,
            "archive entry `requirements.txt` is a symlink pointing out of the upload \
             (a/b/c/d/s/../../../../host-file through the link `a/b/c/d/s` already in it)",
            "{what}"
        );
    }
    // No build was recorded, no tree kept, and the host file's content is
    // nowhere the server wrote.
    assert_eq!(server.get("/v1/builds").json()["builds"], json!([]));
    assert!(files_in(&server.state.join("builds")).is_empty());
    assert!(!everything_the_server_wrote(&server).contains(&secret));
}

/// The chain again, as a source directory on disk (which `ftl build`
/// takes as it is): the plugin reads `requirements.txt` beneath the root,
/// so the build fails naming it, and the host file's content reaches no
/// output.
#[test]
fn a_source_link_chain_cannot_leak_a_host_file_into_a_build() {
    let rig = rig();
    let tmp = tempfile::tempdir().unwrap();
    let secret = format!("HOST-SECRET-{}", std::process::id());
    std::fs::write(tmp.path().join("host-file"), format!("{secret}==1.0\n")).unwrap();
    let app = tmp.path().join("app");
    std::fs::create_dir_all(app.join("a/b")).unwrap();
    std::fs::write(app.join("main.py"), "print(1)\n").unwrap();
    std::os::unix::fs::symlink("../..", app.join("a/b/s")).unwrap();
    std::os::unix::fs::symlink("a/b/s/../host-file", app.join("requirements.txt")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let run = rig.build(
        cache.path(),
        &app,
        &rig.base("python"),
        &rig.image("serve-chain/cli:v1"),
        &["--language", "python"],
    );
    assert_ne!(run.status, 0, "{}", run.stdout);
    assert!(
        run.stderr.contains("`requirements.txt`") && run.stderr.contains("resolves outside"),
        "{}",
        run.stderr
    );
    for text in [&run.stdout, &run.stderr] {
        assert!(!text.contains(&secret), "{text}");
    }
}

#[test]
fn a_too_long_entry_name_is_a_400() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &[]);
    let long = "n".repeat(300);
    let deep = vec!["d".repeat(250); 20].join("/") + "/f";
    let add = |name: &str| {
        format!(
            "t = tarfile.open(fileobj=buf, mode='w:gz', format=tarfile.GNU_FORMAT)\nti = tarfile.TarInfo({name:?}); ti.size = 1; t.addfile(ti, io.BytesIO(b'x'))\nt.close()"
        )
    };
    let state = server.state.display().to_string();
    for (name, reason) in [
        (&long, "has a path component longer than 255 bytes"),
        (&deep, "has a path longer than 4096 bytes"),
    ] {
        let r = server.submit(
            &python_tar(&add(name)),
            &placeholder_options("serve-long/app"),
        );
        assert_eq!(r.status, 400, "{}", r.text());
        let msg = r.json()["message"].as_str().unwrap().to_string();
        // Named by its first 200 characters.
        assert_eq!(msg, format!("archive entry `{}…` {reason}", &name[..200]));
        assert!(!r.text().contains(&state), "{}", r.text());
        assert!(!r.text().contains("/builds/"), "{}", r.text());
    }
    assert!(files_in(&server.state.join("builds")).is_empty());
}

// ---- issue 10: hostile clients --------------------------------------------

/// Sends a request's head with `Content-Length: length` and no body yet.
fn send_head(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    length: u64,
) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {length}\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// Reads the response on `s` (sent with `Connection: close`).
fn read_response(s: TcpStream) -> Resp {
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let mut body = Vec::new();
    let _ = r.read_to_end(&mut body);
    Resp {
        status,
        headers,
        body,
    }
}

/// A value of the server's Prometheus text.
fn metric(server: &Server, name: &str) -> f64 {
    let m = server.get("/metrics").text();
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{m}"))
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after
/// `timeout`.
fn eventually(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "{what} (waited {timeout:?})");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_full_queue_answers_429_before_reading_the_body() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &["--workers", "1", "--queue", "0"]);
    let opts = placeholder_options("serve-full/app").to_string();
    let auth = server.auth();
    let raw = [
        ("Authorization", auth.as_str()),
        ("Ftl-Options", opts.as_str()),
    ];
    // One upload in progress fills the only place.
    let mut first = send_head(&server.addr, "POST", "/v1/builds", &raw, 1 << 20);
    first.write_all(&[0x1f, 0x8b, 0, 0]).unwrap();
    eventually(
        Duration::from_secs(60),
        "the first upload holds its place",
        || metric(&server, "ftl_uploads_receiving") == 1.0,
    );
    // The next requests send no body at all: only an answer that does not
    // wait for it arrives.
    let boundary = "ftl-test-boundary-429";
    let ct = format!("multipart/form-data; boundary={boundary}");
    let multipart = [
        ("Authorization", auth.as_str()),
        ("Content-Type", ct.as_str()),
    ];
    for headers in [&raw[..], &multipart[..]] {
        let s = send_head(&server.addr, "POST", "/v1/builds", headers, 100 << 20);
        let r = read_response(s);
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.header("retry-after"), Some("5"));
        assert_eq!(r.json()["error"], "queue-full");
    }
    assert_eq!(
        metric(&server, "ftl_builds_rejected_total{reason=\"queue-full\"}"),
        2.0
    );
    // The first gives up: its place and its file are given back.
    drop(first);
    eventually(Duration::from_secs(60), "the place is given back", || {
        metric(&server, "ftl_uploads_receiving") == 0.0
    });
    eventually(
        Duration::from_secs(60),
        "the partial upload is removed",
        || files_in(&server.state.join("uploads")).is_empty(),
    );
    let r = server.submit(
        b"not an archive at all",
        &placeholder_options("serve-full/app"),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "not-an-archive");
}

/// Sends `head`, then `trickle` one byte about every second, reading what
/// the server answers, until it closes the connection. Returns the answer,
/// how long the connection lasted and how many bytes of `trickle` went out.
fn trickle(
    addr: &str,
    head: &[u8],
    trickle: &[u8],
    give_up: Duration,
) -> (String, Duration, usize) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let start = Instant::now();
    let mut writable = s.write_all(head).is_ok();
    let (mut sent, mut answer) = (0, Vec::new());
    loop {
        assert!(
            start.elapsed() < give_up,
            "still connected after {give_up:?} and {sent} bytes; answer so far: {:?}",
            String::from_utf8_lossy(&answer)
        );
        if writable && sent < trickle.len() {
            match s.write_all(&trickle[sent..sent + 1]) {
                Ok(()) => sent += 1,
                Err(_) => writable = false,
            }
        }
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    (
        String::from_utf8_lossy(&answer).into_owned(),
        start.elapsed(),
        sent,
    )
}

#[test]
fn a_slow_client_is_timed_out() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        tmp.path(),
        &[
            "--header-timeout",
            "2s",
            "--body-timeout",
            "5s",
            "--idle-timeout",
            "3s",
        ],
    );
    let give_up = Duration::from_secs(60);
    // Headers, one byte a second: cut off once the header timeout passes,
    // long before they are complete.
    let head = format!(
        "GET /v1/builds HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nX-Padding: {}\r\n\r\n",
        server.addr,
        server.auth(),
        "p".repeat(200)
    );
    let (answer, lasted, sent) = trickle(&server.addr, b"", head.as_bytes(), give_up);
    assert!(sent < 100, "{sent} header bytes went out in {lasted:?}");
    assert!(!answer.contains("200 OK"), "{answer}");

    // A body, one byte a second: answered 408 and closed.
    let opts = placeholder_options("serve-slow/app").to_string();
    let head = |length: usize| {
        format!(
            "POST /v1/builds HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nFtl-Options: {opts}\r\nContent-Length: {length}\r\n\r\n",
            server.addr,
            server.auth(),
        )
    };
    let body = vec![0x1fu8; 1000];
    let (answer, lasted, sent) = trickle(&server.addr, head(1000).as_bytes(), &body, give_up);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"error\":\"timeout\""), "{answer}");
    assert!(sent < 100, "{sent} body bytes went out in {lasted:?}");

    // A body that stops: answered 408 once the idle timeout passes.
    let (answer, _, _) = trickle(
        &server.addr,
        (head(1000) + "0123456789").as_bytes(),
        b"",
        give_up,
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("--idle-timeout"), "{answer}");
    assert!(metric(&server, "ftl_builds_rejected_total{reason=\"timeout\"}") >= 2.0);
    assert_eq!(metric(&server, "ftl_uploads_receiving"), 0.0);
    eventually(
        Duration::from_secs(30),
        "timed-out uploads are removed",
        || files_in(&server.state.join("uploads")).is_empty(),
    );
}

#[test]
fn connections_beyond_the_limit_wait_for_one_to_close() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        tmp.path(),
        &["--max-connections", "3", "--header-timeout", "120s"],
    );
    // Three connections that say nothing take every place.
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(&server.addr).unwrap())
        .collect();
    let mut fourth = send(&server.addr, "GET", "/healthz", &[], b"");
    fourth
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 64];
    match fourth.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a fourth connection was served while three were open: {other:?}"),
    }
    // One closes: the fourth is served.
    idle.pop();
    fourth
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let r = read_response(fourth);
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    drop(idle);
}

/// The RSS of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

#[test]
fn stalled_uploads_do_not_grow_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        tmp.path(),
        &[
            "--queue",
            "40",
            "--max-upload",
            "64M",
            "--idle-timeout",
            "10m",
            "--body-timeout",
            "10m",
        ],
    );
    let pid = server.child.id();
    // Warm up the paths a submission takes.
    for _ in 0..3 {
        let r = server.submit(b"not an archive", &placeholder_options("serve-rss/app"));
        assert_eq!(r.status, 400);
    }
    let before = rss(pid);
    let opts = placeholder_options("serve-rss/app").to_string();
    let auth = server.auth();
    let headers = [
        ("Authorization", auth.as_str()),
        ("Ftl-Options", opts.as_str()),
    ];
    const CLIENTS: usize = 30;
    const SENT: usize = 8 << 20;
    let chunk = vec![0x1fu8; SENT];
    let stalled: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut s = send_head(&server.addr, "POST", "/v1/builds", &headers, 60 << 20);
            s.write_all(&chunk).unwrap();
            s
        })
        .collect();
    // Everything sent has reached the server's disk.
    let uploads = server.state.join("uploads");
    let on_disk = || -> u64 {
        files_in(&uploads)
            .iter()
            .filter_map(|p| p.metadata().ok())
            .map(|m| m.len())
            .sum()
    };
    let start = Instant::now();
    while on_disk() < (CLIENTS * SENT) as u64 {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "{} of {} bytes on disk; RSS grew by {} MiB",
            on_disk(),
            CLIENTS * SENT,
            rss(pid).saturating_sub(before) >> 20
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let grown = rss(pid).saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "{CLIENTS} stalled uploads of {} MiB each grew the server by {} MiB",
        SENT >> 20,
        grown >> 20
    );
    assert_eq!(metric(&server, "ftl_uploads_receiving"), CLIENTS as f64);
    drop(stalled);
    eventually(
        Duration::from_secs(60),
        "abandoned uploads are removed",
        || files_in(&uploads).is_empty() && metric(&server, "ftl_uploads_receiving") == 0.0,
    );
}

/// A small app that builds quickly and then verifies for a long time: a
/// build that stays running until it is cancelled or its server dies.
fn long_running_build(rig: &Rig, dir: &Path, repo: &str) -> (Vec<u8>, Value) {
    let app = dir.join("long-app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("hello.txt"), "hello\n").unwrap();
    (
        tar_gz(&app),
        json!({
            "image": rig.image(repo),
            "base": rig.base("python"),
            "language": "generic",
            "verify": {"command": ["sleep", "120"], "timeout_secs": 600},
        }),
    )
}

#[test]
fn a_build_interrupted_too_often_is_failed() {
    let rig = rig();
    let _turn = heavy();
    let tmp = tempfile::tempdir().unwrap();
    let args = ["--workers", "1", "--max-attempts", "2"];
    let mut server = Server::start(tmp.path(), &args);
    let (archive, options) = long_running_build(rig, tmp.path(), "serve-attempts/app:v1");
    let id = server.submit_ok(&archive, &options);
    for attempt in 1..=2 {
        eventually(
            Duration::from_secs(300),
            &format!("attempt {attempt} runs"),
            || {
                let v = server.get(&format!("/v1/builds/{id}")).json();
                v["state"] == "running" && v["attempts"] == attempt
            },
        );
        server.kill(); // SIGKILL, mid-build
        server = Server::start(tmp.path(), &args);
    }
    // Two starts, each ended by the server dying: not a third.
    let v = server.get(&format!("/v1/builds/{id}")).json();
    assert_eq!(v["state"], "failed", "{v:#}");
    assert_eq!(v["attempts"], 2, "{v:#}");
    assert_eq!(
        v["error"], "the server stopped 2 times while this build ran",
        "{v:#}"
    );
    let log = server.get(&format!("/v1/builds/{id}/log")).text();
    assert!(log.contains("running (attempt 2)"), "{log}");
    assert!(
        log.trim_end()
            .ends_with("failed: the server stopped 2 times while this build ran"),
        "{log}"
    );
    assert!(files_in(&server.state.join("builds")).is_empty());
}

// ---- issue 10: tokens with scopes -----------------------------------------

fn team_tokens(host: &str) -> String {
    format!(
        r#"
[[token]]
name = "team-a"
token = "token-of-team-a-0123456789"
image = ["{host}/team-a/"]
base = ["{host}/base/"]

[[token]]
name = "team-c"
token_sha256 = "{c}"
image = ["{host}/team-c/"]
cache_repo = ["{host}/caches/team-c/"]
base = ["{host}/base/"]
"#,
        c = sha256_hex("token-of-team-c-0123456789"),
    )
}

fn sha256_hex(s: &str) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn a_token_cannot_push_outside_its_prefixes() {
    let tmp = tempfile::tempdir().unwrap();
    let host = "127.0.0.1:9";
    let server = Server::start_tokens(
        tmp.path(),
        &[],
        &[],
        &team_tokens(host),
        "token-of-team-a-0123456789",
    );
    let submit_as = |token: &str, options: &Value| {
        let opts = options.to_string();
        request(
            &server.addr,
            "POST",
            "/v1/builds",
            &[
                ("Authorization", &format!("Bearer {token}")),
                ("Ftl-Options", &opts),
            ],
            b"not an archive",
        )
    };
    let a = "token-of-team-a-0123456789";
    let c = "token-of-team-c-0123456789";
    let base = format!("{host}/base/python");
    let forbidden = [
        (
            a,
            json!({"image": format!("{host}/team-aevil/app:v1"), "base": base}),
            format!("option `image`: {host}/team-aevil/app is outside the repositories the token `team-a` may use for `image` ({host}/team-a/)"),
        ),
        (
            a,
            json!({"image": format!("127.0.0.2:9/team-a/app"), "base": base}),
            "option `image`: 127.0.0.2:9/team-a/app is outside".to_string(),
        ),
        (
            a,
            json!({"image": format!("{host}/team-a/app"), "base": base, "cache_repo": format!("{host}/team-b/cache")}),
            format!("option `cache_repo`: {host}/team-b/cache is outside the repositories the token `team-a` may use for `cache_repo` ({host}/team-a/)"),
        ),
        (
            a,
            json!({"image": format!("{host}/team-a/app"), "base": format!("{host}/secret/python")}),
            format!("option `base`: {host}/secret/python is outside"),
        ),
        (
            a,
            json!({"image": format!("{host}/team-a/app"), "base": base, "settings": {"java.builder": format!("{host}/secret/maven:3")}}),
            format!("option `settings.java.builder`: {host}/secret/maven is outside the repositories the token `team-a` may use for `base`"),
        ),
        // The default cache repository, `<image repo>/ftl-cache`, is
        // checked too: team-c caches elsewhere.
        (
            c,
            json!({"image": format!("{host}/team-c/app"), "base": base}),
            format!("option `cache_repo`: {host}/team-c/app/ftl-cache is outside the repositories the token `team-c` may use for `cache_repo` ({host}/caches/team-c/)"),
        ),
    ];
    for (token, options, want) in &forbidden {
        let r = submit_as(token, options);
        assert_eq!(r.status, 403, "{options}: {}", r.text());
        assert_eq!(r.json()["error"], "forbidden");
        let msg = r.json()["message"].as_str().unwrap().to_string();
        assert!(
            msg.starts_with(want.as_str()),
            "{msg:?} should start with {want:?}"
        );
    }
    // Within its prefixes, a submission goes on to its body (which is no
    // archive here).
    for (token, options) in [
        (
            a,
            json!({"image": format!("{host}/team-a/app"), "base": base}),
        ),
        (
            a,
            json!({"image": format!("{host}/team-a/x/y"), "base": base, "cache_repo": format!("{host}/team-a/cache")}),
        ),
        (
            c,
            json!({"image": format!("{host}/team-c/app"), "base": base, "cache_repo": format!("{host}/caches/team-c/app")}),
        ),
        (
            c,
            json!({"image": format!("{host}/team-c/app"), "base": base, "no_registry_cache": true}),
        ),
    ] {
        let r = submit_as(token, &options);
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (400, Some("not-an-archive")),
            "{options}: {}",
            r.text()
        );
    }
    // The header form is refused before its body is read.
    let opts = forbidden[0].1.to_string();
    let s = send_head(
        &server.addr,
        "POST",
        "/v1/builds",
        &[
            ("Authorization", &format!("Bearer {a}")),
            ("Ftl-Options", &opts),
        ],
        100 << 20,
    );
    assert_eq!(read_response(s).status, 403);
    // The multipart form once its options part is read.
    let boundary = "ftl-test-boundary-403";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"options\"\r\n\r\n{opts}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"source\"; filename=\"a.tgz\"\r\n\r\nnot an archive\r\n--{boundary}--\r\n"
    );
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = request(
        &server.addr,
        "POST",
        "/v1/builds",
        &[
            ("Authorization", &format!("Bearer {a}")),
            ("Content-Type", &ct),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .starts_with("option `image`"));
    assert_eq!(
        metric(&server, "ftl_builds_rejected_total{reason=\"forbidden\"}"),
        (forbidden.len() + 2) as f64
    );
    assert_eq!(server.get("/v1/builds").json()["builds"], json!([]));
}

/// Two tokens that may use any repository.
const ALICE_AND_BOB: &str = r#"
[[token]]
name = "alice"
token = "token-of-alice-0123456789"
image = ["*"]
base = ["*"]

[[token]]
name = "bob"
token = "token-of-bob-0123456789"
image = ["*"]
base = ["*"]
"#;

#[test]
fn a_token_cannot_see_or_cancel_another_tokens_build() {
    let rig = rig();
    let tmp = tempfile::tempdir().unwrap();
    let alice = Server::start_tokens(
        tmp.path(),
        &["--workers", "1"],
        &[],
        ALICE_AND_BOB,
        "token-of-alice-0123456789",
    );
    let bob = "Bearer token-of-bob-0123456789";
    let as_bob = |method: &str, path: &str| {
        request(&alice.addr, method, path, &[("Authorization", bob)], b"")
    };
    let (archive, options) = long_running_build(rig, tmp.path(), "serve-owner/app:v1");
    let id = alice.submit_ok(&archive, &options);

    let mine = alice.get(&format!("/v1/builds/{id}"));
    assert_eq!(mine.status, 200);
    assert_eq!(mine.json()["owner"], "alice");
    assert_eq!(
        alice.get("/v1/builds").json()["builds"][0]["id"],
        id.as_str()
    );
    // To bob it does not exist: the same 404 as an id nobody has.
    let nobody = "b0000000000000000000";
    for (method, path) in [
        ("GET", format!("/v1/builds/{id}")),
        ("GET", format!("/v1/builds/{id}/log")),
        ("POST", format!("/v1/builds/{id}:cancel")),
    ] {
        let r = as_bob(method, &path);
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
        let other = as_bob(method, &path.replace(&id, nobody));
        assert_eq!(
            r.json()["message"].as_str().unwrap().replace(&id, nobody),
            other.json()["message"].as_str().unwrap()
        );
    }
    assert_eq!(as_bob("GET", "/v1/builds").json()["builds"], json!([]));
    assert_eq!(as_bob("GET", "/metrics").status, 200);
    // Bob's cancel did nothing; alice's does.
    assert!(["queued", "running"].contains(
        &alice.get(&format!("/v1/builds/{id}")).json()["state"]
            .as_str()
            .unwrap()
    ));
    let r = request(
        &alice.addr,
        "POST",
        &format!("/v1/builds/{id}:cancel"),
        &[("Authorization", &alice.auth())],
        b"",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let v = alice.wait(&id, Duration::from_secs(120));
    assert_eq!(v["state"], "cancelled", "{v:#}");
}

#[test]
fn an_old_token_file_is_refused_with_a_pointer_to_the_new_format() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("tokens"),
        "# one per line\nan-old-token-0123456789\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ftl"))
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(tmp.path().join("state"))
        .arg("--token-file")
        .arg(tmp.path().join("tokens"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is in the old format"), "{err}");
    assert!(err.contains("[[token]]"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
}

/// Issue 10: the package caches were one read-write directory for every
/// build. Under `ftl serve` each token's builds get caches of their own:
/// the same app built by two tokens fills two npm caches, and no build
/// uses the machine's default one.
#[test]
fn each_tokens_builds_get_their_own_package_caches() {
    let Some(node) = node_sample() else {
        eprintln!("not run: no node sample");
        return;
    };
    let _heavy = heavy();
    let rig = rig();
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_tokens(
        tmp.path(),
        &["--workers", "1"],
        &[],
        ALICE_AND_BOB,
        "token-of-alice-0123456789",
    );
    let archive = tar_gz(&node);
    for (who, token) in [
        ("alice", "token-of-alice-0123456789"),
        ("bob", "token-of-bob-0123456789"),
    ] {
        let opts = json!({
            "image": rig.image(&format!("serve-scopes/{who}:v1")),
            "base": rig.base("node"),
            "no_cache": true,
        })
        .to_string();
        let r = request(
            &server.addr,
            "POST",
            "/v1/builds",
            &[
                ("Authorization", &format!("Bearer {token}")),
                ("Ftl-Options", &opts),
                ("Content-Type", "application/gzip"),
            ],
            &archive,
        );
        assert_eq!(r.status, 202, "{}", r.text());
        let id = r.json()["id"].as_str().unwrap().to_string();
        let start = Instant::now();
        loop {
            let v = request(
                &server.addr,
                "GET",
                &format!("/v1/builds/{id}"),
                &[("Authorization", &format!("Bearer {token}"))],
                b"",
            )
            .json();
            match v["state"].as_str().unwrap() {
                "succeeded" => break,
                "failed" | "cancelled" => panic!("{who}'s build: {v:#}"),
                _ => {}
            }
            assert!(start.elapsed() < Duration::from_secs(600), "{v:#}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let persistent = server.state.join("cache/persistent");
    let caches: Vec<String> = std::fs::read_dir(&persistent)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("node-package-cache"))
        .collect();
    assert_eq!(caches.len(), 2, "one npm cache per token: {caches:?}");
    assert!(caches.iter().all(|c| c.contains('~')), "{caches:?}");
    for c in &caches {
        let content = persistent.join(c).join("npm/_cacache/content-v2/sha512");
        assert!(
            std::fs::read_dir(&content).is_ok_and(|mut d| d.next().is_some()),
            "{} holds what its build downloaded",
            content.display()
        );
    }
}
