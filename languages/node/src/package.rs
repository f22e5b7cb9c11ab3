//! package.json and lockfiles: parsing with file/line errors, the fields
//! that change an install, and the check that the lockfile is in sync.

use std::collections::BTreeMap;
use std::path::Path;

use ftl::PluginError;
use serde_json::{Map, Value};

/// The dependency sections of package.json, in npm's order.
pub const DEP_SECTIONS: &[&str] = &["dependencies", "devDependencies", "optionalDependencies"];

/// The scripts of the root package that `npm ci` runs, in its order
/// (npm's docs, "Life Cycle Operation Order": `npm ci`).
pub const LIFECYCLE: &[&str] = &[
    "preinstall",
    "install",
    "postinstall",
    "prepublish",
    "preprepare",
    "prepare",
    "postprepare",
];

/// Fields of package.json that change what an install puts in
/// `node_modules` (besides the lockfile).
pub const INSTALL_FIELDS: &[&str] = &[
    "name",
    "version",
    "dependencies",
    "devDependencies",
    "optionalDependencies",
    "peerDependencies",
    "peerDependenciesMeta",
    "bundleDependencies",
    "bundledDependencies",
    "overrides",
    "resolutions",
    "workspaces",
    "engines",
    "os",
    "cpu",
];

/// Parses a JSON file, turning a syntax error into one naming the file,
/// line and column.
pub fn parse_json(file: &str, text: &str) -> Result<Value, PluginError> {
    serde_json::from_str::<Value>(text).map_err(|e| {
        let line = e.line().max(1);
        PluginError::new(format!(
            "invalid JSON at line {}, column {}: {}",
            line,
            e.column(),
            strip_position(&e.to_string())
        ))
        .in_file(file, Some(line))
        .hint(format!(
            "fix the syntax of {file} (check for a missing or extra comma, or an unquoted key)"
        ))
    })
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// package.json, parsed.
#[derive(Debug, Clone)]
pub struct PackageJson {
    pub text: String,
    pub value: Map<String, Value>,
}

impl PackageJson {
    pub fn parse(text: &str) -> Result<PackageJson, PluginError> {
        let value = parse_json("package.json", text)?;
        let Value::Object(map) = value else {
            return Err(PluginError::new("package.json must hold a JSON object")
                .in_file("package.json", Some(1)));
        };
        let pkg = PackageJson {
            text: text.to_string(),
            value: map,
        };
        for section in DEP_SECTIONS {
            if let Some(v) = pkg.value.get(*section) {
                let ok = v
                    .as_object()
                    .is_some_and(|m| m.values().all(Value::is_string));
                if !ok {
                    return Err(PluginError::new(format!(
                        "`{section}` must be an object of package names to version ranges"
                    ))
                    .in_file("package.json", pkg.line_of_key(section, None)));
                }
            }
        }
        Ok(pkg)
    }

    /// `section`'s entries (name -> spec).
    pub fn deps(&self, section: &str) -> BTreeMap<String, String> {
        self.value
            .get(section)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether anything is installed in production.
    pub fn has_prod_deps(&self) -> bool {
        ["dependencies", "optionalDependencies"]
            .iter()
            .any(|s| !self.deps(s).is_empty())
    }

    pub fn script(&self, name: &str) -> Option<&str> {
        self.value
            .get("scripts")
            .and_then(|s| s.get(name))
            .and_then(Value::as_str)
    }

    /// The root lifecycle scripts package.json defines that an install
    /// (`npm ci`, `yarn install`) runs in the app directory, in the order
    /// npm runs them ([`LIFECYCLE`]).
    pub fn lifecycle_scripts(&self) -> Vec<&'static str> {
        LIFECYCLE
            .iter()
            .copied()
            .filter(|s| self.script(s).is_some_and(|c| !c.trim().is_empty()))
            .collect()
    }

    pub fn main(&self) -> Option<&str> {
        self.value
            .get("main")
            .and_then(Value::as_str)
            .filter(|m| !m.trim().is_empty())
    }

    /// The fields that change an install, as one JSON object.
    pub fn install_fields(&self) -> Value {
        let mut m = Map::new();
        for f in INSTALL_FIELDS {
            if let Some(v) = self.value.get(*f) {
                m.insert((*f).to_string(), v.clone());
            }
        }
        Value::Object(m)
    }

    /// package.json without `scripts` (what the dependency install sees:
    /// the app's own lifecycle scripts need its source, which that step
    /// does not have).
    pub fn without_scripts(&self) -> String {
        let mut m = self.value.clone();
        m.remove("scripts");
        serde_json::to_string_pretty(&Value::Object(m)).expect("serializes") + "\n"
    }

    /// The 1-based line of `"key":`, inside the object `"section":` when
    /// given. A small scan, good enough for messages.
    pub fn line_of_key(&self, key: &str, section: Option<&str>) -> Option<usize> {
        line_of_key(&self.text, key, section)
    }

    /// The line of package `name` in the first dependency section that
    /// names it.
    pub fn line_of_dep(&self, name: &str) -> Option<usize> {
        DEP_SECTIONS
            .iter()
            .chain(["peerDependencies"].iter())
            .find_map(|s| {
                self.deps(s)
                    .contains_key(name)
                    .then(|| self.line_of_key(name, Some(s)))
                    .flatten()
            })
    }
}

/// The 1-based line of `"key":` in `text`, at or after the line of
/// `"section":` when given (falling back to anywhere).
pub fn line_of_key(text: &str, key: &str, section: Option<&str>) -> Option<usize> {
    fn key_at(line: &str, needle: &str) -> Option<usize> {
        let mut from = 0;
        while let Some(i) = line[from..].find(needle) {
            let end = from + i + needle.len();
            if line[end..].trim_start().starts_with(':') {
                return Some(end);
            }
            from = end;
        }
        None
    }
    let needle = format!("\"{key}\"");
    let Some(section) = section else {
        return text
            .lines()
            .position(|l| key_at(l, &needle).is_some())
            .map(|i| i + 1);
    };
    let s = format!("\"{section}\"");
    let found = text.lines().enumerate().find_map(|(i, l)| {
        let after = key_at(l, &s)?;
        // The key may be on the section's own line (`"deps": {"a": "1"}`).
        if key_at(&l[after..], &needle).is_some() {
            return Some(i + 1);
        }
        text.lines()
            .enumerate()
            .skip(i + 1)
            .find(|(_, l)| key_at(l, &needle).is_some())
            .map(|(j, _)| j + 1)
    });
    found.or_else(|| line_of_key(text, key, None))
}

/// Which lockfile drives the install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Shrinkwrap,
    PackageLock,
    Yarn,
}

