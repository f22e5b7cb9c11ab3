//! `ftl cache ls` and `ftl cache gc`.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use ftl_cache::{dirs, Cache};

use crate::progress::human_bytes;
use crate::settings::default_cache_dir;

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// List cached layers, oldest first.
    Ls {
        /// The local cache directory [default: $FTL_CACHE_DIR, else ~/.cache/ftl].
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// One JSON entry per line (sizes in bytes).
        #[arg(long)]
        json: bool,
        /// Sizes as numbers of bytes, not `12.3 MiB`.
        #[arg(long)]
        bytes: bool,
    },
    /// Remove layer entries older than N days (and expired ones), the blobs
    /// no entry refers to, and unpacked base images and package caches
    /// (Maven's repository, npm's and pip's caches) unused for N days.
    /// Directories a running build uses are kept. Volumes that killed builds
    /// left mounted are unmounted (and their scratch removed) whatever N.
    Gc {
        /// Keep what was used (entries: created) in the last N days.
        #[arg(long, value_name = "N")]
        keep_days: u64,
        /// The local cache directory [default: $FTL_CACHE_DIR, else ~/.cache/ftl].
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// Print what was removed as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// The cache's directories used in place, under these subdirectories.
const DIR_KINDS: [(&str, &str); 3] = [
    ("layers", "unpacked base layers"),
    ("rootfs", "unpacked base images"),
    ("persistent", "package caches"),
];

fn age(secs: u64) -> String {
    if secs < 3600 {
        format!("{}m", secs / 60)
    } else if secs < 86400 {
        format!("{}h", secs / 3600)
    } else {
        format!("{}d", secs / 86400)
    }
}

#[allow(clippy::print_stdout)]
pub fn run(cmd: CacheCommand) -> Result<()> {
    match cmd {
        CacheCommand::Ls {
            cache_dir,
            json,
            bytes,
        } => {
            let size = |n: u64| {
                if bytes {
                    n.to_string()
                } else {
                    human_bytes(n)
                }
            };
            let root = cache_dir.unwrap_or_else(default_cache_dir);
            let cache = Cache::open(&root)?;
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
                let age = age(now.saturating_sub(e.created));
                let state = if e.expired(now) {
                    " (expired)"
                } else if e.expires.is_some() {
                    " (ttl)"
                } else {
                    ""
                };
                // A marker names no layer: its layers are the entries of
                // the same name, one per build root.
                let (digest, size, kind) = match &e.varies_by {
                    Some(by) => (
                        "-".to_string(),
                        "-".to_string(),
                        format!(" (varies by {by})"),
                    ),
                    None => {
                        let hex = e.digest.trim_start_matches("sha256:");
                        (
                            hex[..12.min(hex.len())].to_string(),
                            size(e.size),
                            String::new(),
                        )
                    }
                };
                println!(
                    "{:<14} {:<14} {:>10} {:>9}  {}{}{}",
                    &e.key[..12.min(e.key.len())],
                    digest,
                    size,
                    age,
                    e.name,
                    kind,
                    state
                );
            }
            let blobs = cache.blobs.size();
            if bytes {
                println!("{} entries, {blobs} bytes of blobs", entries.len());
            } else {
                println!("{} entries, {} of blobs", entries.len(), human_bytes(blobs));
            }
            for (sub, what) in DIR_KINDS {
                let listed = dirs::list(&root.join(sub));
                if listed.is_empty() {
                    continue;
                }
                println!();
                println!("{:>12} {:>9}  {}", "SIZE", "LAST USE", what.to_uppercase());
                for d in &listed {
                    println!(
                        "{:>12} {:>9}  {}{}",
                        size(d.bytes),
                        age(now.saturating_sub(d.last_used)),
                        d.path.display(),
                        if d.in_use { " (in use)" } else { "" }
                    );
                }
            }
            Ok(())
        }
        CacheCommand::Gc {
            keep_days,
            cache_dir,
            json,
        } => {
            let root = cache_dir.unwrap_or_else(default_cache_dir);
            let cache = Cache::open(&root)?;
            let keep_secs = keep_days.saturating_mul(86_400);
            let removed = cache.keys.gc(keep_secs)?;
            let keep: HashSet<String> = cache
                .keys
                .list()?
                .into_iter()
                .filter(|e| !e.is_marker())
                .map(|e| e.digest)
                .collect();
            let freed = cache.blobs.retain(&keep)?;
            // Plan-time values (dependency resolutions) expired or unused.
            let memos = ftl::engine::gc_memos(&root, keep_secs);
            // Volumes killed builds left: their scratch, cache mounts.
            let reclaimed = ftl::engine::reclaim_volumes(&root);
            let mut dirs = Vec::new();
            let mut problems = Vec::new();
            for parent in DIR_KINDS.iter().map(|(sub, _)| root.join(sub)) {
                let swept = dirs::sweep(&parent, keep_secs);
                dirs.extend(swept.removed);
                problems.extend(swept.problems);
            }
            // Scratch of builds that were killed (a running build's is
            // younger than a day).
            let (scratch, scratch_problems) = dirs::sweep_scratch(&root.join("tmp"), 86_400);
            problems.extend(scratch_problems);
            let problems: Vec<String> = problems.iter().map(|e| ftl::error_chain(e)).collect();
            let dir_bytes: u64 = dirs.iter().map(|d| d.bytes).sum::<u64>() + scratch;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "removed_entries": removed.len(),
                        "freed_blob_bytes": freed,
                        "removed_resolutions": memos,
                        "removed_directories": dirs,
                        "freed_directory_bytes": dir_bytes,
                        "reclaimed_volumes": reclaimed,
                        "problems": problems,
                    })
                );
            } else {
                println!("removed {} entries, freed {} bytes", removed.len(), freed);
                if memos > 0 {
                    println!("removed {memos} remembered resolutions");
                }
                for v in &reclaimed {
                    println!("unmounted {} (left by a killed build)", v.display());
                }
                for d in &dirs {
                    println!("removed {} ({} bytes)", d.path.display(), d.bytes);
                }
                if !dirs.is_empty() {
                    println!(
                        "removed {} directories, freed {} bytes",
                        dirs.len(),
                        dir_bytes
                    );
                }
            }
            if problems.is_empty() {
                return Ok(());
            }
            anyhow::bail!(
                "{} cache entries could not be removed (the rest was):\n  {}\n\
                 fix their permissions or mounts, or remove them by hand, and run gc again",
                problems.len(),
                problems.join("\n  ")
            )
        }
    }
}
