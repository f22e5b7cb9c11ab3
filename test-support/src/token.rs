//! A small token server for distribution's `auth: token:` scheme: it checks
//! basic credentials, grants every requested scope to the known user (none
//! to anonymous callers), and signs ES256 JWTs whose `x5c` header carries a
//! self-signed certificate that the registry trusts through its
//! `rootcertbundle`. It counts requests and records the scopes asked for.
//! `POST /token` with `grant_type=refresh_token` (docker's identity tokens)
//! accepts the password as the refresh token.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use crate::registry::run_tool;

/// What the token server signs and accepts.
#[derive(Clone, Debug)]
pub struct TokenServerConfig {
    /// The `service` (the registry's name; the token's audience).
    pub service: String,
    /// The `iss` claim.
    pub issuer: String,
    /// The only user.
    pub username: String,
    /// Their password.
    pub password: String,
    /// Token lifetime in seconds (`expires_in`).
    pub ttl_secs: u64,
}

struct Shared {
    config: TokenServerConfig,
    key: EcdsaKeyPair,
    cert_der_b64: String,
    requests: AtomicU64,
    scopes: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// A running token server on a loopback port. Stops on drop.
pub struct TokenServer {
    shared: Arc<Shared>,
    port: u16,
    cert_pem: PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Generates a signing key and certificate in `dir` (with `openssl`) and
    /// starts serving `GET /token`.
    pub fn start(dir: &Path, config: TokenServerConfig) -> Result<Self> {
        let key_pem = dir.join("token-key.pem");
        let key_der = dir.join("token-key.der");
        let cert_pem = dir.join("token-cert.pem");
        let cert_der = dir.join("token-cert.der");
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
                path_str(&key_pem)?,
                "-out",
                path_str(&cert_pem)?,
                "-days",
                "2",
                "-subj",
                "/CN=ftl-test-token-signer",
            ],
        )?;
        run_tool(
            "openssl",
            "openssl",
            &[
                "pkcs8",
                "-topk8",
                "-nocrypt",
                "-in",
                path_str(&key_pem)?,
                "-outform",
                "DER",
                "-out",
                path_str(&key_der)?,
            ],
        )?;
        run_tool(
            "openssl",
            "openssl",
            &[
                "x509",
                "-in",
                path_str(&cert_pem)?,
                "-outform",
                "DER",
                "-out",
                path_str(&cert_der)?,
            ],
        )?;
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &std::fs::read(&key_der).context("reading the token signing key")?,
            &rng,
        )
        .map_err(|e| anyhow::anyhow!("the token signing key is not a P-256 PKCS#8 key: {e}"))?;
        let cert_der_b64 = base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(&cert_der).context("reading the token certificate")?);
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the token server")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            config,
            key,
            cert_der_b64,
            requests: AtomicU64::new(0),
            scopes: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ftl-token-server".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let s = s.clone();
                    std::thread::spawn(move || {
                        if let Err(e) = handle(&s, conn) {
                            tracing::debug!(error = %e, "token server connection failed");
                        }
                    });
                }
            })?;
        Ok(Self {
            shared,
            port,
            cert_pem,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:<port>/token`.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The certificate the registry must trust (`rootcertbundle`).
    pub fn cert_bundle(&self) -> &Path {
        &self.cert_pem
    }

    /// Token requests served so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Every `scope` parameter received, in order.
    pub fn scopes_requested(&self) -> Vec<String> {
        self.shared
            .scopes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The configuration.
    pub fn config(&self) -> &TokenServerConfig {
        &self.shared.config
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("temporary paths are utf-8")
}

fn handle(s: &Shared, conn: TcpStream) -> Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "authorization" => authorization = Some(value.trim().to_owned()),
                "content-length" => content_length = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0; content_length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    s.requests.fetch_add(1, Ordering::SeqCst);
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/token" {
        return respond(conn, 404, r#"{"error":"not found"}"#);
    }
    let params: Vec<(String, String)> = if method == "POST" {
        url::form_urlencoded::parse(&body).into_owned().collect()
    } else {
        url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    };
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .filter(|v| !v.is_empty())
        .collect();
    s.scopes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(scopes.iter().cloned());
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    // OAuth2 (docker's identity tokens): the refresh token is the password.
    if method == "POST" && param("grant_type") == Some("refresh_token") {
        if param("refresh_token") != Some(s.config.password.as_str()) {
            return respond(conn, 401, r#"{"error":"invalid_grant"}"#);
        }
        authorization = Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", s.config.username, s.config.password))
        ));
    }
    let user = match authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
    {
        Some(b64) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .unwrap_or_default();
            let expected = format!("{}:{}", s.config.username, s.config.password);
            if decoded != expected {
                return respond(
                    conn,
                    401,
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"invalid username or password"}]}"#,
                );
            }
            Some(s.config.username.clone())
        }
        None => None,
    };
    let access: Vec<serde_json::Value> = if user.is_some() {
        scopes
            .iter()
            .filter_map(|scope| {
                let (kind, rest) = scope.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(serde_json::json!({
                    "type": kind,
                    "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect()
    } else {
        Vec::new()
    };
    let token = sign(s, user.as_deref().unwrap_or(""), access)?;
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": s.config.ttl_secs,
    });
    respond(conn, 200, &body.to_string())
}

fn sign(s: &Shared, subject: &str, access: Vec<serde_json::Value>) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [s.cert_der_b64]});
    let claims = serde_json::json!({
        "iss": s.config.issuer,
        "sub": subject,
        "aud": s.config.service,
        "exp": now + s.config.ttl_secs,
        "nbf": now.saturating_sub(10),
        "iat": now,
        "jti": format!("{now}-{}", s.requests.load(Ordering::SeqCst)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let rng = ring::rand::SystemRandom::new();
    let sig = s
        .key
        .sign(&rng, signing_input.as_bytes())
        .map_err(|_| anyhow::anyhow!("signing the token failed"))?;
    Ok(format!("{signing_input}.{}", b64(sig.as_ref())))
}

fn respond(mut conn: TcpStream, status: u16, body: &str) -> Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Error",
    };
    let extra = if status == 401 {
        "WWW-Authenticate: Basic realm=\"ftl-test-token\"\r\n"
    } else {
        ""
    };
    write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()?;
    if status >= 400 && status != 401 && status != 404 {
        bail!("token server answered {status}");
    }
    Ok(())
}
