//! Real parts for ftl's tests: a Debian `docker-registry` on a free loopback
//! port (plain, htpasswd, TLS, token auth), a fault-injecting proxy, and base
//! images built from Debian packages, and what a release ships (`dist`).

pub mod base_images;
pub mod dist;
pub mod proxy;
pub mod registry;
pub mod rig;
pub mod token;

/// A temporary directory named `<prefix>XXXXXX` that records this process
/// as its owner. Removed on drop as usual; one held by a `static` (never
/// dropped) is removed by the next call with the same prefix once its owner
/// is gone, so that test runs leave nothing behind for long.
pub fn owned_temp_dir(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    sweep(prefix);
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    std::fs::write(
        dir.path().join(OWNER_FILE),
        process_identity(std::process::id()).unwrap_or_default(),
    )?;
    Ok(dir)
}

/// In an owned directory: the identity of the process that owns it.
const OWNER_FILE: &str = ".ftl-test-owner";

/// `pid start-time` of a live process (start time against pid reuse).
fn process_identity(pid: u32) -> Option<String> {
    let start = ftl_sandbox::state::process_start_time(i32::try_from(pid).ok()?)?;
    Some(format!("{pid} {start}"))
}

/// Removes the `prefix` directories whose owner is gone, and ownerless
/// ones (from before owners were recorded) older than an hour.
fn sweep(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let dir = e.path();
        let stale = match std::fs::read_to_string(dir.join(OWNER_FILE)) {
            Ok(owner) => {
                let pid = owner.split(' ').next().and_then(|p| p.parse::<u32>().ok());
                pid.and_then(process_identity).as_deref() != Some(owner.trim())
            }
            Err(_) => e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(3600)),
        };
        if stale {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
