//! The reproducible layer writer.
//!
//! A layer is a pure function of its inputs: entries sorted by path, every
//! parent directory present, uid/gid 0 with empty owner names, modes
//! normalised to 0644/0755 by the owner's exec bit (so a checkout's umask
//! does not change the digest), symlinks and hardlinks kept, mtime fixed
//! (`SOURCE_DATE_EPOCH` or [`DEFAULT_MTIME`]), gzip through zlib-rs at a
//! pinned level. The compressed digest and the diffID are computed in the
//! same single pass that writes the blob.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

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
    File {
        host: PathBuf,
        mode: u32,
        size: u64,
        inode: Option<(u64, u64)>,
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
                    for item in walkdir::WalkDir::new(from).follow_links(false) {
                        let item = item.map_err(|e| LayerError::Read {
                            path: e
                                .path()
                                .map(Path::to_path_buf)
                                .unwrap_or_else(|| from.clone()),
                            source: e.into(),
                        })?;
                        let rel = item.path().strip_prefix(from).expect("below root");
                        add_host(&mut map, item.path(), &join_image(to, rel)?)?;
                    }
                }
                LayerInput::Files { root, to, paths } => {
                    for rel in paths {
                        add_host(&mut map, &root.join(rel), &join_image(to, rel)?)?;
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

fn add_host(map: &mut BTreeMap<String, Entry>, host: &Path, name: &str) -> Result<(), LayerError> {
    let meta = std::fs::symlink_metadata(host).map_err(|source| LayerError::Read {
        path: host.to_path_buf(),
        source,
    })?;
    let ft = meta.file_type();
    let mode = meta.permissions().mode();
    let entry = if ft.is_dir() {
        Entry::Dir {
            mode: normal_mode(mode, true),
        }
    } else if ft.is_file() {
        Entry::File {
            host: host.to_path_buf(),
            mode: normal_mode(mode, false),
            size: meta.len(),
            inode: (meta.nlink() > 1).then(|| (meta.dev(), meta.ino())),
        }
    } else if ft.is_symlink() {
        let target = std::fs::read_link(host).map_err(|source| LayerError::Read {
            path: host.to_path_buf(),
            source,
        })?;
        Entry::Symlink { target }
    } else {
        tracing::warn!(path = %host.display(), "skipping special file (device, socket or fifo) in layer");
        return Ok(());
    };
    map.insert(name.to_string(), entry);
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
                host,
                mode,
                size,
                inode,
            } => {
                if let Some(ino) = inode {
                    if let Some(first) = first_of_inode.get(ino) {
                        let mut h = header(tar::EntryType::Link, *mode, 0, mtime);
                        builder.append_link(&mut h, name, first).map_err(w)?;
                        continue;
                    }
                    first_of_inode.insert(*ino, name.clone());
                }
                let file = File::open(host).map_err(|source| LayerError::Read {
                    path: host.clone(),
                    source,
                })?;
                // The size is the one read at collection time; a file that
                // changes under us is an error, not a corrupt layer.
                let mut h = header(tar::EntryType::Regular, *mode, *size, mtime);
                let mut limited = ExactReader {
                    inner: file,
                    left: *size,
                    path: host,
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
    use std::os::unix::fs::symlink;

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
            inputs: vec![LayerInput::Tree {
                from: dir.to_path_buf(),
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
