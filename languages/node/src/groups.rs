//! `node_modules` split into layers by package, from the lockfile.
//!
//! A package-lock.json (or npm-shrinkwrap.json) of lockfileVersion 2 or 3
//! lists every installed package by its path (`node_modules/a`,
//! `node_modules/a/node_modules/b`) with its `resolved` tarball and its
//! `integrity`. Each top-level directory of `node_modules` (`a`, or
//! `@scope/a`) and everything below it (its nested packages) belongs to
//! one of [`BUCKETS`] groups, chosen by a stable hash of its name, so a
//! package always lands in the same group whatever else the app depends
//! on. A group's layer is keyed by the lock entries of its packages (and
//! the node, npm, platform and configuration the whole install is keyed
//! by), so an added package changes the groups of the directories it
//! adds or moves, usually one to three, and every other group is a cache
//! hit. What no group owns (`.bin` links, npm's hidden lockfile
//! `.package-lock.json`, a directory no lock entry names) is the
//! `node_modules` layer, keyed by the whole lockfile as before.
//!
//! A package with an install script (`hasInstallScript`) runs it with the
//! packages it depends on present; its group's key names the lock entries
//! of everything it can `require` (its dependency closure, resolved as
//! node does, upward through `node_modules`), so a change to one of those
//! rebuilds it. Since a script may write into any package's directory,
//! every group's key also names every script's package and closure: in an
//! app whose packages run install scripts, a change to one of those
//! rebuilds every group.
//!
//! Lockfiles whose tree cannot be attributed to entries exactly (no
//! lockfile, yarn.lock, lockfileVersion 1, `link` entries of local or
//! workspace packages, git or file dependencies, entries without
//! `resolved` and `integrity`) install into one layer, and the plan's
//! notes say why.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use crate::package::{LockKind, Lockfile};

/// How many groups `node_modules` is split into at most: with the base's
/// layers, the `node_modules` layer and the app's, an image stays well
/// under the ~127 layers overlayfs and containerd accept.
pub(crate) const BUCKETS: u32 = 32;

/// One group of packages: one layer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Group {
    pub bucket: u32,
    /// Its top-level directories below `node_modules` (`a`, `@s/b`).
    pub tops: BTreeSet<String>,
    /// What its layer's key names beyond the install's identity: the lock
    /// entries of its packages by path, and those its install scripts can
    /// reach.
    pub key_doc: Value,
    /// `a@1.0.0, b@2.1.0 (+3)`, for the layer's name.
    pub label: String,
}

/// The group a top-level directory of `node_modules` belongs to.
pub(crate) fn bucket_of(top: &str) -> u32 {
    let hex = ftl::sha256_tagged(top.as_bytes());
    let hex = hex.trim_start_matches("sha256:");
    u32::from_str_radix(&hex[..8], 16).unwrap_or(0) % BUCKETS
}

/// The top-level directory of a lock path `node_modules/a/...`
/// (`node_modules/@s/b/...`): `a` (`@s/b`).
fn top_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("node_modules/")?;
    let mut parts = rest.split('/');
    let first = parts.next()?;
    if first.starts_with('@') {
        Some(format!("{first}/{}", parts.next()?))
    } else {
        Some(first.to_string())
    }
}

/// The lock path `name` resolves to from the package at `from` (`""`:
/// the root), as node's `require` finds it: `from/node_modules/name`,
/// then each enclosing `node_modules` up to the top.
fn resolve(packages: &Map<String, Value>, from: &str, name: &str) -> Option<String> {
    let mut base = from.to_string();
    loop {
        let cand = if base.is_empty() {
            format!("node_modules/{name}")
        } else {
            format!("{base}/node_modules/{name}")
        };
        if packages.contains_key(&cand) {
            return Some(cand);
        }
        if base.is_empty() {
            return None;
        }
        match base.rfind("/node_modules/") {
            Some(i) => base.truncate(i),
            None => base.clear(),
        }
    }
}

/// The lock paths the package at `path` can reach through its
/// dependencies (transitively), `path` included.
fn closure(packages: &Map<String, Value>, path: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![path.to_string()];
    while let Some(p) = todo.pop() {
        if !seen.insert(p.clone()) {
            continue;
        }
        let Some(entry) = packages.get(&p) else {
            continue;
        };
        for section in ["dependencies", "optionalDependencies", "peerDependencies"] {
            for name in entry
                .get(section)
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(|m| m.keys())
            {
                if let Some(dep) = resolve(packages, &p, name) {
                    todo.push(dep);
                }
            }
        }
    }
    seen
}

