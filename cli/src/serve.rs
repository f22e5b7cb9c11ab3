//! `ftl serve`: the HTTP build service. The binary owns the wiring: the
//! engine with its plugins, the server's own registry credentials
//! (`$DOCKER_CONFIG` or `~/.docker`, never a build's source), signals and
//! the terminal; `ftl-server` does the rest.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use ftl_server::ServerConfig;

use crate::settings::{RegistryArgs, StepArgs};

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  ftl serve --listen 127.0.0.1:8080 --state-dir /var/lib/ftl --token-file /etc/ftl/tokens
  curl -H \"Authorization: Bearer $TOKEN\" -H 'Ftl-Options: {\"image\":\"reg/app:v1\",\"base\":\"reg/base/python\"}' \\
       --data-binary @app.tar.gz http://127.0.0.1:8080/v1/builds

API: POST /v1/builds, GET /v1/builds/{id}, GET /v1/builds/{id}/log,
POST /v1/builds/{id}:cancel, GET /healthz, GET /metrics (see server/README.md).")]
pub struct ServeArgs {
    /// The address to listen on (port 0 picks a free one; the address is
    /// printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,

    /// Where the build database, logs and extracted uploads live.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,

    /// Builds run at once.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub workers: usize,

    /// Builds that may wait for a worker; beyond that, 429 with Retry-After.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub queue: usize,

    /// The largest upload, in bytes (suffixes K, M, G allowed).
    #[arg(long, default_value = "256M", value_parser = parse_bytes, value_name = "BYTES")]
    pub max_upload: u64,

    /// The most an upload may expand to, in bytes (decompression limit).
    #[arg(long, default_value = "1G", value_parser = parse_bytes, value_name = "BYTES")]
    pub max_extract: u64,

    /// The most entries an upload may have.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub max_files: u64,

    /// The accepted bearer tokens (TOML: a [[token]] table per token with
    /// its name and the repository prefixes it may use; see
    /// server/README.md).
    #[arg(long, value_name = "FILE", required_unless_present = "no_auth")]
    pub token_file: Option<PathBuf>,

    /// Serve without authentication (only behind something that does it):
    /// every client may use every repository and see every build.
    #[arg(long, conflicts_with = "token_file")]
    pub no_auth: bool,

    /// After SIGTERM, how long running builds may go on before they are
    /// cancelled.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub grace: Duration,

    /// How many times a build may be started: one that was running when
    /// the server died this often is failed at the next start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub max_attempts: u32,

    /// Connections open at once; more wait until one closes.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub max_connections: u64,

    /// How long a request's headers may take to arrive (also how long an
    /// idle keep-alive connection stays open).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub header_timeout: Duration,

    /// How long a whole request body (an upload) may take to arrive.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub body_timeout: Duration,

    /// The longest pause while a request body arrives.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,

    /// The local layer cache shared by all builds [default: STATE_DIR/cache].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// How long layers of unpinned dependencies stay cached.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub cache_ttl: Duration,

    #[command(flatten)]
    pub steps: StepArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (t, 1u64),
        Some((i, _)) => {
            let unit = t[i..].trim().to_ascii_uppercase();
            let m = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                _ => return Err(format!("{s:?}: use a number of bytes with K, M or G")),
            };
            (&t[..i], m)
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a number of bytes"))
}

pub async fn run(args: ServeArgs) -> Result<()> {
    std::fs::create_dir_all(&args.state_dir).with_context(|| {
        format!(
            "cannot create the state directory {}",
            args.state_dir.display()
        )
    })?;
    let state_dir = args
        .state_dir
        .canonicalize()
        .with_context(|| format!("state directory {}", args.state_dir.display()))?;
    let tokens = match &args.token_file {
        Some(f) => Some(Arc::new(ftl_server::Tokens::read(f)?)),
        None => None,
    };
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| state_dir.join("cache"));
    let engine = Arc::new(
        args.steps
            .engine(&args.registry, &cache_dir, args.cache_ttl)?,
    );
    let config = ServerConfig {
        state_dir,
        workers: args.workers.max(1),
        queue: args.queue,
        max_upload: args.max_upload,
        max_extract_bytes: args.max_extract,
        max_entries: args.max_files,
        tokens,
        grace: args.grace,
        max_attempts: args.max_attempts,
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        header_timeout: args.header_timeout,
        body_timeout: args.body_timeout,
        idle_timeout: args.idle_timeout,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("ftl serve: listening on http://{addr}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    ftl_server::serve(config, engine, listener, shutdown_signal()).await?;
    println!("ftl serve: stopped");
    Ok(())
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn byte_sizes() {
        assert_eq!(super::parse_bytes("1024").unwrap(), 1024);
        assert_eq!(super::parse_bytes("2M").unwrap(), 2 << 20);
        assert_eq!(super::parse_bytes("1GiB").unwrap(), 1 << 30);
        assert!(super::parse_bytes("lots").is_err());
    }
}
