//! Client settings. The library reads no environment variables: the caller
//! (the CLI) fills these in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Credential;

/// How the client talks to registries.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// Registries (`host` or `host:port`) spoken to over plain HTTP.
    /// `localhost`, `127.0.0.0/8` and `[::1]` always are.
    pub insecure_registries: Vec<String>,
    /// PEM files of extra certificate authorities, trusted on top of the
    /// system roots.
    pub extra_ca_files: Vec<PathBuf>,
    /// The docker config directory (holding `config.json`) to take
    /// credentials from, usually `$DOCKER_CONFIG` or `~/.docker`. `None`
    /// reads no config file.
    pub docker_config_dir: Option<PathBuf>,
    /// Credentials by registry (`host[:port]`, `docker.io` for Docker Hub);
    /// these win over the docker config.
    pub credentials: HashMap<String, Credential>,
    /// How many blobs a push transfers at once.
    pub max_concurrency: usize,
    /// Blobs at least this large are uploaded in chunks (PATCH).
    pub chunked_upload_threshold: u64,
    /// The size of one PATCH chunk.
    pub chunk_size: u64,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// How long a request without a large body may wait for the
    /// registry's answer (its status and headers) before it counts as a
    /// transient failure. Streamed uploads and large chunks are not timed:
    /// their time to answer includes sending the body.
    pub response_timeout: Duration,
    /// Host names resolved to fixed addresses instead of through DNS (like
    /// curl's `--resolve`); the port comes from the URL.
    pub resolve: HashMap<String, IpAddr>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            insecure_registries: Vec::new(),
            extra_ca_files: Vec::new(),
            docker_config_dir: None,
            credentials: HashMap::new(),
            max_concurrency: 4,
            chunked_upload_threshold: 128 * 1024 * 1024,
            chunk_size: 16 * 1024 * 1024,
            retry: RetryPolicy::default(),
            user_agent: concat!("ftl-registry-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            connect_timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(60),
            resolve: HashMap::new(),
        }
    }
}

/// Exponential backoff with jitter for 408, 429, 5xx and connection errors.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = no retry).
    pub max_attempts: u32,
    /// The wait before the first retry.
    pub initial_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based): doubling, capped,
    /// with up to 50% random jitter added (still capped).
    pub fn backoff(&self, retry: u32) -> Duration {
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        let base = base.min(self.max_backoff);
        let jitter = base.mul_f64(jitter_fraction() * 0.5);
        (base + jitter).min(self.max_backoff)
    }
}

fn jitter_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() % 10_000) as f64 / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let b1 = p.backoff(1);
        assert!(b1 >= Duration::from_millis(100) && b1 <= Duration::from_millis(150));
        let b3 = p.backoff(3);
        assert!(b3 >= Duration::from_millis(400) && b3 <= Duration::from_millis(600));
        assert_eq!(p.backoff(30), Duration::from_secs(1));
    }
}
