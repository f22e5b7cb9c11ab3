//! Settings read from the environment and flags, in one place: libraries
//! take structs, never environment variables.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ftl_registry_client::{Client, ClientSettings};

/// Registry connection flags, shared by every command that talks to one.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Registry")]
pub struct RegistryArgs {
    /// Talk plain HTTP to this registry host (repeatable). localhost and
    /// 127.0.0.0/8 always use plain HTTP.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Trust this PEM CA certificate for registry TLS, besides the system's
    /// (repeatable).
    #[arg(long = "registry-ca", value_name = "FILE")]
    pub registry_ca: Vec<PathBuf>,
    /// Resolve a registry host name to this address instead of through DNS,
    /// like curl's `--resolve` (repeatable); TLS still checks the name.
    #[arg(long = "registry-resolve", value_name = "HOST=IP")]
    pub registry_resolve: Vec<String>,
    /// How long to wait for a registry's answer to a request (uploads
    /// excepted) before retrying it.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub registry_timeout: std::time::Duration,
    /// How many blobs to push at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub jobs: usize,
}

impl RegistryArgs {
    pub fn client(&self) -> Result<Client> {
        for ca in &self.registry_ca {
            anyhow::ensure!(
                ca.is_file(),
                "registry CA file {} does not exist",
                ca.display()
            );
        }
        let mut resolve = std::collections::HashMap::new();
        for entry in &self.registry_resolve {
            let parsed = entry
                .split_once('=')
                .filter(|(host, _)| !host.is_empty())
                .and_then(|(host, ip)| Some((host.to_string(), ip.parse().ok()?)));
            let Some((host, ip)) = parsed else {
                anyhow::bail!(
                    "--registry-resolve {entry:?} is not HOST=IP, e.g. registry.test=127.0.0.1"
                );
            };
            resolve.insert(host, ip);
        }
        let settings = ClientSettings {
            resolve,
            response_timeout: self.registry_timeout,
            insecure_registries: self.insecure_registries.clone(),
            extra_ca_files: self.registry_ca.clone(),
            docker_config_dir: docker_config_dir(),
            max_concurrency: self.jobs.max(1),
            ..ClientSettings::default()
        };
        Client::new(settings).context("cannot set up the registry client")
    }
}

/// `$DOCKER_CONFIG`, else `~/.docker`.
fn docker_config_dir() -> Option<PathBuf> {
    std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".docker")))
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// `$FTL_CACHE_DIR`, else `$XDG_CACHE_HOME/ftl`, else `~/.cache/ftl`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FTL_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("ftl");
    }
    home()
        .map(|h| h.join(".cache/ftl"))
        .unwrap_or_else(|| PathBuf::from("/var/cache/ftl"))
}

/// The host's CA bundle: `$SSL_CERT_FILE`, else Debian's bundle.
pub fn host_ca_bundle() -> Option<PathBuf> {
    std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| {
            Some(PathBuf::from("/etc/ssl/certs/ca-certificates.crt")).filter(|p| p.is_file())
        })
}