impl LockKind {
    pub fn file(self) -> &'static str {
        match self {
            LockKind::Shrinkwrap => "npm-shrinkwrap.json",
            LockKind::PackageLock => "package-lock.json",
            LockKind::Yarn => "yarn.lock",
        }
    }

    pub fn is_npm(self) -> bool {
        self != LockKind::Yarn
    }
}

/// A lockfile of the app.
#[derive(Debug, Clone)]
pub struct Lockfile {
    pub kind: LockKind,
    pub bytes: Vec<u8>,
}

/// Checks that an npm lockfile records every dependency of package.json
/// with the same spec, as `npm ci` requires; the error names the package
/// and its line in package.json.
pub fn check_npm_lock_in_sync(
    pkg: &PackageJson,
    kind: LockKind,
    lock_text: &str,
) -> Result<(), PluginError> {
    let file = kind.file();
    let lock = parse_json(file, lock_text)?;
    let Some(lock) = lock.as_object() else {
        return Err(
            PluginError::new(format!("{file} must hold a JSON object")).in_file(file, Some(1))
        );
    };
    let out_of_sync = |name: &str, what: String| {
        PluginError::new(format!(
            "{file} is out of sync with package.json: {what}"
        ))
        .in_file("package.json", pkg.line_of_dep(name))
        .hint(format!(
            "run `npm install` to update {file} and add it to the app (npm ci installs only what the lockfile records)"
        ))
    };
    let root = lock
        .get("packages")
        .and_then(|p| p.get(""))
        .and_then(Value::as_object);
    if let Some(root) = root {
        // lockfileVersion 2 and 3: the root package's own dependency lists.
        for section in DEP_SECTIONS {
            let want = pkg.deps(section);
            let have: BTreeMap<String, String> = root
                .get(*section)
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            for (name, spec) in &want {
                match have.get(name) {
                    None => {
                        return Err(out_of_sync(
                            name,
                            format!("`{name}@{spec}` ({section}) is missing from the lockfile"),
                        ))
                    }
                    Some(locked) if locked != spec => {
                        return Err(out_of_sync(
                            name,
                            format!(
                            "`{name}` is `{spec}` in package.json but `{locked}` in the lockfile"
                        ),
                        ))
                    }
                    _ => {}
                }
            }
            if let Some(extra) = have.keys().find(|k| !want.contains_key(*k)) {
                return Err(PluginError::new(format!(
                    "{file} is out of sync with package.json: the lockfile has `{extra}` in {section}, package.json does not"
                ))
                .in_file(file, line_of_key(lock_text, extra, Some(section)))
                .hint(format!("run `npm install` to update {file}")));
            }
        }
        return Ok(());
    }
    // lockfileVersion 1: top-level `dependencies` by name.
    let deps = lock.get("dependencies").and_then(Value::as_object);
    for section in DEP_SECTIONS {
        for (name, spec) in pkg.deps(section) {
            if !deps.is_some_and(|d| d.contains_key(&name)) {
                return Err(out_of_sync(
                    &name,
                    format!("`{name}@{spec}` ({section}) is missing from the lockfile"),
                ));
            }
        }
    }
    Ok(())
}

