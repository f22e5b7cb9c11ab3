//! The build options a client sends with its source, as JSON, and their
//! translation into an engine [`BuildRequest`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ftl::engine::{BuildRequest, Output, VerifySpec};
use ftl::image::{ConfigOverrides, ManifestFormat};
use ftl::BuildOptions;
use ftl_registry_client::{Platform, Reference};
use serde::{Deserialize, Serialize};

/// A command: a shell-quoted string or an argv array.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
}

/// Verification: `true` for an HTTP check on `$PORT`, or details.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Verify {
    Http(bool),
    Details {
        /// Run this instead of waiting for HTTP; exit 0 passes.
        #[serde(default)]
        command: Option<Command>,
        /// Seconds; default 60.
        #[serde(default)]
        timeout_secs: Option<u64>,
        /// The path to GET; default `/`.
        #[serde(default)]
        path: Option<String>,
    },
}

/// The options of one build, as sent in the `Ftl-Options` header or the
/// `options` multipart part. Field names follow `ftl build`'s flags.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    /// Where to push the image (`registry/repo:tag`).
    pub image: String,
    /// The base image.
    pub base: String,
    /// `auto` (default), `python`, `node`, `java`, `generic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Command>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Command>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Plugin settings, e.g. `{"python.venv": "/opt/venv"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
    /// `oci` (default) or `docker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// `linux/amd64` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The registry cache repository (default `<image repo>/ftl-cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_repo: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_registry_cache: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
}

/// Options that do not make a build.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("the build options are not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("option `{field}`: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
}

fn field(field: &'static str, message: impl Into<String>) -> SpecError {
    SpecError::Field {
        field,
        message: message.into(),
    }
}

impl BuildSpec {
    pub fn parse(json: &[u8]) -> Result<BuildSpec, SpecError> {
        let spec: BuildSpec = serde_json::from_slice(json)?;
        // Check everything now, so that a bad option is a 400 at submit
        // time rather than a failed build later.
        spec.to_request(PathBuf::from("/nonexistent"))?;
        Ok(spec)
    }

    /// The image to push: `image`, tagged `latest` when it names no tag.
    fn target(&self) -> Result<Reference, SpecError> {
        let target = reference("image", &self.image)?;
        if target.tag().is_none() && target.digest().is_none() {
            target
                .with_tag("latest")
                .map_err(|e| field("image", e.to_string()))
        } else {
            Ok(target)
        }
    }

    /// The registry cache repository: `cache_repo`, by default
    /// `<image repo>/ftl-cache`; `None` with `no_registry_cache`.
    fn cache_repo(&self, target: &Reference) -> Result<Option<Reference>, SpecError> {
        if self.no_registry_cache {
            Ok(None)
        } else if let Some(repo) = &self.cache_repo {
            Ok(Some(reference("cache_repo", repo)?))
        } else {
            target
                .with_repository(&format!("{}/ftl-cache", target.repository()))
                .map(Some)
                .map_err(|e| field("image", e.to_string()))
        }
    }

    /// Every repository the build would use, as `(option, scope,
    /// reference)`: the image it pushes, the cache repository (the default
    /// one too), the base and builder images it pulls. A token's prefixes
    /// are checked against exactly these.
    pub fn repositories(&self) -> Result<Vec<(String, &'static str, Reference)>, SpecError> {
        let target = self.target()?;
        let mut out = vec![("base".to_string(), "base", reference("base", &self.base)?)];
        if let Some(cache) = self.cache_repo(&target)? {
            out.push(("cache_repo".to_string(), "cache_repo", cache));
        }
        out.insert(0, ("image".to_string(), "image", target));
        for (k, v) in &self.settings {
            if let Some(image) = builder_image(k, v)? {
                out.push((format!("settings.{k}"), "base", image));
            }
        }
        Ok(out)
    }

