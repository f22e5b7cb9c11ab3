//! Build logs: appended to `<state-dir>/logs/<id>.log` and, while a build is
//! live, fanned out to readers as lines arrive.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ftl::engine::{Event, Observer};
use tokio::sync::watch;

/// The log of one build that has not ended yet.
pub struct LiveLog {
    inner: Mutex<Inner>,
    started: Instant,
    /// (lines so far, ended)
    tx: watch::Sender<(usize, bool)>,
}

struct Inner {
    lines: Vec<String>,
    file: Option<File>,
    ended: bool,
}

impl LiveLog {
    pub fn open(path: PathBuf) -> Arc<LiveLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(
                |e| tracing::warn!(path = %path.display(), error = %e, "cannot open the build log"),
            )
            .ok();
        let (tx, _) = watch::channel((0, false));
        Arc::new(LiveLog {
            inner: Mutex::new(Inner {
                lines: Vec::new(),
                file,
                ended: false,
            }),
            started: Instant::now(),
            tx,
        })
    }

    /// Appends one line (timestamped relative to the log's start).
    pub fn line(&self, text: impl AsRef<str>) {
        let t = self.started.elapsed().as_secs_f64();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.ended {
            return;
        }
        for l in text.as_ref().lines() {
            let l = format!("[{t:8.3}s] {l}\n");
            if let Some(f) = g.file.as_mut() {
                let _ = f.write_all(l.as_bytes());
            }
            g.lines.push(l);
        }
        let n = g.lines.len();
        drop(g);
        self.tx.send_replace((n, false));
    }

    /// The last line: nothing is appended after it.
    pub fn end(&self, text: impl AsRef<str>) {
        self.line(text);
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.ended = true;
        if let Some(f) = g.file.as_mut() {
            let _ = f.sync_data();
        }
        g.file = None;
        let n = g.lines.len();
        drop(g);
        self.tx.send_replace((n, true));
    }

    /// Lines from `from` on, and whether the log has ended.
    pub fn since(&self, from: usize) -> (Vec<String>, bool) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (g.lines.get(from..).unwrap_or_default().to_vec(), g.ended)
    }

    pub fn subscribe(&self) -> watch::Receiver<(usize, bool)> {
        self.tx.subscribe()
    }
}

/// Turns engine events into log lines.
pub struct LogObserver(pub Arc<LiveLog>);

fn ms(d: &Duration) -> u128 {
    d.as_millis()
}

impl Observer for LogObserver {
    fn event(&self, event: &Event) {
        let line = match event {
            Event::PhaseStarted(p) => format!("{p}: started"),
            Event::PhaseFinished(p, d) => format!("{p}: done in {} ms", ms(d)),
            Event::Planned { language, layers } => {
                format!("plan: {language}, {layers} layer(s)")
            }
            Event::Layer { name, source } => format!("layer {name}: {}", source.as_str()),
            Event::StepStarted(s) => format!("step {s}: running"),
            Event::StepFinished(s, d) => format!("step {s}: done in {} ms", ms(d)),
            Event::Warning(w) => format!("warning: {w}"),
            // Events added to the engine later show as they debug-print.
            #[allow(unreachable_patterns)]
            other => format!("{other:?}"),
        };
        tracing::debug!(target: "ftl_server::build", "{line}");
        self.0.line(line);
    }
}
