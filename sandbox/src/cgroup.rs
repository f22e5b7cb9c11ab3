//! Cgroups v1 and v2: one cgroup per container, resources from the spec,
//! out-of-memory detection, killing the whole tree, removal.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

use crate::error::SandboxError;

/// The controllers ftl uses on a v1 hierarchy.
const V1_CONTROLLERS: &[&str] = &["memory", "pids", "cpu", "cpuacct", "freezer", "devices"];

/// How the host mounts cgroups.
#[derive(Debug, Clone)]
enum Layout {
    /// The unified hierarchy at `mount`; `own` is this process's cgroup.
    V2 { mount: PathBuf, own: PathBuf },
    /// One hierarchy per controller: (controller, mount point, own cgroup).
    V1(Vec<(String, PathBuf, PathBuf)>),
}

fn detect() -> Option<Layout> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut v1 = Vec::new();
    let mut v2_mount = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let rfields: Vec<&str> = right.split(' ').collect();
        if fields.len() < 5 || rfields.len() < 3 {
            continue;
        }
        let mount_point = PathBuf::from(fields[4]);
        match rfields[0] {
            "cgroup2" if mount_point == Path::new("/sys/fs/cgroup") => v2_mount = Some(mount_point),
            "cgroup" => {
                for opt in rfields[2].split(',') {
                    if V1_CONTROLLERS.contains(&opt) {
                        // Our own cgroup in the hierarchy holding `opt`.
                        let own_path = own
                            .lines()
                            .filter_map(|l| {
                                let mut it = l.splitn(3, ':');
                                let _ = it.next();
                                let ctrls = it.next()?;
                                let path = it.next()?;
                                ctrls.split(',').any(|c| c == opt).then(|| path.to_string())
                            })
                            .next()
                            .unwrap_or_else(|| "/".into());
                        v1.push((
                            opt.to_string(),
                            mount_point.clone(),
                            PathBuf::from(own_path),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(mount) = v2_mount {
        let own_path = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/")
            .to_string();
        return Some(Layout::V2 {
            mount,
            own: PathBuf::from(own_path),
        });
    }
    if v1.is_empty() {
        None
    } else {
        Some(Layout::V1(v1))
    }
}

fn rel(p: &Path) -> &Path {
    p.strip_prefix("/").unwrap_or(p)
}

fn write(path: &Path, value: &str) -> Result<(), SandboxError> {
    fs::write(path, value).map_err(|source| SandboxError::Cgroup {
        path: path.to_path_buf(),
        source,
    })
}

/// One container's cgroup (a directory per v1 hierarchy, or one v2 dir).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Cgroup {
    /// Directories this cgroup owns, by controller (`unified` for v2).
    pub dirs: Vec<(String, PathBuf)>,
    /// Directories created for it, removed at destroy (deepest last in list).
    created: Vec<PathBuf>,
    v2: bool,
}

impl Cgroup {
    /// Creates the cgroup `path` (absolute: from the hierarchy root;
    /// relative: under this process's own cgroup) and applies `resources`.
    /// Returns `Ok(None)` when the host has no cgroups.
    pub fn create(
        path: &Path,
        resources: Option<&LinuxResources>,
    ) -> Result<Option<Cgroup>, SandboxError> {
        Self::create_with(path, resources, true)
    }

    /// Like [`Cgroup::create`]; on v1 only the hierarchies the resources
    /// need are used (plus `pids`, to track the processes, and `freezer`
    /// when `freezer` is set: without a pid namespace it is what kills a
    /// tree reliably). Fewer hierarchies, faster start.
    pub fn create_with(
        path: &Path,
        resources: Option<&LinuxResources>,
        freezer: bool,
    ) -> Result<Option<Cgroup>, SandboxError> {
        let Some(layout) = detect() else {
            return Ok(None);
        };
        let mut cg = Cgroup {
            dirs: Vec::new(),
            created: Vec::new(),
            v2: matches!(layout, Layout::V2 { .. }),
        };
        let layout = match layout {
            Layout::V1(h) => Layout::V1(
                h.into_iter()
                    .filter(|(c, _, _)| match c.as_str() {
                        "pids" => true,
                        "freezer" => freezer,
                        "memory" => resources.is_some_and(|r| r.memory().is_some()),
                        "cpu" | "cpuacct" => resources.is_some_and(|r| r.cpu().is_some()),
                        "devices" => resources
                            .is_some_and(|r| r.devices().as_ref().is_some_and(|d| !d.is_empty())),
                        _ => false,
                    })
                    .collect(),
            ),
            v2 => v2,
        };
        let result = cg.setup(&layout, path, resources);
        match result {
            Ok(()) => Ok(Some(cg)),
            Err(e) => {
                cg.destroy();
                Err(e)
            }
        }
    }

    fn mkdir(&mut self, dir: &Path) -> Result<(), SandboxError> {
        let mut missing = Vec::new();
        let mut cur = dir.to_path_buf();
        while !cur.exists() {
            missing.push(cur.clone());
            if !cur.pop() {
                break;
            }
        }
        for d in missing.into_iter().rev() {
            match fs::create_dir(&d) {
                Ok(()) => self.created.push(d),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(SandboxError::Cgroup { path: d, source }),
            }
        }
        Ok(())
    }

    fn setup(
        &mut self,
        layout: &Layout,
        path: &Path,
        resources: Option<&LinuxResources>,
    ) -> Result<(), SandboxError> {
        match layout {
            Layout::V2 { mount, own } => {
                let base = if path.is_absolute() {
                    mount.clone()
                } else {
                    mount.join(rel(own))
                };
                let dir = base.join(rel(path));
                // Enable the controllers we need from the root down.
                let wanted = ["memory", "pids", "cpu"];
                let mut cur = mount.clone();
                let parent = dir.parent().unwrap_or(mount).to_path_buf();
                let mut chain = vec![cur.clone()];
                for comp in parent
                    .strip_prefix(mount)
                    .unwrap_or(Path::new(""))
                    .components()
                {
                    cur.push(comp);
                    chain.push(cur.clone());
                }
                self.mkdir(&parent)?;
                for d in chain {
                    let available =
                        fs::read_to_string(d.join("cgroup.controllers")).unwrap_or_default();
                    for c in wanted {
                        if available.split_whitespace().any(|a| a == c) {
                            let _ = fs::write(d.join("cgroup.subtree_control"), format!("+{c}"));
                        }
                    }
                }
                self.mkdir(&dir)?;
                self.dirs.push(("unified".into(), dir.clone()));
                if let Some(r) = resources {
                    apply_v2(&dir, r)?;
                }
            }
            Layout::V1(hierarchies) => {
                let mut seen: Vec<PathBuf> = Vec::new();
                for (ctrl, mount, own) in hierarchies {
                    let base = if path.is_absolute() {
                        mount.clone()
                    } else {
                        mount.join(rel(own))
                    };
                    let dir = base.join(rel(path));
                    if !seen.contains(&dir) {
                        self.mkdir(&dir)?;
                        seen.push(dir.clone());
                    }
                    self.dirs.push((ctrl.clone(), dir));
                }
                if let Some(r) = resources {
                    self.apply_v1(r)?;
                }
            }
        }
        Ok(())
    }

    fn dir(&self, ctrl: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| c == ctrl || c == "unified")
            .map(|(_, d)| d.as_path())
    }

    fn apply_v1(&self, r: &LinuxResources) -> Result<(), SandboxError> {
        if let (Some(m), Some(dir)) = (r.memory(), self.dir("memory")) {
            if let Some(limit) = m.limit() {
                write(&dir.join("memory.limit_in_bytes"), &limit.to_string())?;
                // Without a swap limit, swap is capped at the memory limit
                // (as runc does: memory+swap = limit means no swap).
                let swap = m.swap().unwrap_or(limit);
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &swap.to_string())?;
                }
            }
            if let Some(res) = m.reservation() {
                write(&dir.join("memory.soft_limit_in_bytes"), &res.to_string())?;
            }
            if let Some(sw) = m.swappiness() {
                let _ = fs::write(dir.join("memory.swappiness"), sw.to_string());
            }
            if m.disable_oom_killer() == Some(true) {
                write(&dir.join("memory.oom_control"), "1")?;
            }
        }
        if let (Some(p), Some(dir)) = (r.pids(), self.dir("pids")) {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".into()
            };
            write(&dir.join("pids.max"), &v)?;
        }
        if let (Some(c), Some(dir)) = (r.cpu(), self.dir("cpu")) {
            if let Some(s) = c.shares() {
                write(&dir.join("cpu.shares"), &s.to_string())?;
            }
            if let Some(p) = c.period() {
                write(&dir.join("cpu.cfs_period_us"), &p.to_string())?;
            }
            if let Some(q) = c.quota() {
                write(&dir.join("cpu.cfs_quota_us"), &q.to_string())?;
            }
        }
        if let (Some(devices), Some(dir)) = (r.devices(), self.dir("devices")) {
            for d in devices {
                let typ = d
                    .typ()
                    .map(|t| t.as_str().to_string())
                    .unwrap_or("a".into());
                let major = d.major().map(|m| m.to_string()).unwrap_or("*".into());
                let minor = d.minor().map(|m| m.to_string()).unwrap_or("*".into());
                let access = d.access().clone().unwrap_or_else(|| "rwm".into());
                let rule = if typ == "a" {
                    "a".to_string()
                } else {
                    format!("{typ} {major}:{minor} {access}")
                };
                let file = if d.allow() {
                    "devices.allow"
                } else {
                    "devices.deny"
                };
                write(&dir.join(file), &rule)?;
            }
        }
        Ok(())
    }

    /// Moves `pid` into the cgroup.
    pub fn add(&self, pid: i32) -> Result<(), SandboxError> {
        let mut done: Vec<&Path> = Vec::new();
        for (_, dir) in &self.dirs {
            if done.contains(&dir.as_path()) {
                continue;
            }
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
            done.push(dir);
        }
        Ok(())
    }

    /// Whether the kernel's OOM killer killed a process in this cgroup.
    pub fn oom_killed(&self) -> bool {
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        let Some(dir) = self.dir("memory") else {
            return false;
        };
        fs::read_to_string(dir.join(file))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .any(|(k, v)| k == key && v.trim().parse::<u64>().unwrap_or(0) > 0)
    }

    /// The processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let dir = if self.v2 {
            self.dir("unified")
        } else {
            self.dir("pids").or_else(|| self.dir("memory"))
        };
        let Some(dir) = dir else { return Vec::new() };
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Sends SIGKILL to every process in the cgroup (freezing it first on v1
    /// so no process can fork away from the kill).
    pub fn kill_all(&self) {
        if self.v2 {
            if let Some(dir) = self.dir("unified") {
                if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                    return;
                }
            }
        }
        let freezer = self.dir("freezer").filter(|_| !self.v2);
        if let Some(f) = freezer {
            let _ = fs::write(f.join("freezer.state"), "FROZEN");
        }
        for pid in self.pids() {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(f) = freezer {
            let _ = fs::write(f.join("freezer.state"), "THAWED");
        }
    }

    /// Kills what is left and removes the directories created for it.
    pub fn destroy(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        if !self.pids().is_empty() {
            self.kill_all();
        }
        for dir in self.created.iter().rev() {
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() < deadline => {
                        tracing::trace!(dir = %dir.display(), error = %e, "cgroup busy, retrying");
                        self.kill_all();
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove cgroup");
                        break;
                    }
                }
            }
        }
    }
}

