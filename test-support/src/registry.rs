//! A real registry for tests: Debian's `docker-registry` (CNCF distribution
//! v2) on a free loopback port, with filesystem storage in a temporary
//! directory. Variants: plain, htpasswd basic auth, TLS (a generated CA and
//! a leaf certificate), and bearer tokens from [`TokenServer`].
//!
//! The child process gets `PR_SET_PDEATHSIG` (it dies with the thread that
//! started it, so start it from the test's own thread) and is killed on
//! drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::token::{TokenServer, TokenServerConfig};

/// The registry binary Debian's `docker-registry` package installs.
pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
/// The user name of the auth variants.
pub const USERNAME: &str = "ftl-tester";
/// Their password.
pub const PASSWORD: &str = "correct-horse-battery";
/// The DNS name the TLS certificate is issued for, besides `localhost` and
/// `127.0.0.1`. Clients resolve it to the registry's address themselves
/// (loopback names are spoken to over plain HTTP by ftl).
pub const TLS_NAME: &str = "ftl-registry.test";
/// The token service name (the registry's `service`).
pub const TOKEN_SERVICE: &str = "ftl-test-registry";
/// The token issuer.
pub const TOKEN_ISSUER: &str = "ftl-test-token-server";

/// How the registry authenticates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RegistryAuth {
    /// Anyone may push and pull.
    #[default]
    None,
    /// htpasswd (bcrypt) basic auth with [`USERNAME`] / [`PASSWORD`].
    Htpasswd,
    /// Bearer tokens from a [`TokenServer`] that accepts [`USERNAME`] /
    /// [`PASSWORD`].
    Token,
}

/// What registry to start.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Authentication.
    pub auth: RegistryAuth,
    /// Serve HTTPS with a certificate from a generated CA.
    pub tls: bool,
    /// Token lifetime for [`RegistryAuth::Token`] (default 300 s).
    pub token_ttl_secs: Option<u64>,
}

impl RegistryOptions {
    /// Plain HTTP, no auth.
    pub fn plain() -> Self {
        Self::default()
    }
    /// Plain HTTP, htpasswd basic auth.
    pub fn htpasswd() -> Self {
        Self {
            auth: RegistryAuth::Htpasswd,
            ..Self::default()
        }
    }
    /// HTTPS, no auth.
    pub fn tls() -> Self {
        Self {
            tls: true,
            ..Self::default()
        }
    }
    /// Plain HTTP, bearer tokens.
    pub fn token() -> Self {
        Self {
            auth: RegistryAuth::Token,
            ..Self::default()
        }
    }
}