    /// The engine request for this spec with the source at `source`.
    pub fn to_request(&self, source: PathBuf) -> Result<BuildRequest, SpecError> {
        let target = self.target()?;
        let base = reference("base", &self.base)?;
        let cache_repo = self.cache_repo(&target)?;
        let platform = parse_platform(self.platform.as_deref().unwrap_or("linux/amd64"))?;
        let entrypoint = self
            .entrypoint
            .as_ref()
            .map(|c| argv("entrypoint", c))
            .transpose()?;
        let overrides = ConfigOverrides {
            entrypoint: entrypoint.clone(),
            cmd: self.cmd.as_ref().map(|c| argv("cmd", c)).transpose()?,
            env: self
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            workdir: None,
            user: self.user.clone(),
            ports: self.ports.clone(),
            labels: self.labels.clone(),
        };
        check_settings(&self.settings)?;
        let options = BuildOptions {
            app_dir: self.app_dir.clone().unwrap_or_else(|| "/srv".into()),
            entrypoint,
            settings: self.settings.clone(),
        };
        let format = match self.format.as_deref() {
            None | Some("oci") => ManifestFormat::Oci,
            Some("docker") => ManifestFormat::Docker,
            Some(other) => return Err(field("format", format!("{other:?} is not oci or docker"))),
        };
        let verify = match &self.verify {
            None | Some(Verify::Http(false)) => None,
            Some(Verify::Http(true)) => Some(VerifySpec {
                command: None,
                timeout: Duration::from_secs(60),
                path: "/".into(),
            }),
            Some(Verify::Details {
                command,
                timeout_secs,
                path,
            }) => Some(VerifySpec {
                command: command
                    .as_ref()
                    .map(|c| argv("verify.command", c))
                    .transpose()?,
                timeout: Duration::from_secs(timeout_secs.unwrap_or(60)),
                path: path.clone().unwrap_or_else(|| "/".into()),
            }),
        };
        Ok(BuildRequest {
            source,
            base,
            platform,
            output: Output::Registry(target),
            tags: Vec::new(),
            language: self.language.clone(),
            options,
            overrides,
            format,
            cache_repo,
            no_cache: self.no_cache,
            verify,
            cancel: Default::default(),
            cache_scope: None,
        })
    }
}

/// Plugin settings that would reach outside the upload on the server's
/// host: a settings file by host path, a step on the host's own root
/// filesystem. The CLI allows them (the user owns the machine); a service
/// taking source from clients does not.
fn check_settings(settings: &BTreeMap<String, String>) -> Result<(), SpecError> {
    for (k, v) in settings {
        let path_like =
            k.ends_with("_settings") || k.ends_with("_file") || k.ends_with(".settings");
        if path_like
            && (v.starts_with('/')
                || std::path::Path::new(v)
                    .components()
                    .any(|c| c == std::path::Component::ParentDir))
        {
            return Err(field(
                "settings",
                format!("`{k}` must be a path inside the upload, not {v:?}"),
            ));
        }
        if k.ends_with(".builder") && v == "host" {
            return Err(field(
                "settings",
                format!("`{k}=host` (a step on the server's own root filesystem) is not available through the service"),
            ));
        }
        builder_image(k, v)?;
    }
    Ok(())
}

/// A `*.builder` setting that names an image: pulled with the server's
/// credentials like a base, so it must parse here, and it is checked
/// against the token's `base` prefixes.
fn builder_image(key: &str, value: &str) -> Result<Option<Reference>, SpecError> {
    if !key.ends_with(".builder") || matches!(value, "base" | "host" | "") {
        return Ok(None);
    }
    Reference::parse(value)
        .map(Some)
        .map_err(|e| field("settings", format!("`{key}`: {value:?}: {e}")))
}

fn reference(name: &'static str, value: &str) -> Result<Reference, SpecError> {
    if value.is_empty() {
        return Err(field(name, "is required"));
    }
    Reference::parse(value).map_err(|e| field(name, format!("{value:?}: {e}")))
}

fn argv(name: &'static str, c: &Command) -> Result<Vec<String>, SpecError> {
    let words = match c {
        Command::Argv(v) => v.clone(),
        Command::Shell(s) => shell_words::split(s)
            .map_err(|_| field(name, format!("{s:?} has unbalanced quotes")))?,
    };
    if words.is_empty() {
        return Err(field(name, "is empty"));
    }
    Ok(words)
}

