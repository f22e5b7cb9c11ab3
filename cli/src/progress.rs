//! Progress on stderr while a build runs, and the summary at the end.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ftl::engine::{BuildReport, Event, LayerSource, Observer};
use ftl_registry_client::{BlobAction, Digest, PushProgress};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Renders engine events: a phase spinner and a byte bar on a terminal,
/// plain lines otherwise, nothing when quiet. Every live line belongs to
/// one [`MultiProgress`], which prints the log lines above them and takes
/// each away when its phase ends: nothing stale stays on the screen.
pub struct Progress {
    quiet: bool,
    tty: bool,
    multi: MultiProgress,
    spinner: Mutex<Option<ProgressBar>>,
    upload: Arc<Upload>,
}

struct Upload {
    multi: MultiProgress,
    bar: Mutex<Option<ProgressBar>>,
    total: AtomicU64,
    tty: bool,
    quiet: bool,
}

impl Upload {
    /// Takes the byte bar away; the next upload starts a new one.
    fn clear(&self) {
        if let Some(b) = self.bar.lock().expect("not poisoned").take() {
            b.finish_and_clear();
            self.multi.remove(&b);
        }
        self.total.store(0, Ordering::Relaxed);
    }
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        let target = if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress::to(quiet, tty, target)
    }

    fn to(quiet: bool, tty: bool, target: ProgressDrawTarget) -> Self {
        let multi = MultiProgress::with_draw_target(target);
        Progress {
            quiet,
            tty,
            multi: multi.clone(),
            spinner: Mutex::new(None),
            upload: Arc::new(Upload {
                multi,
                bar: Mutex::new(None),
                total: AtomicU64::new(0),
                tty,
                quiet,
            }),
        }
    }

    fn line(&self, s: &str) {
        if self.quiet {
            return;
        }
        if self.tty {
            let _ = self.multi.println(s);
        } else {
            let _ = writeln!(std::io::stderr(), "{s}");
        }
    }

    fn clear_spinner(&self) {
        if let Some(sp) = self.spinner.lock().expect("not poisoned").take() {
            sp.finish_and_clear();
            self.multi.remove(&sp);
        }
    }

    /// Clears any bar still drawn.
    pub fn finish(&self) {
        self.clear_spinner();
        self.upload.clear();
        let _ = self.multi.clear();
    }
}

