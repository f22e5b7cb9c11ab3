//! The reproducible layer writer.
//!
//! A layer is a pure function of its inputs: entries sorted by path, every
//! parent directory present, uid/gid 0 with empty owner names, modes
//! normalised to 0644/0755 by the owner's exec bit (so a checkout's umask
//! does not change the digest), symlinks and hardlinks kept, mtime fixed
//! (`SOURCE_DATE_EPOCH` or [`DEFAULT_MTIME`]), gzip through zlib-rs at a
//! pinned level. The compressed digest and the diffID are computed in the
//! same single pass that writes the blob.
//!
//! Inputs are what a step left (or an upload holds): they are read through
//! directory descriptors ([`crate::beneath`]), never following a link. A
//! link is stored as a link; a collected directory that is a link, or a
//! path whose parent is one, is an error naming it; a file is opened again
//! by descriptor when it is written and must be the one that was listed.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::beneath::{BeneathError, Dir, Kind, Node};
use crate::plugin::{LayerContents, LayerInput};

/// The mtime every entry gets unless `SOURCE_DATE_EPOCH` says otherwise:
/// one second past the epoch, as Jib does (zero reads as "unset" to some
/// tools).
pub const DEFAULT_MTIME: u64 = 1;

/// The gzip level layers are compressed at by default. Part of a layer's
/// identity: another level (or another zlib implementation) gives other
/// bytes. Level 1 measured fastest per byte saved on this workload; see the
/// README's design notes.
pub const DEFAULT_LEVEL: u32 = 1;

/// The media type of the layers ftl writes (OCI); the Docker equivalent is
/// chosen at manifest time.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// How layers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSettings {
    pub mtime: u64,
    pub level: u32,
    /// Compression threads. Not part of the output's identity: any count
    /// gives the same bytes (see [`crate::gzip`]).
    pub threads: usize,
}

impl Default for LayerSettings {
    fn default() -> Self {
        LayerSettings {
            mtime: DEFAULT_MTIME,
            level: DEFAULT_LEVEL,
            threads: crate::gzip::default_threads(),
        }
    }
}

impl LayerSettings {
    /// Settings with the mtime taken from a `SOURCE_DATE_EPOCH` value when
    /// one is given (the caller reads the environment).
    pub fn with_source_date_epoch(epoch: Option<&str>) -> Result<Self, LayerError> {
        let mut s = LayerSettings::default();
        if let Some(v) = epoch {
            s.mtime = v
                .trim()
                .parse()
                .map_err(|_| LayerError::SourceDateEpoch(v.to_string()))?;
        }
        Ok(s)
    }
}

/// An error writing a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("failed to read {path} for a layer")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to write layer")]
    Write(#[source] io::Error),
    #[error(transparent)]
    Beneath(#[from] BeneathError),
    #[error("{path} changed while the layer was written")]
    Changed { path: PathBuf },
    #[error("image path `{0}` is not absolute or has `..` in it")]
    BadImagePath(String),
    #[error("SOURCE_DATE_EPOCH=`{0}` is not a whole number of seconds")]
    SourceDateEpoch(String),
}

/// The identity of a written layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDigests {
    /// sha256 of the compressed bytes, `sha256:<hex>`.
    pub digest: String,
    /// sha256 of the uncompressed tar, `sha256:<hex>`.
    pub diff_id: String,
    /// Compressed size.
    pub size: u64,
    /// Uncompressed size.
    pub uncompressed_size: u64,
    /// Number of tar entries.
    pub entries: usize,
}

