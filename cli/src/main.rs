//! `ftl`: source to OCI image, straight to the registry.
//!
//! The binary parses arguments, wires the language plugins into the engine,
//! renders progress and reports; it has no build logic of its own.

mod build;
mod cache_cmd;
mod docs;
mod inspect;
mod progress;
mod serve;
mod settings;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build OCI images from Python, Node.js and Java source, straight to a
/// registry: no Docker daemon, no Dockerfile.
#[derive(Parser)]
#[command(name = "ftl", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log verbosity for diagnostics on stderr (error, warn, info, debug, trace).
    #[arg(long, global = true, env = "FTL_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an image from an application directory and push or export it.
    Build(Box<build::BuildArgs>),
    /// Show an image's manifest and config summary.
    Inspect(inspect::InspectArgs),
    /// Inspect and prune the local layer cache.
    #[command(subcommand)]
    Cache(cache_cmd::CacheCommand),
    /// Run the HTTP build service.
    Serve(Box<serve::ServeArgs>),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(docs::CompletionArgs),
    /// Print the man page of ftl or one of its commands (roff), or write
    /// them all into a directory.
    Man(docs::ManArgs),
    /// The runsc-compatible sandbox (`ftl runsc --help`); also reached by
    /// running this binary under the name `runsc`.
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Runsc {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    // Invoked as `runsc`: be runsc.
    let invoked_as = argv
        .first()
        .and_then(|a| {
            std::path::Path::new(a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    if invoked_as == "runsc" {
        return exit(ftl_sandbox::cli::main(argv));
    }
    if argv.get(1).is_some_and(|a| a == "runsc") {
        argv.remove(1);
        argv[0] = OsString::from("runsc");
        return exit(ftl_sandbox::cli::main(argv));
    }
    let wants_json = argv.iter().any(|a| a == "--json");
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            // A usage error under `--json` is a JSON error too (a pipeline
            // reads stdout); help and version print as they do.
            if wants_json && !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
            {
                let text = e.render().to_string();
                // The error's first paragraph, as one line.
                let first = text
                    .lines()
                    .take_while(|l| !l.trim().is_empty())
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" ");
                let first = first.trim_start_matches("error: ");
                let _ = progress::print_json_error(&anyhow::anyhow!("{first}"), None);
                eprint!("{text}");
                return ExitCode::from(e.exit_code() as u8);
            }
            e.exit()
        }
    };
    init_logging(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Build(args) => build::run(*args).await,
            Command::Inspect(args) => inspect::run(args).await,
            Command::Cache(cmd) => cache_cmd::run(cmd),
            Command::Serve(args) => serve::run(*args).await,
            Command::Completion(args) => docs::completion(args),
            Command::Man(args) => docs::man(args),
            Command::Runsc { .. } => unreachable!("dispatched above"),
        }
    });
    // Blocking work a dropped build left behind (an interrupted build's
    // step or verification, stopping and removing what it made) ends
    // before the process does; bounded, so a stuck thread cannot hold ftl.
    runtime.shutdown_timeout(std::time::Duration::from_secs(60));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(i) = e.downcast_ref::<build::Interrupted>() {
                eprintln!("{i}");
                return exit(128 + i.signal);
            }
            eprintln!("error: {}", render_error(&e));
            ExitCode::FAILURE
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// The error and its causes, each once.
fn render_error(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(&format!(": {c}"));
        }
    }
    out
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
