//! `ftl completion` and `ftl man`: shell completion scripts and man pages,
//! both generated from the clap definitions, so they list every flag the
//! binary takes.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  ftl completion bash > /etc/bash_completion.d/ftl
  ftl completion zsh > \"${fpath[1]}/_ftl\"
  ftl completion fish > ~/.config/fish/completions/ftl.fish")]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  ftl man | man -l -            read ftl(1)
  ftl man build | man -l -      read ftl-build(1), every flag of `ftl build`
  ftl man --dir /usr/local/share/man/man1")]
pub struct ManArgs {
    /// The command whose page to print, e.g. `build` or `cache gc`
    /// [default: ftl(1) itself].
    #[arg(value_name = "COMMAND", conflicts_with = "dir")]
    pub command: Vec<String>,

    /// Write every page (ftl.1, ftl-build.1, ftl-cache-ls.1, ...) into DIR
    /// instead of printing one.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The `ftl` command as clap builds it: subcommands know their full names
/// (`ftl-build` as a page title, `ftl build` in a synopsis).
fn command() -> clap::Command {
    let mut cmd = crate::Cli::command();
    cmd.build();
    cmd
}

pub fn completion(args: CompletionArgs) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command(), "ftl", &mut script);
    print(&script)
}

/// Writes to stdout; a reader that stopped early (`| head`) is no error.
fn print(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// The page of `cmd`, footed `ftl VERSION` whichever command it is for.
fn page(cmd: &clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd.clone()).source(format!("ftl {}", env!("CARGO_PKG_VERSION")))
}

pub fn man(args: ManArgs) -> Result<()> {
    let root = command();
    if let Some(dir) = &args.dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        return write_all(&root, dir);
    }
    let mut cmd = &root;
    for name in &args.command {
        cmd = cmd.find_subcommand(name).with_context(|| {
            let known: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
            if known.is_empty() {
                format!(
                    "`{}` has no subcommands",
                    cmd.get_bin_name().unwrap_or("ftl")
                )
            } else {
                format!(
                    "`{}` has no subcommand `{name}`; it has: {}",
                    cmd.get_bin_name().unwrap_or("ftl"),
                    known.join(", ")
                )
            }
        })?;
    }
    let mut roff = Vec::new();
    page(cmd).render(&mut roff)?;
    print(&roff)
}

/// `cmd`'s page and those of its subcommands, as `ftl-cache-gc.1` and so on.
fn write_all(cmd: &clap::Command, dir: &std::path::Path) -> Result<()> {
    if cmd.is_hide_set() {
        return Ok(());
    }
    let man = page(cmd);
    let path = dir.join(man.get_filename());
    let mut roff = Vec::new();
    man.render(&mut roff)?;
    std::fs::write(&path, roff).with_context(|| format!("cannot write {}", path.display()))?;
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        write_all(sub, dir)?;
    }
    Ok(())
}