#[derive(Debug, Clone)]
enum Entry {
    Dir {
        mode: u32,
    },
    /// A regular file, opened again (beneath `dir`, no links) when it is
    /// written.
    File {
        dir: Arc<Dir>,
        rel: PathBuf,
        mode: u32,
        size: u64,
        /// (dev, ino): checked when the file is opened again.
        id: (u64, u64),
        /// Whether it has other hard links.
        linked: bool,
    },
    Bytes {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink {
        target: PathBuf,
    },
}

fn normal_mode(mode: u32, is_dir: bool) -> u32 {
    if is_dir || mode & 0o100 != 0 {
        0o755
    } else {
        0o644
    }
}

/// Turns an absolute image path into a tar name (`srv/app.py`), refusing
/// escapes.
fn tar_name(image_path: &str) -> Result<String, LayerError> {
    let mut parts = Vec::new();
    for comp in image_path.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err(LayerError::BadImagePath(image_path.to_string())),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

fn join_image(to: &str, rel: &Path) -> Result<String, LayerError> {
    let rel = rel.to_string_lossy();
    tar_name(&format!("{}/{}", to.trim_end_matches('/'), rel))
}

/// The sorted entries of a layer, parents filled in.
struct Entries(BTreeMap<String, Entry>);

impl Entries {
    fn collect(contents: &LayerContents) -> Result<Self, LayerError> {
        let mut map = BTreeMap::new();
        for input in &contents.inputs {
            match input {
                LayerInput::Tree { from, to } => {
                    let dir = Arc::new(from.open()?);
                    // The root itself, as a directory (never a link).
                    map.insert(tar_name(to)?, Entry::Dir { mode: 0o755 });
                    dir.walk::<LayerError>(&mut |rel, node| {
                        add_node(&mut map, &dir, rel, node, join_image(to, rel)?)?;
                        Ok(true)
                    })?;
                }
                LayerInput::Files { root, to, paths } => {
                    let dir = Arc::new(root.open()?);
                    for rel in paths {
                        let node = dir.stat(rel)?.ok_or_else(|| LayerError::Read {
                            path: dir.path().join(rel),
                            source: io::ErrorKind::NotFound.into(),
                        })?;
                        add_node(&mut map, &dir, rel, &node, join_image(to, rel)?)?;
                    }
                }
                LayerInput::Bytes { path, mode, data } => {
                    map.insert(
                        tar_name(path)?,
                        Entry::Bytes {
                            data: data.clone(),
                            mode: normal_mode(*mode, false),
                        },
                    );
                }
            }
        }
        map.remove("");
        // Parent directories.
        let names: Vec<String> = map.keys().cloned().collect();
        for name in names {
            let mut p = name.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                map.entry(parent.to_string())
                    .or_insert(Entry::Dir { mode: 0o755 });
                p = parent;
            }
        }
        Ok(Entries(map))
    }
}

/// Adds the entry `rel` of `dir` (its `lstat` in `node`) as `name`.
fn add_node(
    map: &mut BTreeMap<String, Entry>,
    dir: &Arc<Dir>,
    rel: &Path,
    node: &Node,
    name: String,
) -> Result<(), LayerError> {
    let entry = match node.kind {
        Kind::Dir => Entry::Dir {
            mode: normal_mode(node.mode, true),
        },
        Kind::File => Entry::File {
            dir: dir.clone(),
            rel: rel.to_path_buf(),
            mode: normal_mode(node.mode, false),
            size: node.size,
            id: (node.dev, node.ino),
            linked: node.nlink > 1,
        },
        Kind::Symlink => Entry::Symlink {
            target: dir.read_link(rel)?,
        },
        Kind::Special => {
            tracing::warn!(path = %dir.path().join(rel).display(), "skipping special file (device, socket or fifo) in layer");
            return Ok(());
        }
    };
    map.insert(name, entry);
    Ok(())
}

/// A writer that hashes and counts what passes through it.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    // new_gnu leaves user and group names empty.
    h
}

/// Writes the layer described by `contents` to `out` as gzip-compressed tar,
/// returning its digests. `out` receives exactly the blob's bytes.
pub fn write_layer(
    contents: &LayerContents,
    settings: LayerSettings,
    out: impl Write + Send,
) -> Result<LayerDigests, LayerError> {
    let entries = Entries::collect(contents)?;
    let count = entries.0.len();
    let compressed = HashWriter {
        inner: BufWriter::with_capacity(1 << 20, out),
        hasher: Sha256::new(),
        count: 0,
    };
    let (mut compressed, tarred) =
        crate::gzip::compress(compressed, settings.level, settings.threads, |sink| {
            let raw = HashWriter {
                inner: sink,
                hasher: Sha256::new(),
                count: 0,
            };
            Ok(write_tar(&entries, settings.mtime, raw))
        })
        .map_err(LayerError::Write)?;
    let (diff_id, uncompressed_size) = tarred?;
    compressed.flush().map_err(LayerError::Write)?;
    let digest = format!("sha256:{}", hex::encode(compressed.hasher.finalize()));
    Ok(LayerDigests {
        digest,
        diff_id,
        size: compressed.count,
        uncompressed_size,
        entries: count,
    })
}

