//! Memoized probes of the base image.
//!
//! Plugins read the interpreter's version and ABI by running it in the
//! sandbox on the base rootfs. The answer is a function of the base image's
//! digest and the command, so it is kept: locally, and in the registry cache
//! repository, so that a machine with an empty local cache plans without
//! downloading the base's layers.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ftl_registry_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{regcache, SandboxExec};
use crate::key::CacheKey;
use crate::plugin::{
    CacheTrust, Exec, ExecOutput, ExecRequest, PluginError, Remembered, StepNetwork, StepRoot,
};

#[derive(Serialize, Deserialize)]
struct Memo {
    code: i32,
    stdout: String,
    stderr: String,
}

pub(crate) struct ProbeExec {
    inner: Arc<SandboxExec>,
    dir: PathBuf,
    base_digest: String,
    client: Client,
    cache_repo: Option<Reference>,
    handle: tokio::runtime::Handle,
    pending: Mutex<Vec<(String, Vec<u8>)>>,
    memos: Memos,
}

/// Where and how [`Exec::remember`] keeps values.
pub(crate) struct Memos {
    /// `<cache>/memos-v1`.
    pub dir: PathBuf,
    /// The build's cache scope: a value remembered in one scope is never
    /// read in another.
    pub scope: Option<String>,
    /// `--no-cache`: nothing is read (values are still recorded).
    pub no_cache: bool,
    /// How long a value of unpinned inputs lives.
    pub ttl: std::time::Duration,
    pub pending: Mutex<Vec<(String, Vec<u8>)>>,
}

/// A remembered value as stored, locally and in the registry cache.
#[derive(Serialize, Deserialize)]
struct MemoEnvelope {
    created: u64,
    /// Unix seconds; `None`: never.
    expires: Option<u64>,
    value: serde_json::Value,
}

impl Memos {
    fn key(&self, key: &CacheKey) -> CacheKey {
        match &self.scope {
            Some(scope) => key.with_input("cache_scope", json!(scope)),
            None => key.clone(),
        }
    }
}

impl ProbeExec {
    pub fn new(
        inner: Arc<SandboxExec>,
        dir: PathBuf,
        base_digest: String,
        client: Client,
        cache_repo: Option<Reference>,
        handle: tokio::runtime::Handle,
        memos: Memos,
    ) -> Self {
        ProbeExec {
            inner,
            dir,
            base_digest,
            client,
            cache_repo,
            handle,
            pending: Mutex::new(Vec::new()),
            memos,
        }
    }

    fn key(&self, req: &ExecRequest) -> CacheKey {
        CacheKey::new(
            "probe",
            1,
            json!({"base": self.base_digest, "args": req.args, "env": req.env, "cwd": req.cwd}),
        )
    }

    /// Writes new probe results and remembered values to the registry
    /// cache.
    pub async fn flush_to_registry(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().expect("not poisoned"));
        let memos = std::mem::take(&mut *self.memos.pending.lock().expect("not poisoned"));
        if let Some(repo) = &self.cache_repo {
            for (key, bytes) in pending {
                regcache::record_probe(&self.client, repo, &key, &bytes).await;
            }
            for (key, bytes) in memos {
                regcache::record_memo(&self.client, repo, &key, &bytes).await;
            }
        }
    }
}

impl Exec for ProbeExec {
    fn run(&self, req: &ExecRequest) -> Result<ExecOutput, PluginError> {
        // Only pure probes of the base are memoized: no network, nothing
        // mounted, on the base's root (the key names the base digest).
        if req.network != StepNetwork::None || !req.mounts.is_empty() || req.root != StepRoot::Base
        {
            return self.inner.run(req);
        }
        let key = self.key(req);
        let path = self.dir.join(format!("{}.json", key.hex));
        let to_output = |m: Memo| ExecOutput {
            code: Some(m.code),
            stdout: m.stdout.into_bytes(),
            stderr: m.stderr.into_bytes(),
            ..Default::default()
        };
        if let Some(m) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Memo>(&b).ok())
        {
            return Ok(to_output(m));
        }
        if let Some(repo) = &self.cache_repo {
            if let Some(bytes) =
                self.handle
                    .block_on(regcache::lookup_probe(&self.client, repo, &key.hex))
            {
                if let Ok(m) = serde_json::from_slice::<Memo>(&bytes) {
                    store(&self.dir, &path, &bytes);
                    return Ok(to_output(m));
                }
            }
        }
        let out = self.inner.run(req)?;
        if out.success() {
            let memo = Memo {
                code: 0,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
            let bytes = serde_json::to_vec(&memo).expect("serializes");
            store(&self.dir, &path, &bytes);
            self.pending
                .lock()
                .expect("not poisoned")
                .push((key.hex, bytes));
        }
        Ok(out)
    }

