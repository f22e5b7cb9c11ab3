//! Splitting an installed virtualenv by distribution, using each
//! `*.dist-info/RECORD`.
//!
//! The virtualenv is what pip (and the install scripts it ran) left: it is
//! read through the venv root's descriptor ([`ftl::beneath`]), never
//! following a link: a link is listed as a file (and stored as a link), and
//! a RECORD entry below a link is an error.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Component, Path, PathBuf};

use ftl::beneath::{BeneathError, Dir, Kind};

use crate::requirements::normalize;

/// An error reading what pip installed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("failed to read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Beneath(#[from] BeneathError),
    #[error("{record}: entry `{entry}` points outside the virtualenv")]
    Escapes { record: PathBuf, entry: String },
    #[error(
        "{dist_info}: no RECORD; the distribution was not installed by a wheel-based installer"
    )]
    NoRecord { dist_info: PathBuf },
}

/// One installed distribution and its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledDist {
    /// PEP 503 normalized name.
    pub key: String,
    pub version: String,
    /// The `*.dist-info` directory, relative to the venv root.
    pub dist_info: PathBuf,
    /// Every file (and symlink) it installed, relative to the venv root,
    /// sorted; compiled `.pyc` files of its modules included.
    pub files: Vec<PathBuf>,
    /// The sha256 (urlsafe base64) its RECORD gives for its files.
    pub hashes: BTreeMap<PathBuf, String>,
}

/// The files of `dist` whose content is not what its RECORD says pip
/// installed: another distribution of the same install wrote over them
/// (a wheel may carry any path below the venv), or something else did.
pub fn changed_since_install(
    venv: &Path,
    dist: &InstalledDist,
) -> Result<Vec<PathBuf>, RecordError> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let dir = Dir::open(venv)?;
    let mut out = Vec::new();
    for (rel, want) in &dist.hashes {
        match dir.stat(rel)? {
            Some(n) if n.kind == Kind::File => {}
            // A link, a directory or nothing where pip wrote a file.
            _ => {
                out.push(rel.clone());
                continue;
            }
        }
        let got = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(dir.read(rel)?));
        if got != want.trim_end_matches('=') {
            out.push(rel.clone());
        }
    }
    Ok(out)
}

/// The `site-packages` directories of a venv, relative to its root
/// (`lib/pythonX.Y/site-packages`; `lib64` when it is not a link to `lib`).
pub fn site_dirs(venv: &Path) -> Result<Vec<PathBuf>, RecordError> {
    site_dirs_in(&Dir::open(venv)?)
}

fn site_dirs_in(venv: &Dir) -> Result<Vec<PathBuf>, RecordError> {
    let mut out = Vec::new();
    for lib in ["lib", "lib64"] {
        match venv.stat(Path::new(lib))?.map(|n| n.kind) {
            Some(Kind::Dir) => {}
            // lib64 -> lib, or nothing there.
            _ => continue,
        }
        for name in read_dir_names(venv, Path::new(lib))? {
            let site = PathBuf::from(lib).join(&name).join("site-packages");
            if name.starts_with("python") && venv.stat(&site)?.is_some_and(|n| n.kind == Kind::Dir)
            {
                out.push(site);
            }
        }
    }
    Ok(out)
}

/// The names in the directory `rel` of `venv`, sorted.
fn read_dir_names(venv: &Dir, rel: &Path) -> Result<Vec<String>, RecordError> {
    Ok(venv
        .dir(rel)?
        .names()?
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect())
}

/// Each RECORD row's path (CSV: quoted fields may hold commas) and its
/// `sha256=` digest (urlsafe base64, as pip writes it), when it has one.
fn record_rows(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let (path, rest) = if let Some(rest) = line.strip_prefix('"') {
            let mut s = String::new();
            let mut chars = rest.char_indices().peekable();
            let mut end = rest.len();
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if chars.peek().map(|(_, c)| *c) == Some('"') {
                        chars.next();
                        s.push('"');
                    } else {
                        end = i + 1;
                        break;
                    }
                } else {
                    s.push(c);
                }
            }
            (s, rest[end..].trim_start_matches(','))
        } else {
            let (p, rest) = line.split_once(',').unwrap_or((line, ""));
            (p.to_string(), rest)
        };
        let hash = rest
            .split(',')
            .next()
            .and_then(|h| h.strip_prefix("sha256="))
            .map(str::to_string);
        if !path.is_empty() {
            out.push((path, hash));
        }
    }
    out
}

