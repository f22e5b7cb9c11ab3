//! The app's `.npmrc`: settings that change resolution go into the key in
//! clear; credentials are hashed there and reach the install only as a
//! read-only file mount.

use std::collections::BTreeMap;

use ftl::sha256_tagged;
use serde_json::{json, Value};

/// A parsed `.npmrc`.
#[derive(Clone, PartialEq, Eq)]
pub struct Npmrc {
    /// The file as npm will read it (`${VAR}` references expanded from
    /// ftl's environment). Secret: never logged, never in a layer.
    text: String,
    /// (key, value) in order.
    entries: Vec<(String, String)>,
}

impl std::fmt::Debug for Npmrc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the credentials.
        f.debug_struct("Npmrc")
            .field("key_doc", &self.key_doc())
            .finish()
    }
}

/// Whether a setting holds a credential.
pub fn is_secret(key: &str) -> bool {
    let last = key.rsplit(':').next().unwrap_or(key).trim();
    let last = last.to_ascii_lowercase();
    last.starts_with('_')
        || matches!(
            last.as_str(),
            "password"
                | "username"
                | "email"
                | "token"
                | "authtoken"
                | "cert"
                | "key"
                | "certfile"
                | "keyfile"
        )
}

/// Expands `${NAME}` (npm's syntax) with `lookup`; unknown names are left
/// as written (npm then reports them).
pub fn expand_env(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find('}') {
            Some(j) if i == 0 || !rest[..i].ends_with('\\') => {
                let name = &after[..j];
                match lookup(name) {
                    Some(v) => out.push_str(&v),
                    None => out.push_str(&rest[i..i + 3 + j]),
                }
                rest = &after[j + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

impl Npmrc {
    /// Parses `text` (ini: `key = value`, `;` and `#` comments), expanding
    /// `${VAR}` with `lookup`.
    pub fn parse(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Npmrc {
        let text = expand_env(text, lookup);
        let mut entries = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                entries.push((line.to_string(), "true".to_string()));
                continue;
            };
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            entries.push((k.trim().to_string(), v.to_string()));
        }
        Npmrc { text, entries }
    }

    /// The file's text, for the install step's secret mount only.
    pub fn secret_text(&self) -> &str {
        &self.text
    }

    /// Whether any setting is a credential.
    pub fn has_secrets(&self) -> bool {
        self.entries.iter().any(|(k, _)| is_secret(k))
    }

    /// The settings as they go into a key: plain values in clear, secrets
    /// as their sha256 (a changed token still changes the key).
    pub fn key_doc(&self) -> Value {
        let mut m: BTreeMap<String, Value> = BTreeMap::new();
        for (k, v) in &self.entries {
            let value = if is_secret(k) {
                json!({"sha256": sha256_tagged(v.as_bytes())})
            } else {
                Value::String(v.clone())
            };
            m.insert(k.clone(), value);
        }
        json!(m)
    }

    /// Registries named (the default one and scoped ones), for messages.
    pub fn registry(&self) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == "registry")
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_hashed() {
        let rc = Npmrc::parse(
            "; comment\nregistry=https://registry.npmjs.org/\n@acme:registry=https://npm.acme.test/\n//npm.acme.test/:_authToken=${TOKEN}\nlegacy-peer-deps = true\n",
            &|n| (n == "TOKEN").then(|| "tok-SECRET-123".to_string()),
        );
        let doc = rc.key_doc().to_string();
        assert!(!doc.contains("tok-SECRET-123"), "{doc}");
        assert!(doc.contains("legacy-peer-deps"));
        assert!(doc.contains("https://npm.acme.test/"));
        assert!(rc.secret_text().contains("tok-SECRET-123"));
        assert!(!format!("{rc:?}").contains("tok-SECRET-123"));
        assert!(rc.has_secrets());
        assert_eq!(rc.registry(), Some("https://registry.npmjs.org/"));
        let other = Npmrc::parse("//npm.acme.test/:_authToken=other\n", &|_| None);
        assert_ne!(
            other.key_doc(),
            Npmrc::parse("//npm.acme.test/:_authToken=x\n", &|_| None).key_doc()
        );
    }

    #[test]
    fn expansion() {
        assert_eq!(
            expand_env("a=${X}b ${Y}", &|n| (n == "X").then(|| "1".into())),
            "a=1b ${Y}"
        );
        assert_eq!(expand_env("no refs", &|_| None), "no refs");
        assert!(is_secret("//host/:_password"));
        assert!(is_secret("_auth"));
        assert!(!is_secret("registry"));
        assert!(!is_secret("@x:registry"));
    }
}