/// The groups of the production install of `lock`, in bucket order, or
/// why it installs into one layer.
pub(crate) fn split(lock: Option<&Lockfile>) -> Result<Vec<Group>, String> {
    let Some(lock) = lock else {
        return Err("there is no lockfile: npm resolves the tree in the sandbox".into());
    };
    if lock.kind == LockKind::Yarn {
        return Err("yarn.lock: yarn installs the tree; only npm lockfiles are split".into());
    }
    let file = lock.kind.file();
    let value: Value = serde_json::from_slice(&lock.bytes)
        .map_err(|e| format!("{file} is not valid JSON: {e}"))?;
    let version = value
        .get("lockfileVersion")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let packages = match value.get("packages").and_then(Value::as_object) {
        Some(p) if version >= 2 => p,
        _ => {
            return Err(format!(
                "{file} is lockfileVersion {version}, which has no `packages` paths \
                 (npm 7 and later write version 3: `npm install --lockfile-version 3`)"
            ))
        }
    };
    let mut groups: BTreeMap<u32, (BTreeSet<String>, BTreeMap<String, Value>)> = BTreeMap::new();
    let mut scripts: Vec<(u32, &str)> = Vec::new();
    for (path, entry) in packages {
        if path.is_empty() {
            continue;
        }
        let flag = |k: &str| entry.get(k).and_then(Value::as_bool).unwrap_or(false);
        if flag("dev") {
            continue;
        }
        let Some(top) = top_of(path) else {
            return Err(format!(
                "{file}: `{path}` is a package outside node_modules (a workspace or local package)"
            ));
        };
        if flag("link") {
            return Err(format!(
                "{file}: `{path}` is a link to `{}` (a local or workspace package)",
                entry.get("resolved").and_then(Value::as_str).unwrap_or("?")
            ));
        }
        if !flag("inBundle") {
            let resolved = entry.get("resolved").and_then(Value::as_str);
            let integrity = entry.get("integrity").and_then(Value::as_str);
            match (resolved, integrity) {
                (Some(r), Some(_)) if r.starts_with("https://") || r.starts_with("http://") => {}
                (Some(r), _) if !(r.starts_with("https://") || r.starts_with("http://")) => {
                    return Err(format!(
                        "{file}: `{path}` comes from `{r}`, not a registry tarball (a git or file dependency)"
                    ))
                }
                _ => {
                    return Err(format!(
                        "{file}: `{path}` has no `resolved` tarball and `integrity`"
                    ))
                }
            }
        }
        let bucket = bucket_of(&top);
        let g = groups.entry(bucket).or_default();
        g.0.insert(top);
        g.1.insert(path.clone(), entry.clone());
        if flag("hasInstallScript") {
            scripts.push((bucket, path));
        }
    }
    // What an install script can read: the entries of its closure.
    let mut reach: BTreeMap<u32, BTreeMap<String, Value>> = BTreeMap::new();
    // A script may write anywhere in node_modules, into another group's
    // packages too: every group is keyed by every script's package and
    // closure (an app whose packages run no script, most of them, keeps
    // its groups apart).
    let mut anywhere: BTreeMap<String, Value> = BTreeMap::new();
    for (bucket, path) in scripts {
        for p in closure(packages, path) {
            if let Some(e) = packages.get(&p) {
                reach
                    .entry(bucket)
                    .or_default()
                    .insert(p.clone(), e.clone());
                anywhere.insert(p, e.clone());
            }
        }
        if let Some(e) = packages.get(path) {
            anywhere.insert(path.to_string(), e.clone());
        }
    }
    Ok(groups
        .into_iter()
        .map(|(bucket, (tops, entries))| {
            let mut names: Vec<String> = entries
                .iter()
                .filter(|(p, _)| top_of(p).is_some_and(|t| format!("node_modules/{t}") == **p))
                .map(|(p, e)| {
                    format!(
                        "{}@{}",
                        p.trim_start_matches("node_modules/"),
                        e.get("version").and_then(Value::as_str).unwrap_or("?")
                    )
                })
                .collect();
            let more = names.len().saturating_sub(3);
            names.truncate(3);
            let label = if more > 0 {
                format!("{} (+{more})", names.join(", "))
            } else {
                names.join(", ")
            };
            let mut key_doc = json!({"bucket": bucket, "of": BUCKETS, "entries": entries});
            if let Some(r) = reach.remove(&bucket) {
                key_doc["scripts_reach"] = json!(r);
            }
            if !anywhere.is_empty() {
                key_doc["scripts_anywhere"] = json!(anywhere);
            }
            Group {
                bucket,
                tops,
                key_doc,
                label,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(v: Value) -> Lockfile {
        Lockfile {
            kind: LockKind::PackageLock,
            bytes: serde_json::to_vec(&v).unwrap(),
        }
    }

    fn entry(name: &str, version: &str) -> Value {
        json!({
            "version": version,
            "resolved": format!("https://registry.npmjs.org/{name}/-/{name}-{version}.tgz"),
            "integrity": "sha512-AAAA",
        })
    }

    #[test]
    fn tops_and_resolution() {
        assert_eq!(top_of("node_modules/a").as_deref(), Some("a"));
        assert_eq!(
            top_of("node_modules/@s/b/node_modules/c").as_deref(),
            Some("@s/b")
        );
        assert_eq!(top_of("packages/x"), None);
        let pk: Map<String, Value> = serde_json::from_value(json!({
            "node_modules/a": {"dependencies": {"b": "1", "c": "1"}},
            "node_modules/a/node_modules/b": {"dependencies": {"d": "1"}},
            "node_modules/b": {},
            "node_modules/c": {},
            "node_modules/d": {},
            "node_modules/e": {},
        }))
        .unwrap();
        assert_eq!(
            resolve(&pk, "node_modules/a/node_modules/b", "c").as_deref(),
            Some("node_modules/c")
        );
        assert_eq!(
            resolve(&pk, "node_modules/a", "b").as_deref(),
            Some("node_modules/a/node_modules/b")
        );
        assert_eq!(
            closure(&pk, "node_modules/a")
                .into_iter()
                .collect::<Vec<_>>(),
            [
                "node_modules/a",
                "node_modules/a/node_modules/b",
                "node_modules/c",
                "node_modules/d"
            ]
        );
    }

    /// Adding a package changes the keys of the groups of the directories
    /// it adds or moves, and no other; dev entries are in none.
    #[test]
    fn an_added_package_changes_only_its_groups() {
        let mut pk = json!({"": {"dependencies": {}}});
        for i in 0..40 {
            pk[format!("node_modules/p{i}")] = entry(&format!("p{i}"), "1.0.0");
        }
        pk["node_modules/devonly"] = json!({"dev": true});
        let before = split(Some(&lock(
            json!({"lockfileVersion": 3, "packages": pk.clone()}),
        )))
        .unwrap();
        assert!(before.len() <= BUCKETS as usize && before.len() > 10);
        assert!(before.iter().all(|g| !g.tops.contains("devonly")));
        pk["node_modules/added"] = entry("added", "2.0.0");
        let after = split(Some(&lock(json!({"lockfileVersion": 3, "packages": pk})))).unwrap();
        let changed: Vec<u32> = after
            .iter()
            .filter(|g| !before.contains(g))
            .map(|g| g.bucket)
            .collect();
        assert_eq!(changed, [bucket_of("added")]);
    }

    /// A group with an install script is keyed by what the script can
    /// reach, in other groups too.
    #[test]
    fn install_scripts_are_keyed_by_their_closure() {
        let mut pk = json!({"": {}});
        pk["node_modules/native"] = entry("native", "1.0.0");
        pk["node_modules/native"]["hasInstallScript"] = json!(true);
        pk["node_modules/native"]["dependencies"] = json!({"helper": "^1"});
        pk["node_modules/helper"] = entry("helper", "1.0.0");
        let key = |pk: &Value| {
            split(Some(&lock(json!({"lockfileVersion": 2, "packages": pk}))))
                .unwrap()
                .into_iter()
                .find(|g| g.tops.contains("native"))
                .unwrap()
                .key_doc
        };
        let a = key(&pk);
        pk["node_modules/helper"] = entry("helper", "1.0.1");
        assert_ne!(a, key(&pk));
    }

    #[test]
    fn lockfiles_it_cannot_honour_fall_back_with_a_reason() {
        let why = |v: Value| split(Some(&lock(v))).unwrap_err();
        assert!(
            why(json!({"lockfileVersion": 1, "dependencies": {}})).contains("lockfileVersion 1")
        );
        let git = json!({"lockfileVersion": 3, "packages": {"node_modules/g": {
            "version": "1.0.0", "resolved": "git+ssh://git@github.com/a/g.git#abc"}}});
        assert!(why(git).contains("git or file dependency"));
        let link = json!({"lockfileVersion": 3, "packages": {
            "node_modules/l": {"resolved": "libs/l", "link": true}}});
        assert!(why(link).contains("link"));
        let bare =
            json!({"lockfileVersion": 3, "packages": {"node_modules/x": {"version": "1.0.0"}}});
        assert!(why(bare).contains("no `resolved`"));
        assert!(split(None).unwrap_err().contains("no lockfile"));
        let yarn = Lockfile {
            kind: LockKind::Yarn,
            bytes: Vec::new(),
        };
        assert!(split(Some(&yarn)).unwrap_err().contains("yarn"));
        // Bundled dependencies come with their parent's tarball.
        let mut ok = json!({"lockfileVersion": 3, "packages": {}});
        ok["packages"]["node_modules/p"] = entry("p", "1.0.0");
        ok["packages"]["node_modules/p/node_modules/b"] =
            json!({"version": "1.0.0", "inBundle": true});
        assert_eq!(split(Some(&lock(ok))).unwrap().len(), 1);
    }
}