/// The host's proxy variables, both spellings.
pub fn host_proxy_env() -> Vec<(String, String)> {
    [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
    .collect()
}

/// The TCP endpoints install steps may reach in the ranges their network
/// blocks: each `--egress-allow HOST:PORT` (every address HOST resolves
/// to) and the proxies of `proxy_env` (`HTTP(S)_PROXY`, default port 80
/// for `http://`, 443 for `https://`), so that a proxy on a private
/// network or the host's loopback keeps working in a step's namespace.
pub fn egress_allow(
    flags: &[String],
    proxy_env: &[(String, String)],
) -> Result<Vec<std::net::SocketAddr>> {
    use std::net::ToSocketAddrs;
    let mut out = Vec::new();
    for f in flags {
        let addrs: Vec<_> = f
            .to_socket_addrs()
            .with_context(|| format!("--egress-allow {f}: not a HOST:PORT that resolves"))?
            .collect();
        anyhow::ensure!(!addrs.is_empty(), "--egress-allow {f}: no address");
        out.extend(addrs);
    }
    for (k, v) in proxy_env {
        if k.eq_ignore_ascii_case("no_proxy") || v.trim().is_empty() {
            continue;
        }
        let with_scheme = if v.contains("://") {
            v.clone()
        } else {
            format!("http://{v}")
        };
        let url = url::Url::parse(&with_scheme).with_context(|| format!("{k}: not a proxy URL"))?;
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            anyhow::bail!("{k}: the proxy URL names no host");
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match (host, port).to_socket_addrs() {
            Ok(addrs) => out.extend(addrs),
            // Not resolvable here: a step cannot resolve it either.
            Err(e) => tracing::warn!(proxy = %k, error = %e, "cannot resolve the build proxy"),
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Adds what to do in terms of this CLI's flags to registry errors whose
/// library message can only describe it (a TLS failure: `--registry-ca`,
/// `--insecure-registry`), and to a registry that kept failing.
pub fn with_flag_hints(e: anyhow::Error) -> anyhow::Error {
    use ftl_registry_client::Error as RegistryError;
    let registry_error = e.chain().find_map(|c| {
        c.downcast_ref::<RegistryError>().or_else(|| {
            match c.downcast_ref::<ftl::engine::EngineError>() {
                Some(ftl::engine::EngineError::Registry(r)) => Some(&**r),
                _ => None,
            }
        })
    });
    match registry_error {
        Some(RegistryError::Tls { .. }) => e.context(
            "cannot verify the registry's TLS certificate: pass its CA certificate with \
             --registry-ca FILE (or --insecure-registry HOST for a plain-HTTP registry)",
        ),
        Some(r) if matches!(innermost(r), RegistryError::Timeout { .. }) => {
            anyhow::anyhow!("{e:#}; if the registry is only slow, raise --registry-timeout")
        }
        // Unreachable registries already say what to check.
        Some(r) if r.is_transient() && !is_transport(r) => anyhow::anyhow!(
            "{e:#}; the registry kept failing through every retry: try again later, \
             or check the registry's health"
        ),
        _ => e,
    }
}

/// The error under a push failure.
fn innermost(e: &ftl_registry_client::Error) -> &ftl_registry_client::Error {
    match e {
        ftl_registry_client::Error::Push { source, .. } => innermost(source),
        e => e,
    }
}

fn is_transport(e: &ftl_registry_client::Error) -> bool {
    use ftl_registry_client::Error as RegistryError;
    match e {
        RegistryError::Transport { .. } => true,
        RegistryError::Push { source, .. } => is_transport(source),
        _ => false,
    }
}

/// How build steps run: flags shared by `ftl build` and `ftl serve`.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Build steps")]
pub struct StepArgs {
    /// CA bundle handed (read-only) to install steps that reach the network
    /// [default: $SSL_CERT_FILE, else /etc/ssl/certs/ca-certificates.crt].
    /// Never written into a layer, the config or a cache key.
    #[arg(long, value_name = "FILE")]
    pub build_ca: Option<PathBuf>,

    /// Do not hand the host's CA bundle to install steps.
    #[arg(long, conflicts_with = "build_ca")]
    pub no_build_ca: bool,

    /// Do not hand the host's HTTP(S)_PROXY/NO_PROXY to install steps.
    #[arg(long)]
    pub no_build_proxy: bool,

    /// Let install steps reach HOST:PORT over TCP although it is on the
    /// host's loopback or a private network (a package mirror); repeat for
    /// more. Steps reach nothing else there. The build proxy
    /// (HTTP(S)_PROXY) is allowed without this flag.
    #[arg(long, value_name = "HOST:PORT")]
    pub egress_allow: Vec<String>,

    /// The OCI runtime for build steps and verification: ftl (embedded),
    /// runsc, runc, crun, or a path.
    #[arg(long, default_value = "ftl", value_name = "RUNTIME")]
    pub sandbox_runtime: String,

    /// When ftl runs as root: the host ids that build and verify steps'
    /// ids 0..SIZE map to (their root is HOST, never host root)
    /// [default: 1879048192:65536, a range systemd leaves unused].
    #[arg(long, value_name = "HOST[:SIZE]", conflicts_with = "userns_user")]
    pub userns_range: Option<String>,

    /// When ftl runs as root: take the steps' id range from USER's entries
    /// in /etc/subuid and /etc/subgid.
    #[arg(long, value_name = "USER")]
    pub userns_user: Option<String>,

    /// How much a build step may write to its output directories (a
    /// virtualenv, node_modules, Maven's work tree), and a verified app to
    /// its root: each is a filesystem of this size that takes on disk only
    /// what is written. Past it the step fails, naming the directory.
    /// Needs root; otherwise the build report warns that it does not hold.
    #[arg(long, value_name = "SIZE", default_value = "16G", value_parser = parse_size)]
    pub step_disk: u64,

    /// The size of a build step's /tmp, a tmpfs (memory: it counts toward
    /// the step's memory limit).
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
    pub step_tmp: u64,

    /// How much a build may write to each package cache it uses (npm's
    /// cache, Maven's repository; ftl keeps of it for later builds what it
    /// can check). Needs root, as --step-disk.
    #[arg(long, value_name = "SIZE", default_value = "32G", value_parser = parse_size)]
    pub cache_disk: u64,
}

/// A size: bytes, or a number with K, M, G or T (powers of 1024; `GiB`,
/// `GB` and `g` read the same), e.g. `512M`, `1.5G`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 512M, 16G or 1073741824"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use K, M, G or T)"
            ))
        }
    };
    let bytes = number * (1u64 << shift) as f64;
    if !(1.0..1.8e19).contains(&bytes) {
        return Err(format!("{text:?} is not a size ftl can use"));
    }
    Ok(bytes as u64)
}

