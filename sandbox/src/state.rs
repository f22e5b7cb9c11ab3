//! On-disk state of containers: `<root>/<id>/state.json`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;
use crate::error::SandboxError;

/// What ftl records about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    /// Host pid of the container's init (0 before it exists).
    pub pid: i32,
    /// Start time of `pid` (field 22 of /proc/PID/stat), against pid reuse.
    pub pid_start: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339.
    pub created: String,
    /// `created`, `running` or `stopped` as last written; the live status
    /// is derived from the process (see [`ContainerState::status`]).
    pub status: String,
    pub cgroup: Option<Cgroup>,
    /// Descriptor of the start gate in the init (create/start).
    pub gate_fd: Option<i32>,
    /// Pid of the process waiting on the init (create/start).
    pub monitor_pid: Option<i32>,
    pub annotations: std::collections::BTreeMap<String, String>,
    pub owner: String,
    /// Exit status, once the monitor saw it.
    pub exit_code: Option<i32>,
}

/// Field 22 of /proc/PID/stat.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

fn process_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

impl ContainerState {
    /// Whether the init recorded in the state is still alive (and not a
    /// zombie, and not another process that reused its pid).
    pub fn alive(&self) -> bool {
        self.pid > 0
            && process_start_time(self.pid) == Some(self.pid_start)
            && !matches!(process_state(self.pid), Some('Z') | Some('X') | None)
    }

    /// The OCI status: `created`, `running` or `stopped`.
    pub fn status(&self) -> &'static str {
        if !self.alive() {
            "stopped"
        } else if self.status == "created" {
            "created"
        } else {
            "running"
        }
    }

    /// The OCI state document (`runsc state`, `runc state`).
    pub fn oci_json(&self) -> serde_json::Value {
        let status = self.status();
        serde_json::json!({
            "ociVersion": "1.0.2",
            "id": self.id,
            "status": status,
            "pid": if status == "stopped" { 0 } else { self.pid },
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": self.owner,
            "annotations": self.annotations,
        })
    }
}

/// Checks a container id: `[A-Za-z0-9_.+-]`, not starting with a dot.
pub fn check_id(id: &str) -> Result<(), SandboxError> {
    let ok = !id.is_empty()
        && !id.starts_with('.')
        && id.len() <= 1024
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-'));
    if ok {
        Ok(())
    } else {
        Err(SandboxError::InvalidId { id: id.to_string() })
    }
}

/// The state directory of `id` under `root`.
pub fn dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

/// Creates the state directory; fails if the container exists.
pub fn create_dir(root: &Path, id: &str) -> Result<PathBuf, SandboxError> {
    check_id(id)?;
    fs::create_dir_all(root).map_err(|source| SandboxError::State {
        path: root.to_path_buf(),
        source,
    })?;
    let d = dir(root, id);
    match fs::create_dir(&d) {
        Ok(()) => Ok(d),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(SandboxError::AlreadyExists {
            id: id.to_string(),
            root: root.to_path_buf(),
        }),
        Err(source) => Err(SandboxError::State { path: d, source }),
    }
}

/// Writes `state.json` atomically. Writers that may race (the monitor
/// recording an exit while `start` records `running`) go through
/// [`update`] instead.
pub fn save(root: &Path, state: &ContainerState) -> Result<(), SandboxError> {
    let d = dir(root, &state.id);
    // A name of this process's own, so that two writers never rename each
    // other's temporary file away.
    let tmp = d.join(format!("state.json.{}.tmp", std::process::id()));
    let path = d.join("state.json");
    let text = serde_json::to_vec(state).expect("state serializes");
    fs::write(&tmp, text)
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|source| SandboxError::State { path, source })
}

/// Reads the state of `id`.
pub fn load(root: &Path, id: &str) -> Result<ContainerState, SandboxError> {
    check_id(id)?;
    let path = dir(root, id).join("state.json");
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SandboxError::NotFound {
                id: id.to_string(),
                root: root.to_path_buf(),
            })
        }
        Err(source) => return Err(SandboxError::State { path, source }),
    };
    serde_json::from_slice(&text).map_err(|e| SandboxError::State {
        path,
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    })
}

/// Loads the state of `id`, lets `change` edit it and saves it, all under
/// an exclusive lock of the container's state directory, so that
/// concurrent read-modify-write cycles never lose each other's update.
/// `change` runs under the lock too: whatever it does before returning
/// (such as opening the start gate) is ordered against other updates. An
/// error from `change` saves nothing.
pub fn update<T>(
    root: &Path,
    id: &str,
    change: impl FnOnce(&mut ContainerState) -> Result<T, SandboxError>,
) -> Result<T, SandboxError> {
    check_id(id)?;
    let lock_path = dir(root, id).join("state.lock");
    let lock = match fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SandboxError::NotFound {
                id: id.to_string(),
                root: root.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(SandboxError::State {
                path: lock_path,
                source,
            })
        }
    };
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(
        |(_, errno)| SandboxError::State {
            path: lock_path.clone(),
            source: io::Error::from(errno),
        },
    )?;
    let mut st = load(root, id)?;
    let out = change(&mut st)?;
    save(root, &st)?;
    Ok(out)
}

/// Ids of every container under `root`.
pub fn list(root: &Path) -> Vec<String> {
    let mut ids: Vec<String> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("state.json").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort();
    ids
}

/// Removes the state directory of `id`.
pub fn remove(root: &Path, id: &str) {
    let d = dir(root, id);
    if let Err(e) = fs::remove_dir_all(&d) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(dir = %d.display(), error = %e, "cannot remove state directory");
        }
    }
}

/// Now as RFC 3339 (UTC, nanoseconds).
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// The default state root: `/run/ftl-sandbox` for root, else under
/// `$XDG_RUNTIME_DIR` (or the temp dir).
pub fn default_root() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        PathBuf::from("/run/ftl-sandbox")
    } else {
        std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join("ftl-sandbox")
    }
}

/// Removes what dead containers left under `root` (their init and monitor
/// are gone, e.g. after the caller was killed): cgroups and state
/// directories. Containers still alive, or created and waiting for
/// `start`, are kept. Returns the ids removed.
pub fn gc(root: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    for id in list(root) {
        let Ok(st) = load(root, &id) else { continue };
        let monitor_alive = st
            .monitor_pid
            .is_some_and(|m| fs::metadata(format!("/proc/{m}")).is_ok() && st.exit_code.is_none());
        if st.alive() || monitor_alive {
            continue;
        }
        if let Some(cg) = &st.cgroup {
            cg.destroy();
        }
        remove(root, &id);
        tracing::debug!(id = %id, "removed the remains of a dead container");
        removed.push(id);
    }
    removed
}
