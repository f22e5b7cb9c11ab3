//! Progress on stderr while a build runs, and the summary at the end.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ftl::engine::{BuildReport, Event, LayerSource, Observer};
use ftl_registry_client::{BlobAction, Digest, PushProgress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Renders engine events: spinners and a byte bar on a terminal, plain
/// lines otherwise, nothing when quiet.
pub struct Progress {
    quiet: bool,
    tty: bool,
    spinner: Mutex<Option<ProgressBar>>,
    upload: Arc<Upload>,
}

struct Upload {
    bar: Mutex<Option<ProgressBar>>,
    total: AtomicU64,
    tty: bool,
    quiet: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        Progress {
            quiet,
            tty,
            spinner: Mutex::new(None),
            upload: Arc::new(Upload {
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
        match &*self.spinner.lock().expect("not poisoned") {
            Some(sp) => sp.println(s),
            None => {
                let _ = writeln!(std::io::stderr(), "{s}");
            }
        }
    }

    /// Clears any bar still drawn.
    pub fn finish(&self) {
        if let Some(sp) = self.spinner.lock().expect("not poisoned").take() {
            sp.finish_and_clear();
        }
        if let Some(b) = self.upload.bar.lock().expect("not poisoned").take() {
            b.finish_and_clear();
        }
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
                    let sp = ProgressBar::new_spinner();
                    sp.set_draw_target(ProgressDrawTarget::stderr());
                    sp.set_style(
                        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                            .expect("valid template"),
                    );
                    sp.set_message(name.to_string());
                    sp.enable_steady_tick(Duration::from_millis(100));
                    if let Some(old) = self.spinner.lock().expect("not poisoned").replace(sp) {
                        old.finish_and_clear();
                    }
                }
            }
            Event::PhaseFinished(name, d) => {
                if let Some(sp) = self.spinner.lock().expect("not poisoned").take() {
                    sp.finish_and_clear();
                }
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
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
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

fn human_bytes(n: u64) -> String {
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
