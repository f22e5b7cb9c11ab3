//! The build service: submissions, the bounded queue, the worker pool,
//! cancellation, recovery after a restart and shutdown. HTTP lives in
//! `http.rs`; this is plain async Rust over the engine.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ftl::engine::{BuildReport, Engine, LayerSource};
use futures_util::FutureExt;
use tokio::sync::Notify;

use crate::archive::{self, ArchiveError, Limits};
use crate::log::{LiveLog, LogObserver};
use crate::metrics::Metrics;
use crate::spec::{BuildSpec, SpecError};
use crate::store::{Record, State, Store, StoreError};
use crate::ServerConfig;

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("the build queue is full ({0} builds waiting or running); retry later")]
    Full(usize),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server could not write the upload's tree (its path is logged,
    /// never shown to the client).
    #[error("the server cannot store the upload")]
    Storage(#[source] std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a cancel did nothing.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no build {0}")]
    NotFound(String),
    #[error("build {0} already ended ({1})")]
    Ended(String, &'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn new_id() -> String {
    format!("b{:011x}{:08x}", now_ms(), rand::random::<u32>())
}

/// A valid build id: what [`new_id`] makes.
pub fn valid_id(id: &str) -> bool {
    id.len() == 20 && id.starts_with('b') && id[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<String>,
    /// Running builds and the signal that cancels each.
    running: HashMap<String, Arc<Notify>>,
    /// Why a running build was aborted, for its record.
    cancel_reasons: HashMap<String, String>,
    /// Builds accepted and not ended (queued + running).
    in_flight: HashSet<String>,
    stopping: bool,
}

/// A place in the queue, taken before an upload's body is read (so that a
/// full queue answers at once) and given back when dropped, unless the
/// build it was for was accepted.
pub(crate) struct Slot {
    svc: Arc<Service>,
    id: String,
    accepted: bool,
}

impl Slot {
    pub(crate) fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.accepted {
            self.svc.inner().in_flight.remove(&self.id);
        }
        self.svc.metrics.receiving.fetch_sub(1, Relaxed);
    }
}

/// What a restart does with a build the previous process left unfinished.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Recovery {
    Requeue { note: String },
    Fail { error: String, note: String },
}

/// The restart's decision for `rec`: re-queued, unless its source is gone
/// or the server already died `max_attempts` times while it ran (a build
/// that kills the server, by memory or otherwise, must not do so forever).
pub(crate) fn recovery(rec: &Record, source_exists: bool, max_attempts: u32) -> Recovery {
    if rec.state == State::Running && rec.attempts >= i64::from(max_attempts) {
        return Recovery::Fail {
            error: format!(
                "the server stopped {} times while this build ran",
                rec.attempts
            ),
            note: format!(
                "failed at restart: {max_attempts} attempt(s) (--max-attempts) were interrupted"
            ),
        };
    }
    if !source_exists {
        return Recovery::Fail {
            error: "the server stopped before this build ended, and its source is gone".into(),
            note: "failed at restart".into(),
        };
    }
    Recovery::Requeue {
        note: if rec.state == State::Running {
            format!(
                "re-queued after a server restart: attempt {} was interrupted",
                rec.attempts
            )
        } else {
            "re-queued after a server restart".to_string()
        },
    }
}

/// The service shared by the HTTP handlers and the workers.
pub struct Service {
    pub(crate) config: ServerConfig,
    engine: Arc<Engine>,
    pub(crate) store: Store,
    pub(crate) metrics: Metrics,
    inner: Mutex<Inner>,
    wake: Notify,
    idle: Notify,
    logs: Mutex<HashMap<String, Arc<LiveLog>>>,
}

impl Service {
    pub(crate) fn open(
        config: ServerConfig,
        engine: Arc<Engine>,
    ) -> Result<Arc<Service>, crate::ServerError> {
        for d in ["builds", "logs", "uploads"] {
            let p = config.state_dir.join(d);
            std::fs::create_dir_all(&p).map_err(|source| crate::ServerError::StateDir {
                path: p.clone(),
                source,
            })?;
        }
        // Bodies a killed process was receiving: nothing refers to them.
        for e in std::fs::read_dir(config.state_dir.join("uploads"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_file(e.path());
        }
        let store = Store::open(&config.state_dir.join("builds.db"))?;
        Ok(Arc::new(Service {
            config,
            engine,
            store,
            metrics: Metrics::default(),
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
            idle: Notify::new(),
            logs: Mutex::new(HashMap::new()),
        }))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn source_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("builds").join(id)
    }

    /// Where the body of the upload for `id` is written while it arrives.
    pub(crate) fn upload_path(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("uploads").join(id)
    }

    pub(crate) fn log_path(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("logs").join(format!("{id}.log"))
    }

    pub(crate) fn live_log(&self, id: &str) -> Option<Arc<LiveLog>> {
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn open_log(&self, id: &str) -> Arc<LiveLog> {
        let log = LiveLog::open(self.log_path(id));
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), log.clone());
        log
    }

