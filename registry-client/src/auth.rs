//! Authentication: challenges, the docker config, token fetching and caching.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

use crate::error::Error;
use crate::reference::{DOCKER_HUB, DOCKER_HUB_API};
use crate::secret::{Credential, Secret};

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl Challenge {
    /// Parses `Bearer realm="...",service="...",scope="..."` or `Basic realm=...`.
    pub(crate) fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        let realm = params.get("realm")?.clone();
        Some(Challenge::Bearer {
            realm,
            service: params.get("service").cloned(),
        })
    }
}

fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(q) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &q[end.min(q.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        out.insert(key, value);
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// A cached bearer token.
#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub(crate) value: Secret,
    pub(crate) expires: Instant,
}

/// Per (registry, scope) token slots; each slot has its own async lock so
/// concurrent requests for the same scope fetch once.
pub(crate) type TokenSlot = Arc<tokio::sync::Mutex<Option<Token>>>;

#[derive(Default)]
pub(crate) struct TokenCache {
    slots: Mutex<HashMap<(String, String), TokenSlot>>,
}

impl TokenCache {
    pub(crate) fn slot(&self, registry: &str, scope: &str) -> TokenSlot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .entry((registry.to_owned(), scope.to_owned()))
            .or_default()
            .clone()
    }
}

#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub(crate) token: Option<String>,
    #[serde(default)]
    pub(crate) access_token: Option<String>,
    #[serde(default)]
    pub(crate) expires_in: Option<u64>,
}

impl TokenResponse {
    pub(crate) fn into_token(self) -> Option<Token> {
        let value = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        // The spec's default lifetime is 60 s. Refresh a little early (5 s,
        // or half the lifetime of very short tokens).
        let life = Duration::from_secs(self.expires_in.unwrap_or(60));
        let margin = (life / 2).min(Duration::from_secs(5));
        Some(Token {
            value: Secret::new(value),
            expires: Instant::now() + life - margin,
        })
    }
}

/// Where credentials come from: explicit settings first, then the docker
/// config directory (`auths`, `credHelpers`, `credsStore`).
pub(crate) struct CredentialStore {
    explicit: HashMap<String, Credential>,
    config_dir: Option<PathBuf>,
    resolved: tokio::sync::Mutex<HashMap<String, Credential>>,
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// The names docker uses for a registry in config files.
fn aliases(registry: &str) -> Vec<String> {
    if registry == DOCKER_HUB || registry == DOCKER_HUB_API || registry == "index.docker.io" {
        vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            DOCKER_HUB.into(),
            DOCKER_HUB_API.into(),
        ]
    } else {
        vec![registry.to_owned()]
    }
}

/// `https://host:port/v1/` -> `host:port`.
fn normalize_key(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

impl CredentialStore {
    pub(crate) fn new(explicit: HashMap<String, Credential>, config_dir: Option<PathBuf>) -> Self {
        Self {
            explicit,
            config_dir,
            resolved: Default::default(),
        }
    }

    /// The credential for `registry` (as in the reference, e.g. `docker.io`).
    pub(crate) async fn get(&self, registry: &str) -> Result<Credential, Error> {
        let names = aliases(registry);
        for n in &names {
            if let Some(c) = self.explicit.get(n) {
                return Ok(c.clone());
            }
        }
        let mut resolved = self.resolved.lock().await;
        if let Some(c) = resolved.get(registry) {
            return Ok(c.clone());
        }
        let cred = match &self.config_dir {
            Some(dir) => from_docker_config(&dir.join("config.json"), registry, &names).await?,
            None => Credential::Anonymous,
        };
        resolved.insert(registry.to_owned(), cred.clone());
        Ok(cred)
    }
}

async fn from_docker_config(
    path: &Path,
    registry: &str,
    names: &[String],
) -> Result<Credential, Error> {
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Credential::Anonymous),
        Err(e) => {
            return Err(Error::DockerConfig {
                path: path.to_owned(),
                source: Box::new(e),
            })
        }
    };
    let config: DockerConfig = serde_json::from_slice(&bytes).map_err(|e| Error::DockerConfig {
        path: path.to_owned(),
        source: Box::new(e),
    })?;
    let hub = registry == DOCKER_HUB;
    let server_url = if hub {
        "https://index.docker.io/v1/".to_owned()
    } else {
        registry.to_owned()
    };
    // credHelpers for this registry win.
    for (key, helper) in &config.cred_helpers {
        if names.iter().any(|n| normalize_key(n) == normalize_key(key)) {
            return run_helper(helper, &server_url, registry).await;
        }
    }
    // auths entries with inline credentials.
    for (key, entry) in &config.auths {
        if !names.iter().any(|n| normalize_key(n) == normalize_key(key)) {
            continue;
        }
        if let Some(token) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
            return Ok(Credential::IdentityToken(Secret::new(token)));
        }
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())));
            let Some((user, pass)) = decoded else {
                return Err(Error::DockerConfig {
                    path: path.to_owned(),
                    source: format!("the auth entry for {key} is not base64 of user:password")
                        .into(),
                });
            };
            return Ok(Credential::basic(user, pass));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Credential::basic(u.clone(), p.clone()));
        }
    }
    if let Some(store) = config.creds_store.as_deref().filter(|s| !s.is_empty()) {
        return run_helper(store, &server_url, registry).await;
    }
    Ok(Credential::Anonymous)
}

