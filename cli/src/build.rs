//! `ftl build`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use ftl::engine::{BuildRequest, Output, VerifySpec};
use ftl::image::{ConfigOverrides, ManifestFormat};
use ftl::{BuildOptions, LanguagePlugin};
use ftl_registry_client::{Platform, Reference};

use crate::progress::{ErrorDetail, Progress};
use crate::settings::{default_cache_dir, RegistryArgs, StepArgs};

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  ftl build ./app --base 127.0.0.1:5000/base/python --image 127.0.0.1:5000/me/app:v1 --verify
  ftl build ./app --base python:3.12-slim --output oci:./out --entrypoint 'python main.py'
  ftl build ./site --base debian:12 --output docker-archive:site.tar --language generic --port 8080")]
pub struct BuildArgs {
    /// The application directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,

    /// The base image (`registry/repo:tag`, `repo@sha256:...`).
    #[arg(long, value_name = "REF")]
    pub base: String,

    /// Push the image to this reference.
    #[arg(
        long,
        value_name = "REF",
        required_unless_present = "output",
        conflicts_with = "output"
    )]
    pub image: Option<String>,

    /// Also tag the image TAG in the --image repository (repeatable). Every
    /// tag is set once the manifest is in place, and with --verify only
    /// after the image passed: a failed build moves none.
    #[arg(long = "tag", value_name = "TAG", requires = "image")]
    pub tags: Vec<String>,

    /// Write the image's digest (`sha256:...`, no newline) to PATH once
    /// the build succeeded, like `docker build --iidfile`.
    #[arg(long, value_name = "PATH")]
    pub digest_file: Option<PathBuf>,

    /// Write the pushed image as `registry/repo@sha256:...` (one line per
    /// image, as ko's --image-refs) to PATH once the build succeeded.
    #[arg(long, value_name = "PATH", requires = "image")]
    pub image_refs: Option<PathBuf>,

    /// Write the image to disk instead: `oci:PATH[:TAG]` (an OCI image
    /// layout) or `docker-archive:PATH[:NAME:TAG]` (for `docker load`).
    #[arg(long, value_name = "KIND:PATH")]
    pub output: Option<String>,

    /// The language plugin: auto, python, node, java, or generic (the source
    /// files only).
    #[arg(long, default_value = "auto")]
    pub language: String,

    /// Where the application goes in the image.
    #[arg(
        long,
        default_value = "/srv",
        value_name = "PATH",
        help_heading = "Image config"
    )]
    pub app_dir: String,

    /// The entrypoint, as a shell-quoted string or a JSON array. A JSON
    /// array is run as it is (exec form); so is a string, split into
    /// words, unless it uses `$VAR`: then it runs as `/bin/sh -c 'exec
    /// CMD'`, so that the variable is expanded when the app starts and the
    /// app, not the shell, is PID 1 and gets SIGTERM.
    #[arg(long, value_name = "CMD", help_heading = "Image config")]
    pub entrypoint: Option<String>,

    /// The default arguments (Cmd), as a shell-quoted string or a JSON array.
    #[arg(long, value_name = "ARGS", help_heading = "Image config")]
    pub cmd: Option<String>,

    /// Set an environment variable in the image (repeatable).
    #[arg(long = "env", value_name = "K=V", help_heading = "Image config")]
    pub env: Vec<String>,

    /// Expose a port, `8080` or `8080/udp` (repeatable).
    #[arg(long = "port", value_name = "PORT", value_parser = parse_port, help_heading = "Image config")]
    pub ports: Vec<String>,

    /// Set a label (repeatable).
    #[arg(long = "label", value_name = "K=V", help_heading = "Image config")]
    pub labels: Vec<String>,

    /// The user the image runs as.
    #[arg(long, help_heading = "Image config")]
    pub user: Option<String>,

    /// A plugin setting, e.g. `python.venv=/opt/venv` (repeatable).
    #[arg(
        long = "set",
        value_name = "KEY=VALUE",
        help_heading = "Language plugins"
    )]
    pub settings: Vec<String>,

    /// Java: a JVM flag of the entrypoint, e.g. `--jvm-flag=-Xmx512m`
    /// (repeatable; the setting `java.jvm_flags`).
    #[arg(
        long = "jvm-flag",
        value_name = "FLAG",
        allow_hyphen_values = true,
        help_heading = "Language plugins"
    )]
    pub jvm_flags: Vec<String>,

    /// Java: the prebuilt jar to run, relative to DIR (`java.jar`).
    #[arg(long, value_name = "PATH", help_heading = "Language plugins")]
    pub jar: Option<String>,

    /// Java: the Maven settings.xml to build with (`java.maven_settings`).
    #[arg(long, value_name = "FILE", help_heading = "Language plugins")]
    pub maven_settings: Option<PathBuf>,

    /// Manifest format: oci, or docker (Docker v2 schema 2).
    #[arg(long, default_value = "oci", value_parser = ["oci", "docker"], help_heading = "Image config")]
    pub format: String,

    /// The platform of the base to build on.
    #[arg(
        long,
        default_value = "linux/amd64",
        value_name = "OS/ARCH[/VARIANT]",
        help_heading = "Image config"
    )]
    pub platform: String,

    /// The registry cache repository (default: `<image repo>/ftl-cache`).
    #[arg(long, value_name = "REPO", help_heading = "Cache")]
    pub cache_repo: Option<String>,

    /// Do not use a registry cache repository.
    #[arg(long, conflicts_with = "cache_repo", help_heading = "Cache")]
    pub no_registry_cache: bool,

    /// Skip cache lookups (results are still recorded).
    #[arg(long, help_heading = "Cache")]
    pub no_cache: bool,

    /// Share package managers' caches (npm's, Maven's repository) only with
    /// builds of the same scope: one per team or repository on a shared CI
    /// machine [default: the machine's one scope].
    #[arg(long, value_name = "NAME", help_heading = "Cache")]
    pub cache_scope: Option<String>,

    /// The local cache directory [default: $FTL_CACHE_DIR, else ~/.cache/ftl].
    #[arg(long, value_name = "DIR", help_heading = "Cache")]
    pub cache_dir: Option<PathBuf>,

    /// How long layers of unpinned dependencies, and the dependency
    /// resolutions of inputs that do not pin everything, stay cached.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration, value_name = "DURATION", help_heading = "Cache")]
    pub cache_ttl: Duration,

    /// Start the image in the sandbox and wait for an HTTP answer on $PORT.
    #[arg(long, help_heading = "Verification")]
    pub verify: bool,

    /// Verify by running this command in the image instead (exit 0 passes).
    #[arg(long, value_name = "CMD", help_heading = "Verification")]
    pub verify_cmd: Option<String>,

    /// How long verification may take.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION", help_heading = "Verification")]
    pub verify_timeout: Duration,

    #[command(flatten)]
    pub steps: StepArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,

    /// Print the build report as JSON on stdout (schema 1, see the
    /// README); a failed build prints `{"schema": 1, "error": {...}}`.
    #[arg(long)]
    pub json: bool,

    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_command(flag: &str, value: &str) -> Result<Vec<String>> {
    let v = value.trim();
    if v.starts_with('[') {
        return serde_json::from_str(v)
            .with_context(|| format!("{flag} {value:?} is not a JSON array of strings"));
    }
    let words =
        shell_words::split(v).with_context(|| format!("{flag} {value:?} has unbalanced quotes"))?;
    if words.is_empty() {
        bail!("{flag} is empty");
    }
    Ok(words)
}