    fn close_log(&self, id: &str, last: &str) {
        let log = self
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some(log) = log {
            log.end(last);
        }
    }

    /// (queued, running)
    pub fn depth(&self) -> (usize, usize) {
        let g = self.inner();
        (g.queue.len(), g.running.len())
    }

    /// Re-queues what a previous process left queued or running; fails
    /// those whose source is gone and those it was running
    /// `max_attempts` times already. Called once, before serving.
    pub(crate) fn recover(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for rec in self.store.unfinished()? {
            let src = self.source_dir(&rec.id).join("src");
            match recovery(&rec, src.is_dir(), self.config.max_attempts) {
                Recovery::Fail { error, note } => {
                    self.store.finish(
                        &rec.id,
                        State::Failed,
                        now_ms(),
                        None,
                        None,
                        None,
                        Some(&error),
                        Some(&note),
                    )?;
                    self.metrics.failed.fetch_add(1, Relaxed);
                    let _ = std::fs::remove_dir_all(self.source_dir(&rec.id));
                    let log = self.open_log(&rec.id);
                    log.line(&note);
                    self.close_log(&rec.id, &format!("failed: {error}"));
                    tracing::warn!(build = %rec.id, %error, "not resumed");
                }
                Recovery::Requeue { note } => {
                    self.store.requeue(&rec.id, &note)?;
                    let log = self.open_log(&rec.id);
                    log.line(&note);
                    let mut g = self.inner();
                    g.queue.push_back(rec.id.clone());
                    g.in_flight.insert(rec.id.clone());
                    n += 1;
                }
            }
        }
        if n > 0 {
            tracing::info!(builds = n, "re-queued unfinished builds");
            self.wake.notify_waiters();
        }
        Ok(n)
    }

    /// Takes a place in the queue for a build about to be uploaded: `Full`
    /// when `workers + queue` builds are running, waiting or arriving.
    pub(crate) fn reserve(self: &Arc<Self>) -> Result<Slot, SubmitError> {
        let id = new_id();
        let mut g = self.inner();
        if g.stopping {
            return Err(SubmitError::ShuttingDown);
        }
        let capacity = self.config.workers + self.config.queue;
        if g.in_flight.len() >= capacity {
            self.metrics.rejected_full.fetch_add(1, Relaxed);
            return Err(SubmitError::Full(g.in_flight.len()));
        }
        g.in_flight.insert(id.clone());
        self.metrics.receiving.fetch_add(1, Relaxed);
        Ok(Slot {
            svc: self.clone(),
            id,
            accepted: false,
        })
    }