fn parse_platform(s: &str) -> Result<Platform, SpecError> {
    let parts: Vec<&str> = s.split('/').collect();
    if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(field(
            "platform",
            format!("{s:?} is not OS/ARCH[/VARIANT], e.g. linux/amd64"),
        ));
    }
    let mut p = ftl_registry_client::default_platform();
    p.set_os(parts[0].into());
    p.set_architecture(parts[1].into());
    if let Some(v) = parts.get(2) {
        p.set_variant(Some(v.to_string()));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_spec_defaults_like_the_cli() {
        let spec = BuildSpec::parse(
            br#"{"image":"127.0.0.1:5000/a/b","base":"127.0.0.1:5000/base/python"}"#,
        )
        .unwrap();
        let req = spec.to_request("/src".into()).unwrap();
        match &req.output {
            Output::Registry(r) => assert_eq!(r.tag(), Some("latest")),
            other => panic!("{other:?}"),
        }
        assert_eq!(req.cache_repo.unwrap().repository(), "a/b/ftl-cache");
        assert!(req.verify.is_none());
    }

    #[test]
    fn bad_options_name_the_field() {
        let e = BuildSpec::parse(br#"{"image":"","base":"x"}"#).unwrap_err();
        assert_eq!(e.to_string(), "option `image`: is required");
        let e = BuildSpec::parse(br#"{"image":"a/b","base":"c","format":"tar"}"#).unwrap_err();
        assert!(e.to_string().contains("option `format`"), "{e}");
        let e = BuildSpec::parse(br#"{"image":"a/b","base":"c","colour":"red"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
        let e = BuildSpec::parse(br#"{"image":"a/b","base":"c","entrypoint":"python 'x"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unbalanced"), "{e}");
    }

    #[test]
    fn settings_that_reach_the_server_host_are_refused() {
        for bad in [
            r#"{"java.maven_settings":"/root/.m2/settings.xml"}"#,
            r#"{"java.maven_settings":"../../etc/x.xml"}"#,
            r#"{"java.builder":"host"}"#,
        ] {
            let json = format!(r#"{{"image":"a/b","base":"c","settings":{bad}}}"#);
            let e = BuildSpec::parse(json.as_bytes()).unwrap_err().to_string();
            assert!(e.starts_with("option `settings`"), "{e}");
        }
        let ok = br#"{"image":"a/b","base":"c","settings":{"java.maven_settings":".mvn/settings.xml","python.venv":"/opt/venv"}}"#;
        BuildSpec::parse(ok).unwrap();
    }

    #[test]
    fn repositories_name_every_image_a_build_touches() {
        let spec = BuildSpec::parse(
            br#"{"image":"reg.example/team/app","base":"reg.example/base/python","settings":{"java.builder":"reg.example/tools/maven:3"}}"#,
        )
        .unwrap();
        let uses: Vec<(String, &str, String)> = spec
            .repositories()
            .unwrap()
            .into_iter()
            .map(|(o, s, r)| (o, s, r.to_string()))
            .collect();
        assert_eq!(
            uses,
            [
                (
                    "image".into(),
                    "image",
                    "reg.example/team/app:latest".into()
                ),
                (
                    "base".into(),
                    "base",
                    "reg.example/base/python:latest".into()
                ),
                (
                    "cache_repo".into(),
                    "cache_repo",
                    "reg.example/team/app/ftl-cache:latest".into()
                ),
                (
                    "settings.java.builder".into(),
                    "base",
                    "reg.example/tools/maven:3".into()
                ),
            ]
        );
        let spec = BuildSpec::parse(
            br#"{"image":"reg.example/team/app","base":"b.example/p","no_registry_cache":true,"cache_repo":"x.example/c"}"#,
        )
        .unwrap();
        assert_eq!(spec.repositories().unwrap().len(), 2);
        let e = BuildSpec::parse(
            br#"{"image":"a/b","base":"c","settings":{"java.builder":"Not A Ref"}}"#,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("option `settings`: `java.builder`"),
            "{e}"
        );
    }

    #[test]
    fn verify_forms() {
        let s = BuildSpec::parse(
            br#"{"image":"a/b","base":"c","verify":{"command":"true","timeout_secs":5}}"#,
        )
        .unwrap();
        let v = s.to_request("/s".into()).unwrap().verify.unwrap();
        assert_eq!(v.command.unwrap(), ["true"]);
        assert_eq!(v.timeout, Duration::from_secs(5));
    }
}