/// Reads a file of the app: its bytes, or `None` when absent.
pub type ReadFile<'a> = dyn Fn(&Path) -> Result<Option<Vec<u8>>, PluginError> + 'a;

/// Reads the lockfile, if any, preferring npm-shrinkwrap.json, then
/// package-lock.json, then yarn.lock.
pub fn find_lockfile(read: &ReadFile<'_>) -> Result<Option<Lockfile>, PluginError> {
    for kind in [LockKind::Shrinkwrap, LockKind::PackageLock, LockKind::Yarn] {
        if let Some(bytes) = read(Path::new(kind.file()))? {
            return Ok(Some(Lockfile { kind, bytes }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_name_line_and_column() {
        let e = PackageJson::parse("{\n  \"name\": \"x\",\n  \"dependencies\": {\n    \"a\": \"1\"\n    \"b\": \"2\"\n  }\n}\n")
            .unwrap_err();
        assert_eq!(e.line, Some(5));
        assert!(
            e.to_string()
                .starts_with("package.json:5: invalid JSON at line 5, column 5"),
            "{e}"
        );
    }

    #[test]
    fn lines_of_deps() {
        let text = "{\n  \"name\": \"express\",\n  \"dependencies\": {\n    \"express\": \"^4\"\n  },\n  \"devDependencies\": {\"jest\": \"1\"}\n}\n";
        let p = PackageJson::parse(text).unwrap();
        assert_eq!(p.line_of_dep("express"), Some(4));
        assert_eq!(p.line_of_dep("jest"), Some(6));
        assert_eq!(p.line_of_key("name", None), Some(2));
    }

    #[test]
    fn sync_check() {
        let pkg = PackageJson::parse(
            "{\n \"dependencies\": {\n  \"a\": \"^1.0.0\",\n  \"b\": \"^2.0.0\"\n }\n}",
        )
        .unwrap();
        let lock = r#"{"lockfileVersion":3,"packages":{"":{"dependencies":{"a":"^1.0.0"}}}}"#;
        let e = check_npm_lock_in_sync(&pkg, LockKind::PackageLock, lock).unwrap_err();
        assert_eq!(e.line, Some(4));
        assert!(e.message.contains("`b@^2.0.0`"), "{e}");
        let lock =
            r#"{"lockfileVersion":3,"packages":{"":{"dependencies":{"a":"^1.0.0","b":"^2.0.0"}}}}"#;
        check_npm_lock_in_sync(&pkg, LockKind::PackageLock, lock).unwrap();
        let lock =
            r#"{"lockfileVersion":3,"packages":{"":{"dependencies":{"a":"^1.0.0","b":"^1.0.0"}}}}"#;
        let e = check_npm_lock_in_sync(&pkg, LockKind::PackageLock, lock).unwrap_err();
        assert!(
            e.message
                .contains("`b` is `^2.0.0` in package.json but `^1.0.0`"),
            "{e}"
        );
        let v1 = r#"{"lockfileVersion":1,"dependencies":{"a":{"version":"1.0.0"}}}"#;
        assert!(check_npm_lock_in_sync(&pkg, LockKind::PackageLock, v1).is_err());
    }
}