    /// Accepts the build of `slot`: extracts the upload stored at `upload`,
    /// records the build (owned by the token named `owner`) and queues it.
    pub(crate) async fn submit(
        self: &Arc<Self>,
        mut slot: Slot,
        spec: BuildSpec,
        owner: Option<String>,
        upload: &Path,
    ) -> Result<String, SubmitError> {
        let id = slot.id.clone();
        let result = self.accept(&id, &spec, owner.as_deref(), upload).await;
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(self.source_dir(&id));
            if matches!(&e, SubmitError::Archive(a) if a.is_client_error()) {
                self.metrics.rejected_upload.fetch_add(1, Relaxed);
            }
            return Err(e);
        }
        slot.accepted = true;
        self.metrics.submitted.fetch_add(1, Relaxed);
        self.inner().queue.push_back(id.clone());
        self.wake.notify_one();
        Ok(id)
    }

    async fn accept(
        &self,
        id: &str,
        spec: &BuildSpec,
        owner: Option<&str>,
        upload: &Path,
    ) -> Result<(), SubmitError> {
        let src = self.source_dir(id).join("src");
        let limits = Limits {
            max_bytes: self.config.max_extract_bytes,
            max_entries: self.config.max_entries,
        };
        let (src2, upload2) = (src.clone(), upload.to_path_buf());
        let format = tokio::task::spawn_blocking(move || {
            let storage = |what: &str, path: &Path, e: std::io::Error| {
                tracing::error!(path = %path.display(), error = %e, "cannot {what}");
                SubmitError::Storage(e)
            };
            std::fs::create_dir_all(&src2)
                .map_err(|e| storage("create the source directory", &src2, e))?;
            let file = std::fs::File::open(&upload2)
                .map_err(|e| storage("open the stored upload", &upload2, e))?;
            archive::extract(file, &src2, limits).map_err(SubmitError::from)
        })
        .await
        .map_err(|e| SubmitError::Internal(e.to_string()))??;
        let options =
            serde_json::to_value(spec).map_err(|e| SubmitError::Internal(e.to_string()))?;
        // The log exists before the record, so a reader never misses it.
        let log = self.open_log(id);
        log.line(format!(
            "queued: {} from a {:?} upload, base {}",
            spec.image, format, spec.base
        ));
        if let Err(e) = self.store.insert(id, &options, now_ms(), owner) {
            self.close_log(id, "not accepted");
            return Err(e.into());
        }
        Ok(())
    }

    /// Whether the build `rec` is the caller's to see: its own, or any
    /// without authentication (`caller` is `None`).
    pub(crate) fn visible(rec: &Record, caller: Option<&str>) -> bool {
        caller.is_none() || rec.owner.as_deref() == caller
    }

    pub fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        self.store.get(id)
    }

    /// Cancels a queued or running build of `caller` (any build when
    /// `None`); another's is not found.
    pub fn cancel(&self, id: &str, caller: Option<&str>) -> Result<State, CancelError> {
        let rec = self
            .store
            .get(id)?
            .filter(|r| Service::visible(r, caller))
            .ok_or_else(|| CancelError::NotFound(id.to_string()))?;
        if rec.state.is_terminal() {
            return Err(CancelError::Ended(id.to_string(), rec.state.as_str()));
        }
        let mut g = self.inner();
        if let Some(cancel) = g.running.get(id) {
            cancel.notify_one();
            g.cancel_reasons
                .insert(id.to_string(), "cancelled by request".into());
            return Ok(State::Running);
        }
        if rec.state == State::Running {
            // Started but not yet registered: the worker aborts it as soon
            // as it registers.
            g.cancel_reasons
                .insert(id.to_string(), "cancelled by request".into());
            return Ok(State::Running);
        }
        // Queued: the worker skips it.
        g.queue.retain(|q| q != id);
        g.in_flight.remove(id);
        drop(g);
        if self.store.finish(
            id,
            State::Cancelled,
            now_ms(),
            None,
            None,
            None,
            None,
            Some("cancelled by request before it ran"),
        )? {
            self.metrics.cancelled.fetch_add(1, Relaxed);
            let _ = std::fs::remove_dir_all(self.source_dir(id));
            self.close_log(id, "cancelled before it ran");
        }
        Ok(State::Queued)
    }

    /// One worker: takes builds off the queue until the service stops.
    ///
    /// The engine's build future is not `Send`, so each worker runs on a
    /// thread of its own with a current-thread runtime that stays inside
    /// `block_on` for the worker's life (the registry client's pooled
    /// connections keep being driven between builds).
    pub(crate) fn spawn_worker(self: &Arc<Self>, n: usize) -> std::io::Result<()> {
        let svc = self.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("ftl-worker-{n}"))
            .spawn(move || rt.block_on(svc.worker(n)))?;
        Ok(())
    }

    async fn worker(self: Arc<Self>, n: usize) {
        loop {
            let id = loop {
                let notified = self.wake.notified();
                {
                    let mut g = self.inner();
                    if g.stopping {
                        return;
                    }
                    if let Some(id) = g.queue.pop_front() {
                        break id;
                    }
                }
                notified.await;
            };
            tracing::debug!(worker = n, build = %id, "taking a build");
            self.run_one(&id).await;
        }
    }

    async fn run_one(self: &Arc<Self>, id: &str) {
        let rec = match self.store.get(id) {
            Ok(Some(r)) if r.state == State::Queued => r,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(build = id, error = %e, "cannot read the build record");
                return;
            }
        };
        let log = self.live_log(id).unwrap_or_else(|| self.open_log(id));
        let req = self.request(&rec);
        // The log says so before the record does: a reader (or a restart)
        // that sees attempt N running finds its line in the log.
        log.line(format!("running (attempt {})", rec.attempts + 1));
        match self.store.start(id, now_ms()) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::error!(build = id, error = %e, "cannot mark the build running");
                return;
            }
        }
        let started = Instant::now();
        let outcome = match req {
            Err(e) => Err(Outcome::Failed(e)),
            Ok(req) => {
                let cancel = Arc::new(Notify::new());
                {
                    let mut g = self.inner();
                    g.running.insert(id.to_string(), cancel.clone());
                    // A cancel may have raced the start.
                    if g.cancel_reasons.contains_key(id) {
                        cancel.notify_one();
                    }
                }
                let observer = Arc::new(LogObserver(log.clone()));
                let stop = req.cancel.clone();
                let build = AssertUnwindSafe(self.engine.build(&req, observer)).catch_unwind();
                tokio::select! {
                    r = build => match r {
                        Ok(Ok(report)) => Ok(report),
                        Ok(Err(e)) => Err(Outcome::Failed(ftl::error_chain(&e))),
                        Err(_) => Err(Outcome::Failed("internal error: the build panicked".into())),
                    },
                    _ = cancel.notified() => {
                        // The build's blocking work goes on without its
                        // future: this kills its sandboxed step.
                        stop.cancel();
                        let reason = self
                            .inner()
                            .cancel_reasons
                            .remove(id)
                            .unwrap_or_else(|| "cancelled".into());
                        Err(Outcome::Cancelled(reason))
                    }
                }
            }
        };
        self.complete(id, outcome, started.elapsed(), &log);
    }

    /// The engine request of a recorded build. Its token is checked again,
    /// as the token file says now: a build queued before a token lost a
    /// prefix (or was removed) does not run with the old rights.
    fn request(&self, rec: &Record) -> Result<ftl::engine::BuildRequest, String> {
        let spec: BuildSpec = serde_json::from_value(rec.options.clone())
            .map_err(|e| format!("invalid options: {e}"))?;
        if let Some(tokens) = &self.config.tokens {
            let owner = rec.owner.as_deref().ok_or(
                "this build was recorded before tokens had names and scopes; submit it again",
            )?;
            let token = tokens.named(owner).ok_or_else(|| {
                format!(
                    "the token `{owner}` that submitted this build is no longer in the token file"
                )
            })?;
            let uses = spec
                .repositories()
                .map_err(|e| format!("invalid options: {e}"))?;
            token
                .check(uses.iter().map(|(o, s, r)| (o.clone(), *s, r)))
                .map_err(|e| format!("not allowed: {e}"))?;
        }
        let mut req = spec
            .to_request(self.source_dir(&rec.id).join("src"))
            .map_err(|e| format!("invalid options: {e}"))?;
        req.cache_scope = rec.owner.clone();
        Ok(req)
    }

    fn complete(
        &self,
        id: &str,
        outcome: Result<BuildReport, Outcome>,
        took: Duration,
        log: &LiveLog,
    ) {
        let now = now_ms();
        let (state, last) = match &outcome {
            Ok(report) => {
                let report_json = serde_json::to_value(report).ok();
                let (hits, built) = report
                    .layers
                    .iter()
                    .fold((0, 0), |(h, b), l| match l.source {
                        LayerSource::Base => (h, b),
                        LayerSource::Built => (h, b + 1),
                        _ => (h + 1, b),
                    });
                self.metrics.layers_hit.fetch_add(hits, Relaxed);
                self.metrics.layers_built.fetch_add(built, Relaxed);
                if let Some(v) = &report.verify {
                    log.line(format!(
                        "verify: passed ({}{})",
                        v.mode,
                        v.status.map(|s| format!(", HTTP {s}")).unwrap_or_default()
                    ));
                }
                let r = self.store.finish(
                    id,
                    State::Succeeded,
                    now,
                    Some(&report.image),
                    Some(&report.digest),
                    report_json.as_ref(),
                    None,
                    None,
                );
                if let Err(e) = r {
                    tracing::error!(build = id, error = %e, "cannot record the build");
                }
                self.metrics.succeeded.fetch_add(1, Relaxed);
                (
                    State::Succeeded,
                    format!(
                        "succeeded: {} ({} layer(s) built, {} cached)",
                        report.image, built, hits
                    ),
                )
            }
            Err(Outcome::Failed(msg)) => {
                let _ = self
                    .store
                    .finish(id, State::Failed, now, None, None, None, Some(msg), None)
                    .map_err(
                        |e| tracing::error!(build = id, error = %e, "cannot record the build"),
                    );
                self.metrics.failed.fetch_add(1, Relaxed);
                (State::Failed, format!("failed: {msg}"))
            }
            Err(Outcome::Cancelled(reason)) => {
                let _ = self
                    .store
                    .finish(
                        id,
                        State::Cancelled,
                        now,
                        None,
                        None,
                        None,
                        Some(reason),
                        Some(reason),
                    )
                    .map_err(
                        |e| tracing::error!(build = id, error = %e, "cannot record the build"),
                    );
                self.metrics.cancelled.fetch_add(1, Relaxed);
                (State::Cancelled, reason.clone())
            }
        };
        self.metrics.observe_duration(took.as_secs_f64());
        tracing::info!(
            build = id,
            state = state.as_str(),
            ms = took.as_millis() as u64,
            "build ended"
        );
        let _ = std::fs::remove_dir_all(self.source_dir(id));
        self.close_log(id, &last);
        let mut g = self.inner();
        g.running.remove(id);
        g.in_flight.remove(id);
        if g.running.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// Stops taking builds off the queue (queued ones stay queued, for the
    /// next start), waits up to `grace` for running ones, then cancels them.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        {
            let mut g = self.inner();
            g.stopping = true;
        }
        self.wake.notify_waiters();
        // Queued builds stay queued for the next start; end their log
        // streams now so that no client waits on a stopped server.
        let queued: Vec<String> = self.inner().queue.iter().cloned().collect();
        for id in queued {
            self.close_log(
                &id,
                "the server is stopping: this build stays queued and runs after the next start",
            );
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let idle = self.idle.notified();
            let running = self.inner().running.len();
            if running == 0 {
                break;
            }
            tracing::info!(running, "waiting for running builds to finish");
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                {
                    let mut g = self.inner();
                    let ids: Vec<String> = g.running.keys().cloned().collect();
                    for id in ids {
                        g.cancel_reasons.insert(
                            id.clone(),
                            format!(
                                "cancelled: the server shut down and the build did not end within the {}s grace period",
                                grace.as_secs()
                            ),
                        );
                        if let Some(cancel) = g.running.get(&id) {
                            cancel.notify_one();
                        }
                    }
                }
                // Give the workers a moment to record the cancellations.
                let wait_until = tokio::time::Instant::now() + Duration::from_secs(5);
                while !self.inner().running.is_empty() && tokio::time::Instant::now() < wait_until {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                break;
            }
        }
    }
}