impl StepArgs {
    /// The steps' id range from `--userns-range` / `--userns-user`.
    pub fn id_range(&self) -> Result<ftl_sandbox::IdRange> {
        Ok(match (&self.userns_range, &self.userns_user) {
            (Some(r), _) => ftl_sandbox::IdRange::parse(r).context("--userns-range")?,
            (None, Some(u)) => ftl_sandbox::IdRange::for_user(u).context("--userns-user")?,
            (None, None) => ftl_sandbox::IdRange::DEFAULT,
        })
    }

    /// The engine with ftl's plugins, its local cache at `cache_dir`
    /// (created if missing), and unpinned layers living `unpinned_ttl`.
    pub fn engine(
        &self,
        registry: &RegistryArgs,
        cache_dir: &std::path::Path,
        unpinned_ttl: std::time::Duration,
    ) -> Result<ftl::engine::Engine> {
        let ca_bundle = if self.no_build_ca {
            None
        } else if let Some(ca) = &self.build_ca {
            anyhow::ensure!(ca.is_file(), "--build-ca {} does not exist", ca.display());
            Some(ca.clone())
        } else {
            host_ca_bundle()
        };
        std::fs::create_dir_all(cache_dir.join("tmp")).with_context(|| {
            format!("cannot create the cache directory {}", cache_dir.display())
        })?;
        let settings = ftl::engine::EngineSettings {
            cache_dir: cache_dir.to_path_buf(),
            layer: ftl::layer::LayerSettings::with_source_date_epoch(
                std::env::var("SOURCE_DATE_EPOCH").ok().as_deref(),
            )?,
            unpinned_ttl,
            build_env: {
                let proxy_env = if self.no_build_proxy {
                    Vec::new()
                } else {
                    host_proxy_env()
                };
                let egress_allow = egress_allow(&self.egress_allow, &proxy_env)?;
                ftl::engine::BuildEnv {
                    ca_bundle,
                    proxy_env,
                    egress_allow,
                }
            },
            disk: ftl::engine::DiskLimits {
                scratch_bytes: self.step_disk,
                cache_bytes: self.cache_disk,
            },
        };
        let state_root = cache_dir.join("sandbox-state");
        // Containers of a build that was killed left cgroups and state.
        let removed = ftl_sandbox::state::gc(&state_root);
        if !removed.is_empty() {
            tracing::info!(count = removed.len(), "removed containers of killed builds");
        }
        let sandbox = ftl_sandbox::Sandbox::from_name(&self.sandbox_runtime);
        let detached = match &sandbox {
            ftl_sandbox::Sandbox::External(ext) => Some(ext.clone()),
            ftl_sandbox::Sandbox::Embedded => {
                ftl_sandbox::ExternalRuntime::this_executable_as_runsc().ok()
            }
        };
        let runtime = std::sync::Arc::new(ftl::engine::SandboxRuntime {
            sandbox,
            state_root,
            detached,
            ids: self.id_range()?,
            limits: ftl_sandbox::Limits {
                tmp_bytes: self.step_tmp,
                ..Default::default()
            },
        });
        Ok(ftl::engine::Engine::new(
            registry.client()?,
            settings,
            runtime,
            crate::build::plugins(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_in_powers_of_1024() {
        assert_eq!(parse_size("16G"), Ok(16 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        assert!(parse_size("ten gigs").is_err());
        assert!(parse_size("10X").is_err());
        assert!(parse_size("0").is_err());
    }
}
