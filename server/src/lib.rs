//! `ftl serve`: the HTTP build service over the ftl engine.
//!
//! A client uploads a source archive with build options; the service answers
//! `202` with a build id at once, runs the build on a bounded worker pool
//! through the same [`Engine`] the CLI uses (so every build shares one local
//! cache), records it in SQLite under the state directory, and streams its
//! log. See `server/README.md` for the API and for scaling out.
//!
//! The binary builds the engine (with its language plugins and the server's
//! own registry credentials) and hands it to [`serve`]; this crate knows no
//! language and reads no environment variable.
//!
//! Clients are hostile too: each token may use only its own repositories
//! and see only its own builds ([`Tokens`]); request headers and bodies
//! must arrive within their timeouts, bodies stream to disk under the
//! upload limit, a full queue answers before a body is read, and the
//! number of open connections is bounded.

mod archive;
mod http;
mod log;
mod metrics;
mod service;
mod spec;
mod store;
mod tokens;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ftl::engine::Engine;

pub use archive::{extract, ArchiveError, Format as ArchiveFormat, Limits};
pub use http::OPTIONS_HEADER;
pub use spec::{BuildSpec, Command, SpecError, Verify};
pub use store::{Record, State, StoreError};
pub use tokens::{Prefix, ScopeError, Scopes, Token, TokenFileError, Tokens};

/// Settings of one server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Builds, logs and the database live here; uploads are received and
    /// extracted here and nowhere else.
    pub state_dir: PathBuf,
    /// Builds run at once.
    pub workers: usize,
    /// Builds that may wait for a worker; beyond it, `429`. Uploads still
    /// arriving hold their place.
    pub queue: usize,
    /// Largest request body, in bytes.
    pub max_upload: u64,
    /// Largest total of extracted file contents, in bytes.
    pub max_extract_bytes: u64,
    /// Most entries an archive may have.
    pub max_entries: u64,
    /// Accepted bearer tokens and their scopes; `None` turns
    /// authentication off (and with it scopes and build ownership).
    pub tokens: Option<Arc<Tokens>>,
    /// How long running builds may go on after a shutdown signal.
    pub grace: Duration,
    /// How many times a build is started in all: one that was running
    /// when the server died this often is failed at the next start.
    pub max_attempts: u32,
    /// Connections open at once; more wait to be accepted.
    pub max_connections: usize,
    /// How long a request's headers may take to arrive (and an idle
    /// keep-alive connection may stay open).
    pub header_timeout: Duration,
    /// How long a request's whole body may take to arrive.
    pub body_timeout: Duration,
    /// The longest pause while a body arrives.
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            state_dir: PathBuf::from("ftl-state"),
            workers: 2,
            queue: 16,
            max_upload: 256 << 20,
            max_extract_bytes: 1 << 30,
            max_entries: 100_000,
            tokens: None,
            grace: Duration::from_secs(60),
            max_attempts: 3,
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// What keeps the server from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create the state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tokens(#[from] TokenFileError),
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// Serves on `listener` until `shutdown` completes; then stops accepting,
/// lets running builds finish within the grace period, cancels the rest and
/// returns. Queued builds stay queued in the database and run after the
/// next start, as do builds a killed process left behind.
pub async fn serve(
    config: ServerConfig,
    engine: Arc<Engine>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let grace = config.grace;
    let workers = config.workers.max(1);
    let svc = service::Service::open(config, engine)?;
    svc.recover()?;
    for n in 0..workers {
        svc.spawn_worker(n).map_err(ServerError::Serve)?;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = http::router(svc.clone());
    let limits = http::ConnLimits::from(&svc.config);
    let server = tokio::spawn(http::serve_connections(listener, app, limits, stop_rx));
    shutdown.await;
    tracing::info!("shutting down: no new connections; waiting for running builds");
    let _ = stop_tx.send(true);
    svc.shutdown(grace).await;
    // Open log streams end with their builds; give connections a moment.
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(r)) => r.map_err(ServerError::Serve),
        Ok(Err(e)) => Err(ServerError::Serve(std::io::Error::other(e))),
        Err(_) => Ok(()),
    }
}
