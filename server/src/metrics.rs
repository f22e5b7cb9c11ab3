//! Prometheus text exposition of the service's counters.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

const BUCKETS: &[f64] = &[0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// Counters since the process started.
#[derive(Default)]
pub struct Metrics {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    pub submitted: AtomicU64,
    pub rejected_full: AtomicU64,
    pub rejected_upload: AtomicU64,
    /// Requests past the 413 and 429 checks into the upload of their body
    /// and not yet accepted or refused (a gauge).
    pub receiving: AtomicU64,
    /// Requests cut off because their body did not arrive in time.
    pub rejected_timeout: AtomicU64,
    /// Requests refused for naming a repository outside their token's
    /// prefixes.
    pub rejected_scope: AtomicU64,
    pub layers_hit: AtomicU64,
    pub layers_built: AtomicU64,
    durations: Mutex<Histogram>,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; 10],
    sum: f64,
    count: u64,
}

impl Metrics {
    pub fn observe_duration(&self, secs: f64) {
        let mut h = self.durations.lock().unwrap_or_else(|p| p.into_inner());
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// The exposition, with the gauges given by the caller.
    pub fn render(&self, queued: usize, running: usize, workers: usize) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# HELP ftl_builds_total Builds finished, by outcome.");
        let _ = writeln!(o, "# TYPE ftl_builds_total counter");
        for (outcome, c) in [
            ("succeeded", &self.succeeded),
            ("failed", &self.failed),
            ("cancelled", &self.cancelled),
        ] {
            let _ = writeln!(
                o,
                "ftl_builds_total{{outcome=\"{outcome}\"}} {}",
                c.load(Relaxed)
            );
        }
        let _ = writeln!(o, "# HELP ftl_builds_submitted_total Builds accepted.");
        let _ = writeln!(o, "# TYPE ftl_builds_submitted_total counter");
        let _ = writeln!(
            o,
            "ftl_builds_submitted_total {}",
            self.submitted.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP ftl_builds_rejected_total Submissions refused, by reason."
        );
        let _ = writeln!(o, "# TYPE ftl_builds_rejected_total counter");
        let _ = writeln!(
            o,
            "ftl_builds_rejected_total{{reason=\"queue-full\"}} {}",
            self.rejected_full.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "ftl_builds_rejected_total{{reason=\"bad-upload\"}} {}",
            self.rejected_upload.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "ftl_builds_rejected_total{{reason=\"timeout\"}} {}",
            self.rejected_timeout.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "ftl_builds_rejected_total{{reason=\"forbidden\"}} {}",
            self.rejected_scope.load(Relaxed)
        );
        {
            let h = self.durations.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(
                o,
                "# HELP ftl_build_duration_seconds Time from start to end of a build."
            );
            let _ = writeln!(o, "# TYPE ftl_build_duration_seconds histogram");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "ftl_build_duration_seconds_bucket{{le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                o,
                "ftl_build_duration_seconds_bucket{{le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(o, "ftl_build_duration_seconds_sum {}", h.sum);
            let _ = writeln!(o, "ftl_build_duration_seconds_count {}", h.count);
        }
        let hits = self.layers_hit.load(Relaxed);
        let built = self.layers_built.load(Relaxed);
        let _ = writeln!(
            o,
            "# HELP ftl_layers_total Application layers of finished builds, by cache outcome."
        );
        let _ = writeln!(o, "# TYPE ftl_layers_total counter");
        let _ = writeln!(o, "ftl_layers_total{{cache=\"hit\"}} {hits}");
        let _ = writeln!(o, "ftl_layers_total{{cache=\"miss\"}} {built}");
        let _ = writeln!(
            o,
            "# HELP ftl_cache_hit_ratio Share of application layers found in a cache."
        );
        let _ = writeln!(o, "# TYPE ftl_cache_hit_ratio gauge");
        let ratio = if hits + built == 0 {
            0.0
        } else {
            hits as f64 / (hits + built) as f64
        };
        let _ = writeln!(o, "ftl_cache_hit_ratio {ratio}");
        let _ = writeln!(o, "# HELP ftl_queue_depth Builds waiting for a worker.");
        let _ = writeln!(o, "# TYPE ftl_queue_depth gauge");
        let _ = writeln!(o, "ftl_queue_depth {queued}");
        let _ = writeln!(o, "# HELP ftl_builds_running Builds a worker is running.");
        let _ = writeln!(o, "# TYPE ftl_builds_running gauge");
        let _ = writeln!(o, "ftl_builds_running {running}");
        let _ = writeln!(
            o,
            "# HELP ftl_uploads_receiving Submissions whose body is arriving."
        );
        let _ = writeln!(o, "# TYPE ftl_uploads_receiving gauge");
        let _ = writeln!(o, "ftl_uploads_receiving {}", self.receiving.load(Relaxed));
        let _ = writeln!(o, "# HELP ftl_workers Size of the worker pool.");
        let _ = writeln!(o, "# TYPE ftl_workers gauge");
        let _ = writeln!(o, "ftl_workers {workers}");
        o
    }
}