/// `--entrypoint`: a JSON array as it is; a string that uses `$` through
/// `/bin/sh -c 'exec CMD'` (its quotes checked first); any other string
/// split into words.
fn parse_entrypoint(value: &str) -> Result<Vec<String>> {
    let argv = parse_command("--entrypoint", value)?;
    if value.trim().starts_with('[') || !value.contains('$') {
        return Ok(argv);
    }
    Ok(ftl::app::shell_entrypoint(value).argv)
}

/// `8080`, `8080/tcp`, `53/udp`, `9/sctp`: a port from 1 to 65535.
fn parse_port(value: &str) -> Result<String, String> {
    let (port, proto) = value.split_once('/').unwrap_or((value, "tcp"));
    let valid_port = port.parse::<u16>().is_ok_and(|p| p > 0);
    if !valid_port || !["tcp", "udp", "sctp"].contains(&proto) {
        return Err(format!(
            "{value:?} is not a port: use a number from 1 to 65535, optionally with /tcp, /udp or /sctp (e.g. 8080 or 53/udp)"
        ));
    }
    Ok(value.to_string())
}

fn parse_kv(flag: &str, value: &str) -> Result<(String, String)> {
    match value.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => bail!("{flag} {value:?} is not KEY=VALUE"),
    }
}