/// Writes the tar stream of `entries` to `raw`; returns the diffID and the
/// uncompressed size.
fn write_tar<W: Write>(
    entries: &Entries,
    mtime: u64,
    raw: HashWriter<W>,
) -> Result<(String, u64), LayerError> {
    let mut builder = tar::Builder::new(raw);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut first_of_inode: HashMap<(u64, u64), String> = HashMap::new();
    let w = LayerError::Write;
    for (name, entry) in &entries.0 {
        match entry {
            Entry::Dir { mode } => {
                let mut h = header(tar::EntryType::Directory, *mode, 0, mtime);
                builder
                    .append_data(&mut h, format!("{name}/"), io::empty())
                    .map_err(w)?;
            }
            Entry::Bytes { data, mode } => {
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64, mtime);
                builder
                    .append_data(&mut h, name, data.as_slice())
                    .map_err(w)?;
            }
            Entry::Symlink { target } => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, mtime);
                builder.append_link(&mut h, name, target).map_err(w)?;
            }
            Entry::File {
                dir,
                rel,
                mode,
                size,
                id,
                linked,
            } => {
                if *linked {
                    if let Some(first) = first_of_inode.get(id) {
                        let mut h = header(tar::EntryType::Link, *mode, 0, mtime);
                        builder.append_link(&mut h, name, first).map_err(w)?;
                        continue;
                    }
                    first_of_inode.insert(*id, name.clone());
                }
                let host = dir.path().join(rel);
                let file = dir.open_file(rel)?;
                let meta = file.metadata().map_err(|source| LayerError::Read {
                    path: host.clone(),
                    source,
                })?;
                if (meta.dev(), meta.ino()) != *id {
                    return Err(LayerError::Changed { path: host });
                }
                // The size is the one read at collection time; a file that
                // changes under us is an error, not a corrupt layer.
                let mut h = header(tar::EntryType::Regular, *mode, *size, mtime);
                let mut limited = ExactReader {
                    inner: file,
                    left: *size,
                    path: &host,
                };
                builder
                    .append_data(&mut h, name, &mut limited)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData => {
                            LayerError::Read {
                                path: host.clone(),
                                source: e,
                            }
                        }
                        _ => LayerError::Write(e),
                    })?;
            }
        }
    }
    let raw = builder.into_inner().map_err(w)?;
    Ok((
        format!("sha256:{}", hex::encode(raw.hasher.finalize())),
        raw.count,
    ))
}

/// Reads exactly `left` bytes, failing if the file is shorter or longer
/// than when it was listed.
struct ExactReader<'a> {
    inner: File,
    left: u64,
    path: &'a Path,
}

impl Read for ExactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} grew while the layer was written", self.path.display()),
                ));
            }
            return Ok(0);
        }
        let max = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while the layer was written", self.path.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Writes a layer into the local blob store and returns its digests; the
/// blob is published (renamed into place) only when complete.
pub fn write_layer_to_store(
    contents: &LayerContents,
    settings: LayerSettings,
    store: &ftl_cache::BlobStore,
) -> Result<LayerDigests, LayerStoreError> {
    let mut writer = store.writer()?;
    let digests = write_layer(contents, settings, writer.file())?;
    writer.commit(&digests.digest)?;
    Ok(digests)
}

