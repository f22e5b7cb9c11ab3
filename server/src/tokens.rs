//! Bearer tokens and what each may do: the token file (TOML), matching a
//! request's token, and the repository prefixes a token's builds may push
//! to, cache in and pull from.
//!
//! ```toml
//! [[token]]
//! name = "team-a"                     # recorded as each build's owner
//! token_sha256 = "9f86d081884c7d65…"  # or: token = "the secret itself"
//! image = ["registry.example/team-a/"]
//! cache_repo = ["registry.example/team-a/"]   # default: as `image`
//! base = ["registry.example/base/", "docker.io/library/"]
//! ```
//!
//! A prefix is a registry host and repository path components, matched
//! component by component: `registry.example/team/` matches
//! `registry.example/team/app` but not `registry.example/teamevil/app`.
//! `"*"` matches any repository on any registry.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ftl_registry_client::{Reference, DOCKER_HUB};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("the token file {}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct TokenFileError {
    pub path: PathBuf,
    /// 1-based, when the problem has a place.
    pub line: Option<usize>,
    pub message: String,
}

/// A build option naming a repository its token may not use.
#[derive(Debug, thiserror::Error)]
#[error("option `{option}`: {repository} is outside the repositories the token `{token}` may use for `{scope}` ({allowed})")]
pub struct ScopeError {
    /// The option as the client sent it (`image`, `cache_repo`, `base`,
    /// `settings.java.builder`); `cache_repo` also when it was the default.
    pub option: String,
    /// `registry/repository`.
    pub repository: String,
    pub token: String,
    /// Which of the token's prefix lists applies.
    pub scope: &'static str,
    pub allowed: String,
}

/// A repository prefix: a registry and leading path components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prefix {
    /// `*`: anything.
    Any,
    Repo {
        registry: String,
        path: Vec<String>,
    },
}

impl Prefix {
    /// Parses `registry[:port][/path/...][/]`; the registry always comes
    /// first (`docker.io/library/` for Docker Hub's official images).
    pub fn parse(text: &str) -> Result<Prefix, String> {
        let t = text.trim();
        if t == "*" {
            return Ok(Prefix::Any);
        }
        let mut parts = t.trim_end_matches('/').split('/');
        let registry = parts.next().unwrap_or_default().to_ascii_lowercase();
        if registry.is_empty()
            || !(registry.contains('.') || registry.contains(':') || registry == "localhost")
        {
            return Err(format!(
                "prefix {text:?} does not start with a registry host (e.g. `registry.example/team/`, `docker.io/library/`)"
            ));
        }
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        let path: Vec<String> = parts.map(str::to_string).collect();
        if path.iter().any(|p| p.is_empty() || p.contains(['@', ':'])) {
            return Err(format!(
                "prefix {text:?} is not a registry and repository path (no tag, digest or empty component)"
            ));
        }
        Ok(Prefix::Repo { registry, path })
    }

    /// Whether the repository of `r` is under this prefix.
    pub fn matches(&self, r: &Reference) -> bool {
        match self {
            Prefix::Any => true,
            Prefix::Repo { registry, path } => {
                let repo: Vec<&str> = r.repository().split('/').collect();
                r.registry().eq_ignore_ascii_case(registry)
                    && repo.len() >= path.len()
                    && path.iter().zip(&repo).all(|(p, c)| p == c)
            }
        }
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prefix::Any => f.write_str("*"),
            Prefix::Repo { registry, path } if path.is_empty() => write!(f, "{registry}/"),
            Prefix::Repo { registry, path } => write!(f, "{registry}/{}/", path.join("/")),
        }
    }
}

/// What one token's builds may name.
#[derive(Debug, Clone)]
pub struct Scopes {
    pub image: Vec<Prefix>,
    pub cache_repo: Vec<Prefix>,
    pub base: Vec<Prefix>,
}

/// One accepted token.
#[derive(Clone)]
pub struct Token {
    /// Its name: the owner recorded with each build, and the build's
    /// package-cache scope.
    pub name: String,
    sha256: [u8; 32],
    pub scopes: Scopes,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the hash: it would let a reader of a debug log guess a weak
        // secret offline.
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Checks the repositories a build names, each against its list:
    /// `(option, scope, reference)` with scope one of `image`,
    /// `cache_repo`, `base`.
    pub fn check<'a>(
        &self,
        uses: impl IntoIterator<Item = (String, &'static str, &'a Reference)>,
    ) -> Result<(), ScopeError> {
        for (option, scope, r) in uses {
            let list = match scope {
                "image" => &self.scopes.image,
                "cache_repo" => &self.scopes.cache_repo,
                _ => &self.scopes.base,
            };
            if !list.iter().any(|p| p.matches(r)) {
                let allowed = if list.is_empty() {
                    "none".to_string()
                } else {
                    list.iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(ScopeError {
                    option,
                    repository: format!("{}/{}", r.registry(), r.repository()),
                    token: self.name.clone(),
                    scope,
                    allowed,
                });
            }
        }
        Ok(())
    }
}