fn parse_platform(s: &str) -> Result<Platform> {
    let parts: Vec<&str> = s.split('/').collect();
    if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
        bail!("--platform {s:?} is not OS/ARCH[/VARIANT], e.g. linux/amd64");
    }
    let mut b = oci_platform(parts[0], parts[1]);
    if let Some(v) = parts.get(2) {
        b.set_variant(Some(v.to_string()));
    }
    Ok(b)
}

fn oci_platform(os: &str, arch: &str) -> Platform {
    let mut p = ftl_registry_client::default_platform();
    p.set_os(os.into());
    p.set_architecture(arch.into());
    p
}

pub fn plugins() -> Vec<Arc<dyn LanguagePlugin>> {
    vec![
        Arc::new(ftl_python::PythonPlugin),
        Arc::new(ftl_java::JavaPlugin),
        Arc::new(ftl_node::NodePlugin),
    ]
}

fn parse_output(args: &BuildArgs) -> Result<(Output, Option<Reference>)> {
    if let Some(image) = &args.image {
        let r = Reference::parse(image).with_context(|| format!("--image {image:?}"))?;
        let r = if r.tag().is_none() && r.digest().is_none() {
            r.with_tag("latest")?
        } else {
            r
        };
        return Ok((Output::Registry(r.clone()), Some(r)));
    }
    let out = args
        .output
        .as_deref()
        .expect("clap requires --image or --output");
    let default_name = args
        .dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|f| f.to_string_lossy().to_lowercase()))
        .unwrap_or_else(|| "app".into());
    if let Some(rest) = out.strip_prefix("oci:") {
        let (path, tag) = match rest.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') && !p.is_empty() => (p, t.to_string()),
            _ => (rest, "latest".to_string()),
        };
        return Ok((
            Output::OciLayout {
                path: PathBuf::from(path),
                tag,
            },
            None,
        ));
    }
    if let Some(rest) = out.strip_prefix("docker-archive:") {
        let (path, tag) = match rest.split_once(':') {
            Some((p, t)) if !p.is_empty() => (
                p,
                if t.contains(':') {
                    t.to_string()
                } else {
                    format!("{t}:latest")
                },
            ),
            _ => (rest, format!("{default_name}:latest")),
        };
        return Ok((
            Output::DockerArchive {
                path: PathBuf::from(path),
                tag,
            },
            None,
        ));
    }
    bail!("--output {out:?} is not oci:PATH[:TAG] or docker-archive:PATH[:NAME:TAG]")
}

/// `ftl build`: with `--json`, a failure is also printed on stdout as a
/// JSON error object (the exit code is the same).
pub async fn run(args: BuildArgs) -> Result<()> {
    let json = args.json;
    let mut failure = None;
    let result = build(args, &mut failure).await;
    if let (Err(e), true) = (&result, json) {
        crate::progress::print_json_error(e, failure.as_ref())?;
    }
    result
}