fn apply_v2(dir: &Path, r: &LinuxResources) -> Result<(), SandboxError> {
    if let Some(m) = r.memory() {
        if let Some(limit) = m.limit() {
            let v = if limit < 0 {
                "max".to_string()
            } else {
                limit.to_string()
            };
            write(&dir.join("memory.max"), &v)?;
            // v1's swap is memory+swap; v2's is swap alone.
            let swap = m.swap().map(|s| s - limit.max(0)).unwrap_or(0);
            let f = dir.join("memory.swap.max");
            if f.exists() {
                write(&f, &swap.max(0).to_string())?;
            }
        }
        if let Some(res) = m.reservation() {
            write(&dir.join("memory.low"), &res.to_string())?;
        }
    }
    if let Some(p) = r.pids() {
        let v = if p.limit() > 0 {
            p.limit().to_string()
        } else {
            "max".into()
        };
        write(&dir.join("pids.max"), &v)?;
    }
    if let Some(c) = r.cpu() {
        if let Some(s) = c.shares() {
            let weight = 1 + (s.clamp(2, 262_144) - 2) * 9999 / 262_142;
            write(&dir.join("cpu.weight"), &weight.to_string())?;
        }
        if c.quota().is_some() || c.period().is_some() {
            let q = match c.quota() {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".into(),
            };
            let p = c.period().unwrap_or(100_000);
            write(&dir.join("cpu.max"), &format!("{q} {p}"))?;
        }
    }
    if let Some(u) = r.unified() {
        for (k, v) in u {
            write(&dir.join(k), v)?;
        }
    }
    Ok(())
}
