//! `ftl cache ls` and `ftl cache gc`.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use ftl_cache::Cache;

use crate::settings::default_cache_dir;

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// List cached layers, oldest first.
    Ls {
        /// The local cache directory [default: $FTL_CACHE_DIR, else ~/.cache/ftl].
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// One JSON entry per line.
        #[arg(long)]
        json: bool,
    },
    /// Remove entries older than N days (and expired ones), then blobs no
    /// entry refers to.
    Gc {
        #[arg(long, value_name = "N")]
        keep_days: u64,
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },
}

#[allow(clippy::print_stdout)]
pub fn run(cmd: CacheCommand) -> Result<()> {
    match cmd {
        CacheCommand::Ls { cache_dir, json } => {
            let cache = Cache::open(cache_dir.unwrap_or_else(default_cache_dir))?;
            let now = ftl_cache::now_secs();
            let entries = cache.keys.list()?;
            if json {
                for e in &entries {
                    println!("{}", serde_json::to_string(e)?);
                }
                return Ok(());
            }
            println!(
                "{:<14} {:<14} {:>10} {:>9}  NAME",
                "KEY", "DIGEST", "SIZE", "AGE"
            );
            for e in &entries {
                let age = now.saturating_sub(e.created);
                let age = if age < 3600 {
                    format!("{}m", age / 60)
                } else if age < 86400 {
                    format!("{}h", age / 3600)
                } else {
                    format!("{}d", age / 86400)
                };
                let state = if e.expired(now) {
                    " (expired)"
                } else if e.expires.is_some() {
                    " (ttl)"
                } else {
                    ""
                };
                println!(
                    "{:<14} {:<14} {:>10} {:>9}  {}{}",
                    &e.key[..12.min(e.key.len())],
                    &e.digest.trim_start_matches("sha256:")[..12],
                    e.size,
                    age,
                    e.name,
                    state
                );
            }
            println!(
                "{} entries, {} bytes of blobs",
                entries.len(),
                cache.blobs.size()
            );
            Ok(())
        }
        CacheCommand::Gc {
            keep_days,
            cache_dir,
        } => {
            let cache = Cache::open(cache_dir.unwrap_or_else(default_cache_dir))?;
            let removed = cache.keys.gc(keep_days * 86_400)?;
            let keep: HashSet<String> = cache.keys.list()?.into_iter().map(|e| e.digest).collect();
            let freed = cache.blobs.retain(&keep)?;
            println!("removed {} entries, freed {} bytes", removed.len(), freed);
            Ok(())
        }
    }
}