async fn build(args: BuildArgs, failure: &mut Option<ErrorDetail>) -> Result<()> {
    let (output, target) = parse_output(&args)?;
    if args.format == "docker" && matches!(output, Output::OciLayout { .. }) {
        bail!(
            "--format docker cannot go in an OCI image layout (skopeo and umoci read only OCI \
             manifests there): use --format oci, or --output docker-archive:PATH"
        );
    }
    let base = Reference::parse(&args.base).with_context(|| format!("--base {:?}", args.base))?;
    let platform = parse_platform(&args.platform)?;
    let cache_repo = if args.no_registry_cache {
        None
    } else if let Some(repo) = &args.cache_repo {
        Some(Reference::parse(repo).with_context(|| format!("--cache-repo {repo:?}"))?)
    } else {
        match &target {
            Some(t) => Some(t.with_repository(&format!("{}/ftl-cache", t.repository()))?),
            None => None,
        }
    };
    let mut overrides = ConfigOverrides {
        entrypoint: None,
        cmd: args
            .cmd
            .as_deref()
            .map(|c| parse_command("--cmd", c))
            .transpose()?,
        env: args
            .env
            .iter()
            .map(|e| parse_kv("--env", e))
            .collect::<Result<_>>()?,
        workdir: None,
        user: args.user.clone(),
        ports: args.ports.clone(),
        labels: args
            .labels
            .iter()
            .map(|l| parse_kv("--label", l))
            .collect::<Result<BTreeMap<_, _>>>()?,
    };
    let entrypoint = args
        .entrypoint
        .as_deref()
        .map(parse_entrypoint)
        .transpose()?;
    overrides.entrypoint = entrypoint.clone();
    let mut options = BuildOptions {
        app_dir: args.app_dir.clone(),
        entrypoint,
        settings: args
            .settings
            .iter()
            .map(|s| parse_kv("--set", s))
            .collect::<Result<_>>()?,
    };
    // Language flags are plugin settings under other names.
    if !args.jvm_flags.is_empty() {
        let flags = shell_words::join(&args.jvm_flags);
        options.settings.insert("java.jvm_flags".into(), flags);
    }
    if let Some(jar) = &args.jar {
        options.settings.insert("java.jar".into(), jar.clone());
    }
    if let Some(file) = &args.maven_settings {
        let abs = std::fs::canonicalize(file)
            .with_context(|| format!("--maven-settings {}", file.display()))?;
        let abs = abs.to_string_lossy().into_owned();
        options.settings.insert("java.maven_settings".into(), abs);
    }
    let cache_dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let engine = args
        .steps
        .engine(&args.registry, &cache_dir, args.cache_ttl)?;
    let verify = (args.verify || args.verify_cmd.is_some())
        .then(|| -> Result<VerifySpec> {
            Ok(VerifySpec {
                command: args
                    .verify_cmd
                    .as_deref()
                    .map(|c| parse_command("--verify-cmd", c))
                    .transpose()?,
                timeout: args.verify_timeout,
                path: "/".into(),
            })
        })
        .transpose()?;
    let req = BuildRequest {
        source: args.dir.clone(),
        base,
        platform,
        output,
        tags: args.tags.clone(),
        language: Some(args.language.clone()),
        options,
        overrides,
        format: if args.format == "docker" {
            ManifestFormat::Docker
        } else {
            ManifestFormat::Oci
        },
        cache_repo,
        no_cache: args.no_cache,
        verify,
        cancel: Default::default(),
        cache_scope: args.cache_scope.clone(),
    };
    let progress = Arc::new(Progress::new(args.quiet || args.json));
    let interrupts = Interrupts::watch(req.cancel.clone())?;
    let result = tokio::select! {
        r = engine.build(&req, progress.clone()) => r,
        () = interrupts.notify.notified() => Err(ftl::engine::EngineError::Cancelled),
    };
    progress.finish();
    // Interrupted: the build's future is dropped (its requests with it);
    // its blocking work (a sandboxed step, verification) sees the flag,
    // stops its container and removes what it made, and `main` waits for
    // that before the process exits. A build that failed because of the
    // signal (its app killed by the terminal's SIGINT) was interrupted too;
    // one that finished first stands.
    if let (Err(_), Some(signal)) = (&result, interrupts.received()) {
        *failure = Some(ErrorDetail::kind("interrupted"));
        return Err(Interrupted { signal }.into());
    }
    let report = result.map_err(|e| {
        *failure = Some(ErrorDetail::of(&e));
        crate::settings::with_flag_hints(e.into())
    })?;
    *failure = Some(ErrorDetail::kind("io"));
    if let Some(path) = &args.digest_file {
        std::fs::write(path, &report.digest)
            .with_context(|| format!("--digest-file {}", path.display()))?;
    }
    if let (Some(path), Some(target)) = (&args.image_refs, &target) {
        let line = format!(
            "{}/{}@{}\n",
            target.registry(),
            target.repository(),
            report.digest
        );
        std::fs::write(path, line).with_context(|| format!("--image-refs {}", path.display()))?;
    }
    if args.json {
        crate::progress::print_json(&report)?;
    } else {
        crate::progress::print_summary(&report, args.quiet);
    }
    Ok(())
}