fn ms(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

impl Observer for Progress {
    fn event(&self, event: &Event) {
        if self.quiet {
            return;
        }
        match event {
            Event::PhaseStarted(name) => {
                if self.tty {
                    self.clear_spinner();
                    let sp = self.multi.add(ProgressBar::new_spinner());
                    sp.set_style(
                        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                            .expect("valid template"),
                    );
                    sp.set_message(name.to_string());
                    sp.enable_steady_tick(Duration::from_millis(100));
                    *self.spinner.lock().expect("not poisoned") = Some(sp);
                }
            }
            Event::PhaseFinished(name, d) => {
                // The phase's lines go with it (the byte bar is push's).
                self.clear_spinner();
                self.upload.clear();
                if d.as_millis() >= 200 {
                    self.line(&format!("  {name} done in {}", ms(*d)));
                }
            }
            Event::Planned { language, layers } => {
                self.line(&format!("  {language}: {layers} layer(s) planned"))
            }
            Event::Layer { name, source } => {
                let what = match source {
                    LayerSource::Built => "built",
                    LayerSource::LocalCache => "cached",
                    LayerSource::RegistryCache => "cached (registry)",
                    LayerSource::Base => "base",
                };
                self.line(&format!("  {what:>17}  {name}"));
            }
            Event::StepStarted(label) => {
                if let Some(sp) = &*self.spinner.lock().expect("not poisoned") {
                    sp.set_message(format!("build: {label}"));
                }
            }
            Event::StepFinished(label, d) => self.line(&format!("  ran {label} in {}", ms(*d))),
            Event::Warning(text) => self.line(&format!("warning: {text}")),
        }
    }

    fn push_progress(&self) -> Arc<dyn PushProgress> {
        self.upload.clone()
    }
}

impl PushProgress for Upload {
    fn blob_started(&self, _digest: &Digest, size: u64) {
        if self.quiet || !self.tty {
            return;
        }
        let total = self.total.fetch_add(size, Ordering::Relaxed) + size;
        let mut bar = self.bar.lock().expect("not poisoned");
        let b = bar.get_or_insert_with(|| {
            let b = self.multi.add(ProgressBar::new(0));
            b.set_style(
                ProgressStyle::with_template(
                    "  uploading {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .expect("valid template"),
            );
            b
        });
        b.set_length(total);
    }
    fn bytes_sent(&self, _digest: &Digest, bytes: u64) {
        if let Some(b) = &*self.bar.lock().expect("not poisoned") {
            b.inc(bytes);
        }
    }
    fn blob_done(&self, digest: &Digest, action: &BlobAction) {
        if self.quiet || self.tty {
            return;
        }
        if let BlobAction::Uploaded { bytes } = action {
            let _ = writeln!(
                std::io::stderr(),
                "  uploaded {} ({bytes} bytes)",
                short(digest.as_ref())
            );
        }
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// `512 B`, `1.5 KiB`, `12.3 MiB`: sizes as the build summary and
/// `ftl cache ls` print them.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// What `--json` says of a failed build besides its message: the kind of
/// error and, for an error in the application's files, where and what to do.
#[derive(Debug, Clone)]
pub struct ErrorDetail {
    pub kind: &'static str,
    pub file: Option<std::path::PathBuf>,
    pub line: Option<usize>,
    pub hint: Option<String>,
}

impl ErrorDetail {
    pub fn of(e: &ftl::engine::EngineError) -> Self {
        let (file, line, hint) = match e {
            ftl::engine::EngineError::Plugin(p) => (p.file.clone(), p.line, p.hint.clone()),
            _ => (None, None, None),
        };
        ErrorDetail {
            kind: e.kind(),
            file,
            line,
            hint,
        }
    }

    /// An error of `kind` with nothing more to say.
    pub fn kind(kind: &'static str) -> Self {
        ErrorDetail {
            kind,
            file: None,
            line: None,
            hint: None,
        }
    }
}

/// `{"schema": 1, "error": {"kind", "message", "file", "line", "hint"}}` on
/// stdout. `message` is the line printed on stderr; `kind` is `usage` for
/// what failed before the build started (a flag's value).
#[allow(clippy::print_stdout)]
pub fn print_json_error(e: &anyhow::Error, detail: Option<&ErrorDetail>) -> anyhow::Result<()> {
    let detail = detail
        .cloned()
        .unwrap_or_else(|| ErrorDetail::kind("usage"));
    let v = serde_json::json!({
        "schema": ftl::engine::REPORT_SCHEMA,
        "error": {
            "kind": detail.kind,
            "message": crate::render_error(e).trim_end(),
            "file": detail.file.map(|f| f.to_string_lossy().into_owned()),
            "line": detail.line,
            "hint": detail.hint,
        }
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

#[allow(clippy::print_stdout)]
pub fn print_json(report: &BuildReport) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(report)?);
    Ok(())
}

/// The human summary: a table of layers on stderr, then the image
/// reference with its digest as the last line on stdout.
#[allow(clippy::print_stdout)]
pub fn print_summary(report: &BuildReport, quiet: bool) {
    if !quiet {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "\n  {:<40} {:>10}  {:<18} PUSH",
            "LAYER", "SIZE", "CACHE"
        );
        for l in report
            .layers
            .iter()
            .filter(|l| l.source != LayerSource::Base)
        {
            let _ = writeln!(
                err,
                "  {:<40} {:>10}  {:<18} {}",
                truncate(&l.name, 40),
                human_bytes(l.size),
                l.source.as_str(),
                l.push.as_deref().unwrap_or("-")
            );
        }
        let base = report
            .layers
            .iter()
            .filter(|l| l.source == LayerSource::Base)
            .count();
        let _ = writeln!(
            err,
            "\n  {} base layer(s), {} built, {} uploaded, {} registry request(s)",
            base,
            report.layers_built,
            human_bytes(report.bytes_uploaded),
            report.registry_requests
        );
        let timings: Vec<String> = report
            .timings
            .iter()
            .map(|t| format!("{} {}ms", t.phase, t.ms))
            .collect();
        let _ = writeln!(err, "  {}", timings.join(", "));
        if let Some(v) = &report.verify {
            match v.status {
                Some(s) => {
                    let stopped = match v.stopped {
                        Some(ftl::engine::Stopped::Sigterm) => format!(
                            "; exited on SIGTERM in {}ms (status {})",
                            v.stop_millis.unwrap_or(0),
                            v.stop_status.unwrap_or(0)
                        ),
                        Some(ftl::engine::Stopped::Killed) => {
                            "; killed: it did not exit on SIGTERM".to_string()
                        }
                        Some(ftl::engine::Stopped::Exited) => {
                            format!("; it had exited (status {})", v.stop_status.unwrap_or(0))
                        }
                        None => String::new(),
                    };
                    let _ = writeln!(err, "  verified: HTTP {s} in {}ms{stopped}", v.millis);
                }
                None => {
                    let _ = writeln!(err, "  verified: command exited 0 in {}ms", v.millis);
                }
            }
        }
    }
    println!("{}", report.image);
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::InMemoryTerm;

    fn digest(n: u8) -> Digest {
        std::str::FromStr::from_str(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
    }

    /// The screen as a terminal shows it: blank lines dropped.
    fn screen(term: &InMemoryTerm) -> Vec<String> {
        term.contents()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.trim_end().to_string())
            .collect()
    }

    /// The screen once `ready` holds for it (bars are drawn at most 20
    /// times a second, and by a ticking thread).
    fn drawn(term: &InMemoryTerm, ready: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = screen(term);
            if ready(&s) || std::time::Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A push with an upload, then the next phase: the push's spinner and
    /// byte bar are gone once it ends (a stale `push 0s` frame stayed
    /// when they drew to the terminal on their own), and the log lines
    /// stay above the live ones.
    #[test]
    fn a_finished_phase_leaves_no_live_line_behind() {
        let term = InMemoryTerm::new(20, 100);
        let p = Progress::to(
            false,
            true,
            ProgressDrawTarget::term_like(Box::new(term.clone())),
        );
        p.event(&Event::PhaseStarted("push"));
        let up = p.push_progress();
        up.blob_started(&digest(1), 4096);
        up.bytes_sent(&digest(1), 4096);
        up.blob_started(&digest(2), 1024);
        let during = drawn(&term, |s| {
            s.iter().any(|l| l.contains("uploading")) && s.iter().any(|l| l.contains("push"))
        });
        assert!(
            during.iter().any(|l| l.contains("uploading")),
            "{during:#?}"
        );
        assert!(during.iter().any(|l| l.contains("push")), "{during:#?}");
        p.event(&Event::PhaseFinished("push", Duration::from_millis(1500)));
        p.event(&Event::PhaseStarted("verify"));
        let after = drawn(&term, |s| s.iter().any(|l| l.contains("verify")));
        assert_eq!(
            after.iter().filter(|l| l.contains("push")).count(),
            1,
            "only the log line of push: {after:#?}"
        );
        assert!(after[0].contains("push done in 1.5s"), "{after:#?}");
        assert!(!after.iter().any(|l| l.contains("uploading")), "{after:#?}");
        assert!(after.iter().any(|l| l.contains("verify")), "{after:#?}");
        p.event(&Event::PhaseFinished("verify", Duration::from_millis(10)));
        p.finish();
        assert_eq!(screen(&term), ["  push done in 1.5s"]);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12 << 20), "12.0 MiB");
    }
}