/// A running registry. Killed on drop; its storage is deleted.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    options: RegistryOptions,
    ca_pem: Option<PathBuf>,
    token_server: Option<TokenServer>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("port", &self.port)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Starts a registry and waits until `GET /v2/` answers.
    pub fn start(options: RegistryOptions) -> Result<Self> {
        require_binary(REGISTRY_BINARY, "docker-registry")?;
        // A registry in a `static` rig is never dropped: its directory is
        // removed by a later start once this process is gone.
        let dir = crate::owned_temp_dir("ftl-registry-")?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let port = free_port()?;
        let mut tls_section = String::new();
        let mut ca_pem = None;
        if options.tls {
            let tls = generate_tls(dir.path())?;
            tls_section = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                tls.cert.display(),
                tls.key.display()
            );
            ca_pem = Some(tls.ca);
        }
        let mut token_server = None;
        let auth_section = match options.auth {
            RegistryAuth::None => String::new(),
            RegistryAuth::Htpasswd => {
                let out = run_tool("htpasswd", "apache2-utils", &["-Bbn", USERNAME, PASSWORD])?;
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, out.trim_end().to_owned() + "\n")?;
                format!(
                    "auth:\n  htpasswd:\n    realm: ftl-test\n    path: {}\n",
                    file.display()
                )
            }
            RegistryAuth::Token => {
                let server = TokenServer::start(
                    dir.path(),
                    TokenServerConfig {
                        service: TOKEN_SERVICE.into(),
                        issuer: TOKEN_ISSUER.into(),
                        username: USERNAME.into(),
                        password: PASSWORD.into(),
                        ttl_secs: options.token_ttl_secs.unwrap_or(300),
                    },
                )?;
                let section = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    server.realm(),
                    server.cert_bundle().display()
                );
                token_server = Some(server);
                section
            }
        };
        // The port is free when picked but could be taken before the
        // registry binds it: on "address already in use", pick another.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = if attempt == 1 { port } else { free_port()? };
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: ftl-test-secret-{port}\n{tls_section}\
                 {auth_section}",
                storage = storage.display(),
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config)?;
            let log_path = dir.path().join("registry.log");
            let mut child = spawn_registry(&config_path, &log_path)?;
            match wait_ready(&mut child, port, options.tls, &log_path) {
                Ok(()) => {
                    return Ok(Self {
                        child,
                        dir,
                        port,
                        options,
                        ca_pem,
                        token_server,
                    })
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    if attempt < 3 && log.contains("address already in use") {
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// `http://127.0.0.1:<port>` (or `https://ftl-registry.test:<port>` for
    /// TLS).
    pub fn url(&self) -> String {
        if self.options.tls {
            format!("https://{TLS_NAME}:{}", self.port)
        } else {
            format!("http://127.0.0.1:{}", self.port)
        }
    }

    /// The registry part of image references: `127.0.0.1:<port>`, or
    /// `ftl-registry.test:<port>` for TLS (resolve it to
    /// [`Registry::socket_addr`]).
    pub fn host(&self) -> String {
        if self.options.tls {
            format!("{TLS_NAME}:{}", self.port)
        } else {
            format!("127.0.0.1:{}", self.port)
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The registry process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `(user, password)` for the auth variants.
    pub fn credentials(&self) -> Option<(&'static str, &'static str)> {
        match self.options.auth {
            RegistryAuth::None => None,
            _ => Some((USERNAME, PASSWORD)),
        }
    }

    /// The CA certificate (PEM) that signed the TLS certificate.
    pub fn ca_pem(&self) -> Option<&Path> {
        self.ca_pem.as_deref()
    }

    /// The token server of the token variant.
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token_server.as_ref()
    }

    /// The registry's storage root.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    fn v2(&self) -> PathBuf {
        self.storage_dir().join("docker/registry/v2")
    }

    /// How many blobs the registry stores.
    pub fn blob_count(&self) -> usize {
        let root = self.v2().join("blobs/sha256");
        let Ok(prefixes) = std::fs::read_dir(root) else {
            return 0;
        };
        prefixes
            .flatten()
            .filter_map(|p| std::fs::read_dir(p.path()).ok())
            .map(|d| {
                d.flatten()
                    .filter(|b| b.path().join("data").is_file())
                    .count()
            })
            .sum()
    }

    /// The tags a repository has in storage.
    pub fn tags(&self, repository: &str) -> Vec<String> {
        let dir = self
            .v2()
            .join("repositories")
            .join(repository)
            .join("_manifests/tags");
        let mut tags: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        tags.sort();
        tags
    }

    /// How many manifest revisions a repository holds.
    pub fn manifest_count(&self, repository: &str) -> usize {
        let dir = self
            .v2()
            .join("repositories")
            .join(repository)
            .join("_manifests/revisions/sha256");
        std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }

    /// Upload sessions still open in a repository (a finished or cancelled
    /// upload leaves none). A live session has a `startedat` file; a
    /// cancelled one may leave an empty `hashstates` directory behind
    /// (distribution 2.8), which does not count.
    pub fn open_uploads(&self, repository: &str) -> usize {
        let dir = self
            .v2()
            .join("repositories")
            .join(repository)
            .join("_uploads");
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().join("startedat").is_file())
                    .count()
            })
            .unwrap_or(0)
    }

    /// Whether a repository links a blob (so a HEAD there finds it).
    pub fn repository_has_blob(&self, repository: &str, digest_hex: &str) -> bool {
        self.v2()
            .join("repositories")
            .join(repository)
            .join("_layers/sha256")
            .join(digest_hex)
            .join("link")
            .is_file()
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_registry(config: &Path, log_path: &Path) -> Result<Child> {
    let log = std::fs::File::create(log_path)?;
    let mut cmd = Command::new(REGISTRY_BINARY);
    cmd.arg("serve")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {REGISTRY_BINARY}"))
}

/// Waits until the registry answers `GET /v2/` (any status) on `port`.
fn wait_ready(child: &mut Child, port: u16, tls: bool, log_path: &Path) -> Result<()> {
    let log = || std::fs::read_to_string(log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "docker-registry exited with {status} before answering; its log:\n{}",
                log()
            );
        }
        if answers(port, tls) {
            // Make sure it is ours that answered, not a squatter on the port.
            std::thread::sleep(Duration::from_millis(20));
            if let Some(status) = child.try_wait()? {
                bail!("docker-registry exited with {status}; its log:\n{}", log());
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "docker-registry did not answer GET /v2/ on port {port} within 15 s; its log:\n{}",
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn answers(port: u16, tls: bool) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    if tls {
        // The listener is up; the TLS stack answers once it accepts.
        return true;
    }
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    if conn
        .write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    conn.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Fails with an install hint when a binary is missing.
pub fn require_binary(name_or_path: &str, apt_package: &str) -> Result<PathBuf> {
    let found = if name_or_path.contains('/') {
        Some(PathBuf::from(name_or_path)).filter(|p| p.is_file())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name_or_path))
                .find(|p| p.is_file())
        })
    };
    found.with_context(|| {
        format!(
            "`{name_or_path}` is not installed; install it with `apt-get install -y {apt_package}`"
        )
    })
}

/// Runs a tool, failing with its stderr (and an install hint if missing).
pub fn run_tool(tool: &str, apt_package: &str, args: &[&str]) -> Result<String> {
    let path = require_binary(tool, apt_package)?;
    let out = Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!(
            "{tool} {} failed with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A CA and a leaf for `localhost`, `127.0.0.1` and [`TLS_NAME`], signed
/// by it (rustls rejects a self-signed leaf used as its own CA).
fn generate_tls(dir: &Path) -> Result<TlsFiles> {
    let p = |name: &str| dir.join(name);
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let (ca_key, ca, key, csr, cert, ext) = (
        p("ca.key"),
        p("ca.pem"),
        p("registry.key"),
        p("registry.csr"),
        p("registry.pem"),
        p("registry.ext"),
    );
    run_tool(
        "openssl",
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &s(&ca_key),
            "-out",
            &s(&ca),
            "-days",
            "2",
            "-subj",
            "/CN=ftl test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )?;
    run_tool(
        "openssl",
        "openssl",
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &s(&key),
            "-out",
            &s(&csr),
            "-subj",
            "/CN=localhost",
        ],
    )?;
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,DNS:{TLS_NAME},IP:127.0.0.1\n"
        ),
    )?;
    run_tool(
        "openssl",
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&ca),
            "-CAkey",
            &s(&ca_key),
            "-CAcreateserial",
            "-out",
            &s(&cert),
            "-days",
            "2",
            "-extfile",
            &s(&ext),
        ],
    )?;
    Ok(TlsFiles { ca, cert, key })
}