/// A build stopped by SIGINT or SIGTERM; `ftl` exits 128 + `signal`.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.signal == libc::SIGTERM {
            "SIGTERM"
        } else {
            "SIGINT"
        };
        write!(
            f,
            "interrupted by {name}: the build was stopped and what it made removed"
        )
    }
}

impl std::error::Error for Interrupted {}

/// SIGINT and SIGTERM while a build runs: the first cancels it (and is
/// remembered); after it, both act as they normally do, so a second Ctrl-C
/// ends ftl at once, without cleaning up.
struct Interrupts {
    signal: Arc<std::sync::atomic::AtomicI32>,
    notify: Arc<tokio::sync::Notify>,
}

impl Interrupts {
    fn watch(cancel: ftl::engine::CancelFlag) -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let got = Arc::new(std::sync::atomic::AtomicI32::new(0));
        let notify = Arc::new(tokio::sync::Notify::new());
        let (got2, notify2) = (got.clone(), notify.clone());
        tokio::spawn(async move {
            let signal = tokio::select! {
                _ = int.recv() => libc::SIGINT,
                _ = term.recv() => libc::SIGTERM,
            };
            cancel.cancel();
            got2.store(signal, std::sync::atomic::Ordering::SeqCst);
            notify2.notify_one();
            for s in [libc::SIGINT, libc::SIGTERM] {
                // SAFETY: resets a signal's disposition to the default;
                // no handler of this process runs in its place.
                unsafe {
                    libc::signal(s, libc::SIG_DFL);
                }
            }
        });
        Ok(Interrupts {
            signal: got,
            notify,
        })
    }

    /// The signal that interrupted the build, if one did.
    fn received(&self) -> Option<i32> {
        match self.signal.load(std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_entrypoint;

    #[test]
    fn an_entrypoint_with_a_variable_runs_through_exec_in_a_shell() {
        assert_eq!(
            parse_entrypoint("gunicorn -b :$PORT main:app").unwrap(),
            ["/bin/sh", "-c", "exec gunicorn -b :$PORT main:app"]
        );
        assert_eq!(
            parse_entrypoint("python 'main app.py'").unwrap(),
            ["python", "main app.py"]
        );
        assert_eq!(
            parse_entrypoint(r#"["sh", "-c", "echo $PORT"]"#).unwrap(),
            ["sh", "-c", "echo $PORT"]
        );
        assert!(parse_entrypoint("gunicorn -b \":$PORT").is_err());
    }
}