enum Outcome {
    Failed(String),
    Cancelled(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_fails_a_build_after_max_attempts_interrupted_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("builds.db")).unwrap();
        store
            .insert("b1", &serde_json::json!({}), 1, Some("team-a"))
            .unwrap();
        let get = || store.get("b1").unwrap().unwrap();
        // Queued, never started: re-queued, however often.
        assert_eq!(
            recovery(&get(), true, 3),
            Recovery::Requeue {
                note: "re-queued after a server restart".into()
            }
        );
        // Three starts, each ended by the server dying (as a restart
        // leaves it: still `running`).
        for attempt in 1..=3 {
            assert!(store.start("b1", 10 + attempt).unwrap());
            let rec = get();
            assert_eq!((rec.state, rec.attempts), (State::Running, attempt));
            let decision = recovery(&rec, true, 3);
            if attempt < 3 {
                assert_eq!(
                    decision,
                    Recovery::Requeue {
                        note: format!(
                            "re-queued after a server restart: attempt {attempt} was interrupted"
                        )
                    }
                );
                store.requeue("b1", "re-queued").unwrap();
            } else {
                assert_eq!(
                    decision,
                    Recovery::Fail {
                        error: "the server stopped 3 times while this build ran".into(),
                        note: "failed at restart: 3 attempt(s) (--max-attempts) were interrupted"
                            .into(),
                    }
                );
            }
        }
        // A lower limit fails it earlier; a source that is gone fails it too.
        assert!(matches!(recovery(&get(), true, 1), Recovery::Fail { .. }));
        store.requeue("b1", "x").unwrap();
        let queued = get();
        assert!(matches!(
            recovery(&queued, false, 3),
            Recovery::Fail { error, .. } if error.contains("source is gone")
        ));
    }
}