    fn start_resident(
        &self,
        name: &str,
        request: &ExecRequest,
    ) -> Result<(PathBuf, bool), PluginError> {
        self.inner.start_resident(name, request)
    }

    fn remembered(&self, key: &CacheKey) -> Option<Remembered> {
        if self.memos.no_cache {
            return None;
        }
        let key = self.memos.key(key);
        let path = self.memos.dir.join(format!("{}.json", key.hex));
        let now = ftl_cache::now_secs();
        // Expired by the TTL it was stored with, or by this build's
        // (`--cache-ttl` lowered since).
        let ttl = self.memos.ttl.as_secs();
        let fresh = |bytes: &[u8]| {
            serde_json::from_slice::<MemoEnvelope>(bytes)
                .ok()
                .filter(|m| m.expires.is_none_or(|e| now < e && now < m.created + ttl))
        };
        let remembered = |m: MemoEnvelope| Remembered {
            value: m.value,
            created: m.created,
            expires: m.expires,
        };
        if let Some(m) = std::fs::read(&path).ok().as_deref().and_then(fresh) {
            // Its mtime is its last use, for `ftl cache gc`.
            if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            return Some(remembered(m));
        }
        let repo = self.cache_repo.as_ref()?;
        let bytes = self
            .handle
            .block_on(regcache::lookup_memo(&self.client, repo, &key.hex))?;
        let m = fresh(&bytes)?;
        store(&self.memos.dir, &path, &bytes);
        Some(remembered(m))
    }

    fn remember(&self, key: &CacheKey, value: &serde_json::Value, pinned: bool) -> Option<u64> {
        let key = self.memos.key(key);
        let created = ftl_cache::now_secs();
        let expires = (!pinned).then(|| created + self.memos.ttl.as_secs());
        let envelope = MemoEnvelope {
            created,
            expires,
            value: value.clone(),
        };
        let bytes = serde_json::to_vec(&envelope).expect("serializes");
        let path = self.memos.dir.join(format!("{}.json", key.hex));
        store(&self.memos.dir, &path, &bytes);
        self.memos
            .pending
            .lock()
            .expect("not poisoned")
            .push((key.hex, bytes));
        expires
    }

    fn step_done(&self, label: &str, took: std::time::Duration) {
        self.inner.step_done(label, took)
    }

    fn persistent_dir(&self, name: &str) -> Result<PathBuf, PluginError> {
        self.inner.persistent_dir(name)
    }

    fn package_cache(&self, name: &str, trust: CacheTrust) -> Result<PathBuf, PluginError> {
        self.inner.package_cache(name, trust)
    }

    fn package_cache_dir(&self, name: &str, trust: CacheTrust) -> Result<PathBuf, PluginError> {
        self.inner.package_cache_dir(name, trust)
    }
}

fn store(dir: &std::path::Path, path: &std::path::Path, bytes: &[u8]) {
    let _ = std::fs::create_dir_all(dir);
    if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) {
        use std::io::Write;
        if tmp.write_all(bytes).is_ok() {
            let _ = tmp.persist(path);
        }
    }
}

/// Removes remembered values under `<cache>/memos-v1` that expired, or
/// that no build used in `keep_secs`; returns how many.
pub fn gc_memos(cache_dir: &std::path::Path, keep_secs: u64) -> usize {
    let now = ftl_cache::now_secs();
    let Ok(rd) = std::fs::read_dir(cache_dir.join("memos-v1")) else {
        return 0;
    };
    let mut removed = 0;
    for entry in rd.flatten() {
        let path = entry.path();
        let used = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let expired = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<MemoEnvelope>(&b).ok())
            .is_none_or(|m| m.expires.is_some_and(|e| now >= e));
        if (expired || now.saturating_sub(used) > keep_secs) && std::fs::remove_file(&path).is_ok()
        {
            removed += 1;
        }
    }
    removed
}