/// An error writing a layer into the blob store.
#[derive(Debug, thiserror::Error)]
pub enum LayerStoreError {
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Cache(#[from] ftl_cache::CacheError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::beneath::Beneath;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// Every entry of a layer: (name, type, link target, content).
    fn listing(blob: &[u8]) -> Vec<(String, String, String, Vec<u8>)> {
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(blob)
            .read_to_end(&mut tar_bytes)
            .unwrap();
        let mut ar = tar::Archive::new(tar_bytes.as_slice());
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let kind = format!("{:?}", e.header().entry_type());
                let target = e
                    .link_name()
                    .unwrap()
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (name, kind, target, data)
            })
            .collect()
    }

    /// A "host" directory with a file no layer may hold, and a step's
    /// output directory beside it.
    fn host_and_output() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("root-only");
        std::fs::create_dir(&host).unwrap();
        std::fs::write(host.join("shadow"), b"root:HOST-SECRET:19000::::::\n").unwrap();
        let app = t.path().join("app");
        std::fs::create_dir(&app).unwrap();
        (t, host, app)
    }

    #[test]
    fn a_symlink_below_node_modules_is_stored_as_a_link() {
        let (_t, host, app) = host_and_output();
        let nm = app.join("node_modules");
        std::fs::create_dir_all(nm.join("evil")).unwrap();
        std::fs::write(nm.join("evil/index.js"), b"module.exports = 1\n").unwrap();
        symlink(host.join("shadow"), nm.join("evil/shadow")).unwrap();
        symlink(&host, nm.join("evil/hostdir")).unwrap();
        let c = LayerContents {
            root_dependent: false,
            inputs: vec![LayerInput::Tree {
                from: Beneath::new(&app, "node_modules"),
                to: "/srv/node_modules".into(),
            }],
        };
        let mut blob = Vec::new();
        write_layer(&c, LayerSettings::default(), &mut blob).unwrap();
        let listed = listing(&blob);
        let shadow = listed
            .iter()
            .find(|e| e.0 == "srv/node_modules/evil/shadow")
            .unwrap();
        assert_eq!(shadow.1, "Symlink");
        assert_eq!(shadow.2, host.join("shadow").display().to_string());
        let dir = listed
            .iter()
            .find(|e| e.0 == "srv/node_modules/evil/hostdir")
            .unwrap();
        assert_eq!(dir.1, "Symlink");
        assert!(listed.iter().all(|e| !e.0.contains("hostdir/")));
        assert!(listed
            .iter()
            .all(|e| !String::from_utf8_lossy(&e.3).contains("HOST-SECRET")));
    }

    #[test]
    fn a_collected_root_that_is_a_symlink_is_refused() {
        let (_t, host, app) = host_and_output();
        symlink(&host, app.join("node_modules")).unwrap();
        let c = LayerContents {
            root_dependent: false,
            inputs: vec![LayerInput::Tree {
                from: Beneath::new(&app, "node_modules"),
                to: "/srv/node_modules".into(),
            }],
        };
        let e = write_layer(&c, LayerSettings::default(), io::sink()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} is a symlink, not a directory: refusing to follow it",
                app.join("node_modules").display()
            )
        );
        // A link above the collected directory is refused too.
        std::fs::remove_file(app.join("node_modules")).unwrap();
        std::fs::create_dir_all(host.join("classes")).unwrap();
        std::fs::create_dir_all(app.join("m")).unwrap();
        symlink(&host, app.join("m/target")).unwrap();
        let files = LayerContents {
            root_dependent: false,
            inputs: vec![LayerInput::Files {
                root: Beneath::new(&app, "m/target/classes"),
                to: "/srv/classes".into(),
                paths: vec!["x".into()],
            }],
        };
        let e = write_layer(&files, LayerSettings::default(), io::sink()).unwrap_err();
        assert!(e.to_string().contains("passes through the symlink"), "{e}");
    }

    #[test]
    fn files_below_a_linked_parent_are_refused() {
        let (_t, host, app) = host_and_output();
        symlink(&host, app.join("lib")).unwrap();
        let c = LayerContents {
            root_dependent: false,
            inputs: vec![LayerInput::Files {
                root: Beneath::root(&app),
                to: "/env".into(),
                paths: vec!["lib".into(), "lib/shadow".into()],
            }],
        };
        let e = write_layer(&c, LayerSettings::default(), io::sink()).unwrap_err();
        assert!(e.to_string().contains("refusing to follow it"), "{e}");
    }

    fn sample(dir: &Path) {
        std::fs::create_dir_all(dir.join("pkg/sub")).unwrap();
        std::fs::write(dir.join("main.py"), b"print('hi')\n").unwrap();
        std::fs::write(dir.join("pkg/sub/data.txt"), b"data").unwrap();
        std::fs::write(dir.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o775))
            .unwrap();
        std::fs::set_permissions(dir.join("main.py"), std::fs::Permissions::from_mode(0o664))
            .unwrap();
        symlink("main.py", dir.join("link.py")).unwrap();
        std::fs::hard_link(dir.join("main.py"), dir.join("pkg/main2.py")).unwrap();
    }

    fn contents(dir: &Path) -> LayerContents {
        LayerContents {
            root_dependent: false,
            inputs: vec![LayerInput::Tree {
                from: crate::beneath::Beneath::root(dir),
                to: "/srv".into(),
            }],
        }
    }

    #[test]
    fn golden_digest_and_mtime_independence() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path());
        let mut buf = Vec::new();
        let a = write_layer(&contents(dir.path()), LayerSettings::default(), &mut buf).unwrap();
        assert_eq!(a.size, buf.len() as u64);
        // Touch every mtime: same digest.
        for e in walkdir::WalkDir::new(dir.path()) {
            let e = e.unwrap();
            filetime::set_symlink_file_times(
                e.path(),
                filetime::FileTime::from_unix_time(1_700_000_000, 0),
                filetime::FileTime::from_unix_time(1_700_000_000, 0),
            )
            .unwrap();
        }
        let b = write_layer(&contents(dir.path()), LayerSettings::default(), io::sink()).unwrap();
        assert_eq!(a, b);
        // Golden: the bytes of this layer are fixed by the format rules,
        // the zlib-rs backend and level 1.
        assert_eq!(
            a.diff_id,
            "sha256:52e5dbe60665928ea81ce37e66b3141de2d0328d61463003ca9e983a3261a8b1"
        );
        assert_eq!(
            a.digest,
            "sha256:4908e563a8da19ff5538d074feeca43f6ebe219638a9ce7163092b55871e92f4"
        );

        // The tar has parents, sorted names, root ownership, fixed mtime,
        // normalised modes, the symlink and the hardlink.
        let mut gz = flate2::read::GzDecoder::new(buf.as_slice());
        let mut tar_bytes = Vec::new();
        gz.read_to_end(&mut tar_bytes).unwrap();
        let mut ar = tar::Archive::new(tar_bytes.as_slice());
        let listed: Vec<(String, u32, u64, u64, String)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.mtime().unwrap(),
                    format!("{:?}", h.entry_type()),
                )
            })
            .collect();
        let names: Vec<&str> = listed.iter().map(|l| l.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "srv/",
                "srv/link.py",
                "srv/main.py",
                "srv/pkg/",
                "srv/pkg/main2.py",
                "srv/pkg/sub/",
                "srv/pkg/sub/data.txt",
                "srv/run.sh"
            ]
        );
        assert!(listed.iter().all(|l| l.2 == 0 && l.3 == DEFAULT_MTIME));
        assert_eq!(listed[2].1, 0o644);
        assert_eq!(listed[7].1, 0o755);
        assert_eq!(listed[1].4, "Symlink");
        assert_eq!(listed[4].4, "Link");
    }

    #[test]
    fn source_date_epoch_changes_mtime() {
        let s = LayerSettings::with_source_date_epoch(Some("1700000000")).unwrap();
        assert_eq!(s.mtime, 1_700_000_000);
        assert!(LayerSettings::with_source_date_epoch(Some("yesterday")).is_err());
    }

    #[test]
    fn bad_image_path_is_refused() {
        let c = LayerContents {
            root_dependent: false,
            inputs: vec![LayerInput::Bytes {
                path: "/srv/../etc/x".into(),
                mode: 0o644,
                data: vec![],
            }],
        };
        assert!(matches!(
            write_layer(&c, LayerSettings::default(), io::sink()),
            Err(LayerError::BadImagePath(_))
        ));
    }
}