/// Joins `rel` onto `base` lexically; `None` when it climbs above the root.
fn join_lexical(base: &Path, rel: &str) -> Option<PathBuf> {
    if rel.starts_with('/') {
        return None;
    }
    let mut out: Vec<std::ffi::OsString> = base
        .components()
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(p) => out.push(p.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            _ => return None,
        }
    }
    Some(out.iter().collect())
}

/// Whether `rel` exists below `venv` (as itself: a link counts); a parent
/// that is a link is an error.
fn exists(venv: &Dir, rel: &Path) -> Result<bool, RecordError> {
    Ok(venv.stat(rel)?.is_some())
}

/// The text of the file `rel` of `venv` (no links followed), `None` when
/// it does not exist.
fn read_text(venv: &Dir, rel: &Path) -> Result<Option<String>, RecordError> {
    match venv.read(rel) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads every distribution installed in the venv at `venv` (host path).
/// `cache_tag` (e.g. `cpython-312`) adds each module's compiled file.
pub fn installed_dists(
    venv: &Path,
    cache_tag: Option<&str>,
) -> Result<Vec<InstalledDist>, RecordError> {
    let dir = Dir::open(venv)?;
    let mut out = Vec::new();
    for site in site_dirs_in(&dir)? {
        let names = read_dir_names(&dir, &site)?;
        for name in names.into_iter().filter(|n| n.ends_with(".dist-info")) {
            let dist_info = site.join(&name);
            let record = venv.join(&dist_info).join("RECORD");
            let Some(text) = read_text(&dir, &dist_info.join("RECORD"))? else {
                return Err(RecordError::NoRecord {
                    dist_info: venv.join(&dist_info),
                });
            };
            let (dist_name, version) = dist_name_version(&dir, &dist_info, &name)?;
            let mut files = BTreeSet::new();
            let mut hashes = BTreeMap::new();
            for (entry, hash) in record_rows(&text) {
                let rel = join_lexical(&site, &entry).ok_or_else(|| RecordError::Escapes {
                    record: record.clone(),
                    entry: entry.clone(),
                })?;
                if !exists(&dir, &rel)? {
                    continue; // pip lists .pyc it did not write, for uninstall
                }
                if let Some(h) = hash {
                    hashes.insert(rel.clone(), h);
                }
                if let (Some(tag), Some(stem)) = (cache_tag, entry.strip_suffix(".py")) {
                    let module = Path::new(stem);
                    if let (Some(parent), Some(file)) = (rel.parent(), module.file_name()) {
                        for opt in ["", ".opt-1", ".opt-2"] {
                            let pyc = parent
                                .join("__pycache__")
                                .join(format!("{}.{tag}{opt}.pyc", file.to_string_lossy()));
                            if exists(&dir, &pyc)? {
                                files.insert(pyc);
                            }
                        }
                    }
                }
                files.insert(rel);
            }
            out.push(InstalledDist {
                key: normalize(&dist_name),
                version,
                dist_info,
                files: files.into_iter().collect(),
                hashes,
            });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Name and version from METADATA, else from the directory name.
fn dist_name_version(
    venv: &Dir,
    dist_info: &Path,
    dir_name: &str,
) -> Result<(String, String), RecordError> {
    let from_dir = || {
        let stem = dir_name.trim_end_matches(".dist-info");
        let (n, v) = stem.rsplit_once('-').unwrap_or((stem, ""));
        (n.to_string(), v.to_string())
    };
    let Some(text) = read_text(venv, &dist_info.join("METADATA"))? else {
        return Ok(from_dir());
    };
    let mut name = None;
    let mut version = None;
    for line in text.lines() {
        if line.is_empty() {
            break; // end of headers
        }
        if let Some(v) = line.strip_prefix("Name:") {
            name.get_or_insert_with(|| v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("Version:") {
            version.get_or_insert_with(|| v.trim().to_string());
        }
    }
    let (dn, dv) = from_dir();
    Ok((name.unwrap_or(dn), version.unwrap_or(dv)))
}

/// Whether a wheel's platform tag names a platform policy rather than the
/// machine it was built on: `any`, `manylinux*` (PEP 513, 571, 599, 600),
/// `musllinux*` (PEP 656). A wheel pip builds from an sdist is tagged with
/// the build machine's own platform (`linux_x86_64`).
fn portable_platform(platform: &str) -> bool {
    platform == "any" || platform.starts_with("manylinux") || platform.starts_with("musllinux")
}

/// The platform tags of a `WHEEL` file's `Tag:` lines (each expanded:
/// `py2.py3-none-any`, `cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64`).
fn wheel_platforms(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("Tag:"))
        .filter_map(|tag| tag.trim().rsplit('-').next())
        .flat_map(|p| p.split('.'))
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

/// Why the files `files` of a venv (relative to `venv`) hold code compiled
/// on the build's root, in words; `None` when they hold none. They do
/// when a distribution among them
///
/// - has a `*.dist-info/WHEEL` with a platform tag that is not portable
///   (pip built it here from an sdist: `linux_x86_64`), or none at all;
/// - has an ELF file that needs a library neither among `files` nor one
///   every system has ([`ftl::native::foreign_needs`]: uwsgi linked
///   against the base's `libpython3.11.so.1.0`).
///
/// Its layer is then [root-dependent](ftl::LayerContents::root_dependent).
/// Files are read without following links.
pub fn compiled_here(venv: &Path, files: &[PathBuf]) -> Result<Option<String>, RecordError> {
    let dir = Dir::open(venv)?;
    let dist_infos: BTreeSet<&Path> = files
        .iter()
        .filter_map(|f| {
            f.ancestors()
                .find(|a| a.extension().is_some_and(|e| e == "dist-info"))
        })
        .collect();
    for dist_info in dist_infos {
        let wheel = dist_info.join("WHEEL");
        let Some(text) = read_text(&dir, &wheel)? else {
            return Ok(Some(format!("{} has no WHEEL file", dist_info.display())));
        };
        let platforms = wheel_platforms(&text);
        if let Some(p) = platforms.iter().find(|p| !portable_platform(p)) {
            return Ok(Some(format!(
                "{} is tagged for the build machine's platform `{p}`: built here from source",
                wheel.display()
            )));
        }
        if platforms.is_empty() {
            return Ok(Some(format!("{} has no Tag", wheel.display())));
        }
    }
    Ok(ftl::native::foreign_needs(&dir, files)?.map(|n| format!("{n}, which is not in the layer")))
}

/// What is below a venv: each entry's kind and, for a file, the sha256
/// of its content, or for a link, its target; for [`first_difference`].
pub fn fingerprint(root: &Path) -> Result<BTreeMap<PathBuf, String>, RecordError> {
    use sha2::Digest as _;
    let dir = Dir::open(root)?;
    let mut out = BTreeMap::new();
    dir.walk::<RecordError>(&mut |rel, node| {
        let what = match node.kind {
            Kind::Dir => "dir".to_string(),
            Kind::File => format!("file {:x}", sha2::Sha256::digest(dir.read(rel)?)),
            Kind::Symlink => format!("link {}", dir.read_link(rel)?.display()),
            Kind::Special => "special".to_string(),
        };
        out.insert(rel.to_path_buf(), what);
        Ok(true)
    })?;
    Ok(out)
}

/// The first path added, removed or changed between two fingerprints.
pub fn first_difference(
    a: &BTreeMap<PathBuf, String>,
    b: &BTreeMap<PathBuf, String>,
) -> Option<PathBuf> {
    a.iter()
        .find(|(p, v)| b.get(*p) != Some(*v))
        .map(|(p, _)| p.clone())
        .or_else(|| b.keys().find(|p| !a.contains_key(*p)).cloned())
}

/// Every file and symlink below `root`, relative, sorted.
pub fn all_files(root: &Path) -> Result<Vec<PathBuf>, RecordError> {
    walk(root, false)
}

/// Every file, symlink and directory below `root`, relative, sorted.
pub fn all_entries(root: &Path) -> Result<Vec<PathBuf>, RecordError> {
    walk(root, true)
}

fn walk(root: &Path, dirs: bool) -> Result<Vec<PathBuf>, RecordError> {
    let mut out = Vec::new();
    Dir::open(root)?.walk::<RecordError>(&mut |rel, node| {
        if node.kind != Kind::Dir || dirs {
            out.push(rel.to_path_buf());
        }
        Ok(true)
    })?;
    out.sort();
    Ok(out)
}

/// Files below `venv` that no distribution claims and that were not there
/// before the install (`before`).
pub fn unclaimed(
    venv: &Path,
    dists: &[InstalledDist],
    before: &BTreeSet<PathBuf>,
) -> Result<Vec<PathBuf>, RecordError> {
    let claimed: BTreeSet<&PathBuf> = dists.iter().flat_map(|d| d.files.iter()).collect();
    Ok(all_files(venv)?
        .into_iter()
        .filter(|f| !before.contains(f) && !claimed.contains(f))
        .collect())
}

/// Files claimed by more than one distribution (first owner, other owner).
pub fn overlaps(dists: &[InstalledDist]) -> BTreeMap<PathBuf, (String, String)> {
    let mut owner: BTreeMap<&PathBuf, &str> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for d in dists {
        for f in &d.files {
            if let Some(first) = owner.insert(f, &d.key) {
                out.insert(f.clone(), (first.to_string(), d.key.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An install script replaces a package directory of site-packages
    /// with a link to a host directory, and its RECORD names a file "in"
    /// it: the link is listed as itself, never walked into, and the
    /// RECORD entry below it is an error; the layer holds no host byte.
    #[test]
    fn a_venv_symlink_to_a_host_dir_is_not_followed() {
        use ftl::layer::{write_layer, LayerSettings};
        use ftl::{Beneath, LayerContents, LayerInput};
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("root-only");
        std::fs::create_dir(&host).unwrap();
        std::fs::write(host.join("shadow"), "root:HOST-SECRET").unwrap();
        let v = t.path().join("env");
        let site = v.join("lib/python3.11/site-packages");
        std::fs::create_dir_all(site.join("evil-1.0.dist-info")).unwrap();
        std::os::unix::fs::symlink(&host, site.join("evil")).unwrap();
        std::fs::write(
            site.join("evil-1.0.dist-info/RECORD"),
            "evil/shadow,,\nevil-1.0.dist-info/RECORD,,\n",
        )
        .unwrap();

        let files = all_files(&v).unwrap();
        assert!(files.contains(&PathBuf::from("lib/python3.11/site-packages/evil")));
        assert!(files.iter().all(|f| !f.ends_with("shadow")), "{files:?}");
        let e = installed_dists(&v, None).unwrap_err();
        assert!(e.to_string().contains("refusing to follow it"), "{e}");

        // The venv layer of everything new: the link is a link.
        let c = LayerContents::new(vec![LayerInput::Files {
            root: Beneath::root(&v),
            to: "/env".into(),
            paths: files,
        }]);
        let mut blob = Vec::new();
        write_layer(&c, LayerSettings::default(), &mut blob).unwrap();
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(blob.as_slice()), &mut tar)
            .unwrap();
        assert!(!String::from_utf8_lossy(&tar).contains("HOST-SECRET"));
        let mut ar = tar::Archive::new(tar.as_slice());
        let link = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().ends_with("site-packages/evil"))
            .unwrap();
        assert_eq!(link.header().entry_type(), tar::EntryType::Symlink);
    }

    #[test]
    fn wheel_tags_say_whether_a_wheel_was_built_here() {
        let tags = |text: &str| wheel_platforms(text);
        let built_here = "Wheel-Version: 1.0\nGenerator: bdist_wheel (0.42.0)\nRoot-Is-Purelib: false\nTag: cp311-cp311-linux_x86_64\n";
        assert_eq!(tags(built_here), ["linux_x86_64"]);
        let pypi = "Wheel-Version: 1.0\nTag: cp311-cp311-manylinux_2_17_x86_64\nTag: cp311-cp311-manylinux2014_x86_64\n";
        assert_eq!(
            tags(pypi),
            ["manylinux_2_17_x86_64", "manylinux2014_x86_64"]
        );
        assert_eq!(
            tags("Tag: cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64\n"),
            ["manylinux_2_17_x86_64", "manylinux2014_x86_64"]
        );
        assert_eq!(tags("Tag: py2.py3-none-any\n"), ["any"]);
        assert_eq!(
            tags("Tag: cp312-abi3-musllinux_1_2_aarch64\n"),
            ["musllinux_1_2_aarch64"]
        );
        for p in [
            "any",
            "manylinux1_x86_64",
            "manylinux_2_28_aarch64",
            "musllinux_1_1_x86_64",
        ] {
            assert!(portable_platform(p), "{p}");
        }
        for p in [
            "linux_x86_64",
            "linux_aarch64",
            "macosx_11_0_arm64",
            "win_amd64",
        ] {
            assert!(!portable_platform(p), "{p}");
        }
    }

    /// A distribution built here (its WHEEL tagged `linux_x86_64`) holds
    /// code compiled on the build's root; one from a manylinux wheel does
    /// not, unless an ELF file of it needs a library from outside it.
    #[test]
    fn compiled_here_reads_wheel_tags_and_elf_needs() {
        let t = tempfile::tempdir().unwrap();
        let v = t.path();
        let site = PathBuf::from("lib/python3.11/site-packages");
        let write = |rel: &Path, text: &[u8]| {
            std::fs::create_dir_all(v.join(rel).parent().unwrap()).unwrap();
            std::fs::write(v.join(rel), text).unwrap();
        };
        let dist = |name: &str, tag: &str| -> Vec<PathBuf> {
            let di = site.join(format!("{name}-1.0.dist-info"));
            write(
                &di.join("WHEEL"),
                format!("Wheel-Version: 1.0\nTag: {tag}\n").as_bytes(),
            );
            write(&di.join("RECORD"), b"");
            write(&site.join(format!("{name}.py")), b"x = 1\n");
            vec![
                di.join("WHEEL"),
                di.join("RECORD"),
                site.join(format!("{name}.py")),
            ]
        };
        let wheel = dist("wheel", "cp311-cp311-manylinux_2_17_x86_64");
        assert_eq!(compiled_here(v, &wheel).unwrap(), None);
        let pure = dist("pure", "py3-none-any");
        assert_eq!(compiled_here(v, &pure).unwrap(), None);
        let sdist = dist("sdist", "cp311-cp311-linux_x86_64");
        let why = compiled_here(v, &sdist).unwrap().unwrap();
        assert!(
            why.contains("linux_x86_64") && why.contains("sdist-1.0.dist-info"),
            "{why}"
        );
        // The unpinned layer: every distribution's files at once.
        let all: Vec<PathBuf> = [wheel.clone(), pure, sdist].concat();
        assert!(compiled_here(v, &all).unwrap().is_some());

        // A manylinux-tagged distribution whose extension links a library
        // outside it (a compiler on the path needed).
        let Some(ext) = cc_shared(v, &site.join("wheel/_ext.so"), &["-lz"]) else {
            eprintln!("no C compiler with zlib: the ELF case skipped");
            return;
        };
        let mut with_ext = wheel.clone();
        with_ext.push(ext.strip_prefix(v).unwrap().to_path_buf());
        let why = compiled_here(v, &with_ext).unwrap().unwrap();
        assert!(why.contains("_ext.so needs libz.so.1"), "{why}");
    }

    /// Compiles a shared library at `out` that uses what `args` link.
    fn cc_shared(dir: &Path, out: &Path, args: &[&str]) -> Option<PathBuf> {
        let c = dir.join("ext.c");
        std::fs::write(&c, "unsigned long zlibCompileFlags(void);\nunsigned long f(void) { return zlibCompileFlags(); }\n").unwrap();
        std::fs::create_dir_all(dir.join(out).parent().unwrap()).unwrap();
        let ok = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(dir.join(out))
            .arg(&c)
            .args(args)
            .status()
            .ok()?
            .success();
        ok.then(|| dir.join(out))
    }

    #[test]
    fn record_rows_read_paths_and_hashes() {
        let text = "six.py,sha256=abc,123\n\"weird,name.py\",,\n\"q\"\"uote.py\",sha256=x,1\n../../../bin/tool,sha256=y,2\nsix-1.16.0.dist-info/RECORD,,\n";
        let rows = record_rows(text);
        let hash = |h: &str| Some(h.to_string());
        assert_eq!(
            rows,
            [
                ("six.py".to_string(), hash("abc")),
                ("weird,name.py".to_string(), None),
                ("q\"uote.py".to_string(), hash("x")),
                ("../../../bin/tool".to_string(), hash("y")),
                ("six-1.16.0.dist-info/RECORD".to_string(), None)
            ]
        );
    }

    #[test]
    fn lexical_join() {
        let site = Path::new("lib/python3.12/site-packages");
        assert_eq!(
            join_lexical(site, "../../../bin/flask"),
            Some(PathBuf::from("bin/flask"))
        );
        assert_eq!(join_lexical(site, "../../../../etc/passwd"), None);
        assert_eq!(join_lexical(site, "/etc/passwd"), None);
        assert_eq!(
            join_lexical(site, "./a/b.py"),
            Some(PathBuf::from("lib/python3.12/site-packages/a/b.py"))
        );
    }

    #[test]
    fn splits_a_fake_venv() {
        let dir = tempfile::tempdir().unwrap();
        let v = dir.path();
        let site = v.join("lib/python3.12/site-packages");
        for f in [
            "bin/tool",
            "lib/python3.12/site-packages/pkg/__init__.py",
            "lib/python3.12/site-packages/pkg/__pycache__/__init__.cpython-312.pyc",
            "lib/python3.12/site-packages/Pkg-1.0.dist-info/METADATA",
            "lib/python3.12/site-packages/Pkg-1.0.dist-info/RECORD",
            "lib/python3.12/site-packages/stray.txt",
        ] {
            std::fs::create_dir_all(v.join(f).parent().unwrap()).unwrap();
            std::fs::write(v.join(f), "x").unwrap();
        }
        std::os::unix::fs::symlink("lib", v.join("lib64")).unwrap();
        std::fs::write(
            site.join("Pkg-1.0.dist-info/METADATA"),
            "Metadata-Version: 2.1\nName: Pkg\nVersion: 1.0\n\nbody\n",
        )
        .unwrap();
        std::fs::write(
            site.join("Pkg-1.0.dist-info/RECORD"),
            "pkg/__init__.py,,\npkg/__pycache__/gone.cpython-312.pyc,,\n../../../bin/tool,,\nPkg-1.0.dist-info/METADATA,,\nPkg-1.0.dist-info/RECORD,,\n",
        )
        .unwrap();
        let dists = installed_dists(v, Some("cpython-312")).unwrap();
        assert_eq!(dists.len(), 1);
        assert_eq!(
            (dists[0].key.as_str(), dists[0].version.as_str()),
            ("pkg", "1.0")
        );
        let files: Vec<_> = dists[0]
            .files
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            files,
            [
                "bin/tool",
                "lib/python3.12/site-packages/Pkg-1.0.dist-info/METADATA",
                "lib/python3.12/site-packages/Pkg-1.0.dist-info/RECORD",
                "lib/python3.12/site-packages/pkg/__init__.py",
                "lib/python3.12/site-packages/pkg/__pycache__/__init__.cpython-312.pyc",
            ]
        );
        let stray = unclaimed(v, &dists, &BTreeSet::from([PathBuf::from("lib64")])).unwrap();
        assert_eq!(
            stray,
            [PathBuf::from("lib/python3.12/site-packages/stray.txt")]
        );

        std::fs::write(site.join("Pkg-1.0.dist-info/RECORD"), "../../../../x,,\n").unwrap();
        assert!(matches!(
            installed_dists(v, None),
            Err(RecordError::Escapes { .. })
        ));
    }
}