/// The accepted tokens.
#[derive(Debug, Clone)]
pub struct Tokens {
    tokens: Vec<Arc<Token>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    token: Vec<Spanned<EntryDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryDoc {
    name: Spanned<String>,
    #[serde(default)]
    token: Option<Spanned<String>>,
    #[serde(default)]
    token_sha256: Option<Spanned<String>>,
    image: Vec<Spanned<String>>,
    #[serde(default)]
    cache_repo: Option<Vec<Spanned<String>>>,
    base: Vec<Spanned<String>>,
}

/// The shortest plain token accepted: anything shorter can be guessed.
const MIN_TOKEN_LEN: usize = 16;

fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// Whether `text` looks like the old format: bare tokens, one per line.
fn is_old_format(text: &str) -> bool {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    !lines.is_empty() && lines.iter().all(|l| !l.contains(['=', '[', ' ']))
}

impl Tokens {
    /// Reads and checks a token file.
    pub fn read(path: &Path) -> Result<Tokens, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| TokenFileError {
            path: path.to_path_buf(),
            line: None,
            message: e.to_string(),
        })?;
        Tokens::parse(path, &text)
    }

    /// Parses the text of the token file at `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Tokens, TokenFileError> {
        let err = |at: Option<usize>, message: String| TokenFileError {
            path: path.to_path_buf(),
            line: at.map(|a| line_of(text, a)),
            message,
        };
        if is_old_format(text) {
            return Err(err(
                None,
                "is in the old format (bare tokens, one per line, each allowed everything); \
                 write a [[token]] table per token with its name and the repositories it may use \
                 (see server/README.md, \"Token file\")"
                    .into(),
            ));
        }
        let doc: FileDoc = toml::from_str(text)
            .map_err(|e| err(e.span().map(|s| s.start), e.message().trim().to_string()))?;
        let mut tokens: Vec<Arc<Token>> = Vec::new();
        for entry in doc.token {
            let at = entry.span().start;
            let entry = entry.into_inner();
            let name_at = entry.name.span().start;
            let name = entry.name.into_inner();
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                || name.starts_with('.')
            {
                return Err(err(
                    Some(name_at),
                    format!("token name {name:?} is not 1 to 64 of [A-Za-z0-9._-] (not starting with '.')"),
                ));
            }
            if tokens.iter().any(|t| t.name == name) {
                return Err(err(
                    Some(name_at),
                    format!("token name {name:?} is used twice"),
                ));
            }
            let sha256 = match (entry.token, entry.token_sha256) {
                (Some(t), None) => {
                    if t.get_ref().len() < MIN_TOKEN_LEN {
                        return Err(err(
                            Some(t.span().start),
                            format!("token `{name}` is shorter than {MIN_TOKEN_LEN} characters"),
                        ));
                    }
                    Sha256::digest(t.get_ref().as_bytes()).into()
                }
                (None, Some(h)) => {
                    let mut out = [0u8; 32];
                    hex::decode_to_slice(h.get_ref().trim(), &mut out).map_err(|_| {
                        err(
                            Some(h.span().start),
                            format!("token `{name}`: token_sha256 is not 64 hex digits"),
                        )
                    })?;
                    out
                }
                _ => {
                    return Err(err(
                        Some(at),
                        format!("token `{name}` needs exactly one of `token` and `token_sha256`"),
                    ))
                }
            };
            if tokens.iter().any(|t| t.sha256 == sha256) {
                return Err(err(
                    Some(name_at),
                    format!("token `{name}` has the same secret as another token"),
                ));
            }
            let prefixes = |list: Vec<Spanned<String>>| -> Result<Vec<Prefix>, TokenFileError> {
                list.into_iter()
                    .map(|p| {
                        Prefix::parse(p.get_ref())
                            .map_err(|m| err(Some(p.span().start), format!("token `{name}`: {m}")))
                    })
                    .collect()
            };
            let image = prefixes(entry.image)?;
            let cache_repo = match entry.cache_repo {
                Some(l) => prefixes(l)?,
                None => image.clone(),
            };
            let base = prefixes(entry.base)?;
            tokens.push(Arc::new(Token {
                name,
                sha256,
                scopes: Scopes {
                    image,
                    cache_repo,
                    base,
                },
            }));
        }
        if tokens.is_empty() {
            return Err(err(None, "has no [[token]]".into()));
        }
        Ok(Tokens { tokens })
    }

    /// The token whose secret is `given`. Every token is compared, in
    /// constant time, whatever matches.
    pub fn find(&self, given: &str) -> Option<&Arc<Token>> {
        let h: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        let mut found = None;
        for t in &self.tokens {
            if constant_time_eq(&t.sha256, &h) {
                found = Some(t);
            }
        }
        found
    }

    /// The token named `name`.
    pub fn named(&self, name: &str) -> Option<&Arc<Token>> {
        self.tokens.iter().find(|t| t.name == name)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    fn p(s: &str) -> Prefix {
        Prefix::parse(s).unwrap()
    }

    #[test]
    fn prefixes_match_whole_components() {
        let team = p("registry.example/team/");
        assert!(team.matches(&r("registry.example/team/app:v1")));
        assert!(team.matches(&r("registry.example/team/sub/app@sha256:0000000000000000000000000000000000000000000000000000000000000000")));
        assert!(team.matches(&r("registry.example/team")));
        assert!(!team.matches(&r("registry.example/teamevil/app")));
        assert!(!team.matches(&r("registry.example/other/team/app")));
        assert!(!team.matches(&r("registry.example.evil/team/app")));
        assert!(!team.matches(&r("registry.example:5000/team/app")));
        // The same without the trailing slash, and the host's case.
        assert_eq!(p("Registry.Example/team"), team);
        let host = p("127.0.0.1:5000/");
        assert!(host.matches(&r("127.0.0.1:5000/any/thing")));
        assert!(!host.matches(&r("127.0.0.1:5001/any/thing")));
        // Docker Hub, as references normalize it.
        let hub = p("docker.io/library/");
        assert!(hub.matches(&r("python:3.11")));
        assert!(p("index.docker.io/library").matches(&r("python")));
        assert!(!hub.matches(&r("someone/python")));
        assert!(p("*").matches(&r("anything.example/x")));
        for bad in [
            "team/",
            "",
            "registry.example//x",
            "registry.example/app:v1",
        ] {
            assert!(Prefix::parse(bad).is_err(), "{bad:?}");
        }
    }

    const FILE: &str = r#"
# two teams
[[token]]
name = "team-a"
token = "secret-of-team-a-0123"
image = ["registry.example/team-a/"]
base = ["registry.example/base/"]

[[token]]
name = "team-b"
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
image = ["registry.example/team-b/"]
cache_repo = ["registry.example/caches/team-b/"]
base = ["*"]
"#;

    #[test]
    fn a_token_file_names_tokens_and_their_prefixes() {
        let t = Tokens::parse(Path::new("tokens.toml"), FILE).unwrap();
        let a = t.find("secret-of-team-a-0123").unwrap();
        assert_eq!(a.name, "team-a");
        assert_eq!(
            a.scopes.cache_repo, a.scopes.image,
            "cache_repo defaults to image"
        );
        // sha256("test")
        assert_eq!(t.find("test").unwrap().name, "team-b");
        assert!(t.find("secret-of-team-a-012").is_none());
        assert!(t.find("").is_none());

        let img = r("registry.example/team-a/app:v1");
        let cache = r("registry.example/team-a/app/ftl-cache");
        let base = r("registry.example/base/python");
        a.check([
            ("image".to_string(), "image", &img),
            ("cache_repo".to_string(), "cache_repo", &cache),
            ("base".to_string(), "base", &base),
        ])
        .unwrap();
        let evil = r("registry.example/team-aevil/app:v1");
        let e = a
            .check([("image".to_string(), "image", &evil)])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "option `image`: registry.example/team-aevil/app is outside the repositories the token `team-a` may use for `image` (registry.example/team-a/)"
        );
        let b = t.named("team-b").unwrap();
        let e = b
            .check([(
                "cache_repo".to_string(),
                "cache_repo",
                &r("registry.example/team-b/app/ftl-cache"),
            )])
            .unwrap_err();
        assert_eq!(e.option, "cache_repo");
    }

    #[test]
    fn token_file_mistakes_name_the_file_and_line() {
        let path = Path::new("/etc/ftl/tokens.toml");
        let cases = [
            (
                "[[token]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nimage = []\nbase = []\ncolour = \"red\"\n",
                "the token file /etc/ftl/tokens.toml:6: unknown field `colour`",
            ),
            (
                "[[token]]\nname = \"a\"\nimage = []\nbase = []\n",
                "the token file /etc/ftl/tokens.toml:1: token `a` needs exactly one of `token` and `token_sha256`",
            ),
            (
                "[[token]]\nname = \"a\"\ntoken = \"short\"\nimage = []\nbase = []\n",
                "the token file /etc/ftl/tokens.toml:3: token `a` is shorter than 16 characters",
            ),
            (
                "[[token]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nimage = [\"team/\"]\nbase = []\n",
                "the token file /etc/ftl/tokens.toml:4: token `a`: prefix \"team/\" does not start with a registry host",
            ),
            (
                "[[token]]\nname = \"a/b\"\ntoken = \"0123456789abcdef\"\nimage = []\nbase = []\n",
                "the token file /etc/ftl/tokens.toml:2: token name \"a/b\" is not",
            ),
            ("# nothing\n", "the token file /etc/ftl/tokens.toml: has no [[token]]"),
            (
                "# the old format\nsecret-token-one-0123\nsecret-token-two-4567\n",
                "the token file /etc/ftl/tokens.toml: is in the old format",
            ),
        ];
        for (text, want) in cases {
            let e = Tokens::parse(path, text).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e:?} should start with {want:?}");
        }
    }
}