/// Runs `docker-credential-<helper> get` with the server URL on stdin.
async fn run_helper(helper: &str, server_url: &str, registry: &str) -> Result<Credential, Error> {
    use tokio::io::AsyncWriteExt;
    let fail = |message: String| Error::CredentialHelper {
        helper: helper.to_owned(),
        registry: registry.to_owned(),
        message,
    };
    let mut child = tokio::process::Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("could not start it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server_url.as_bytes())
            .await
            .map_err(|e| fail(format!("could not write to it: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| fail(format!("could not wait for it: {e}")))?;
    if !out.status.success() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        if stdout.contains("credentials not found") {
            return Ok(Credential::Anonymous);
        }
        return Err(fail(format!("it exited with {}", out.status)));
    }
    let parsed: HelperOutput = serde_json::from_slice(&out.stdout)
        .map_err(|e| fail(format!("its output is not the helper protocol's json: {e}")))?;
    tracing::debug!(helper, registry, "credentials from helper");
    if parsed.username == "<token>" {
        Ok(Credential::IdentityToken(Secret::new(parsed.secret)))
    } else {
        Ok(Credential::basic(parsed.username, parsed.secret))
    }
}

pub(crate) fn basic_header(username: &str, password: &Secret) -> String {
    let raw = format!("{username}:{}", password.expose());
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/a:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            }
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
        let p = parse_params(r#"realm="a\"b", error="insufficient_scope",scope="x:y:pull,push""#);
        assert_eq!(p["realm"], "a\"b");
        assert_eq!(p["scope"], "x:y:pull,push");
        assert_eq!(p["error"], "insufficient_scope");
    }

    #[tokio::test]
    async fn reads_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:s3cret");
        std::fs::write(
            dir.path().join("config.json"),
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"localhost:5000":{{"username":"u","password":"p"}},"tok.example":{{"identitytoken":"it"}}}},
                   "credHelpers":{{"helped.example":"ftl-test-missing-helper"}}}}"#
            ),
        )
        .unwrap();
        let store = CredentialStore::new(
            HashMap::from([("override.example".to_owned(), Credential::basic("o", "p"))]),
            Some(dir.path().to_owned()),
        );
        assert_eq!(
            store.get("docker.io").await.unwrap(),
            Credential::basic("bob", "s3cret")
        );
        assert_eq!(
            store.get("localhost:5000").await.unwrap(),
            Credential::basic("u", "p")
        );
        assert_eq!(
            store.get("tok.example").await.unwrap(),
            Credential::IdentityToken(Secret::new("it"))
        );
        assert_eq!(
            store.get("override.example").await.unwrap(),
            Credential::basic("o", "p")
        );
        assert_eq!(
            store.get("other.example").await.unwrap(),
            Credential::Anonymous
        );
        let err = store.get("helped.example").await.unwrap_err();
        assert!(
            err.to_string()
                .contains("docker-credential-ftl-test-missing-helper"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn credential_helper_protocol() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-ftltest");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread server\necho \"{\\\"ServerURL\\\":\\\"$server\\\",\\\"Username\\\":\\\"helped\\\",\\\"Secret\\\":\\\"pw-$server\\\"}\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The helper is found on PATH; prefix PATH for this process only.
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // Only this test changes PATH, and only by prepending a directory.
        std::env::set_var("PATH", &path);
        let dir2 = tempfile::tempdir().unwrap();
        std::fs::write(
            dir2.path().join("config.json"),
            r#"{"credsStore":"ftltest"}"#,
        )
        .unwrap();
        let store = CredentialStore::new(HashMap::new(), Some(dir2.path().to_owned()));
        let cred = store.get("registry.example:443").await.unwrap();
        assert_eq!(cred, Credential::basic("helped", "pw-registry.example:443"));
    }
}
