//! Extraction of uploaded source archives, which are hostile until proven
//! otherwise: every entry must land inside the extraction directory, links
//! may not point out of it (resolved against what is already extracted, as
//! the kernel would resolve them, and checked again once the whole tree is
//! there), device files are refused, and the expanded size and entry count
//! are bounded (decompression bombs). No error names a path of the server:
//! entries are named as the archive names them.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

/// Bounds on what one archive may expand to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Total bytes of file contents.
    pub max_bytes: u64,
    /// Entries of any kind.
    pub max_entries: u64,
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the upload is not an archive: send a .tar.gz, .tar or .zip of the source")]
    NotAnArchive,
    #[error("the archive is invalid or truncated: {0}")]
    Invalid(String),
    #[error("archive entry `{entry}` {reason}")]
    Entry { entry: String, reason: String },
    #[error("the archive expands to more than {limit} bytes (the decompression limit)")]
    TooLarge { limit: u64 },
    #[error("the archive has more than {limit} entries (the entry limit)")]
    TooManyEntries { limit: u64 },
    /// The server could not write what it extracts (a full disk): not the
    /// client's fault. Names the entry, never the server's path.
    #[error("cannot extract archive entry `{entry}`")]
    Io {
        entry: String,
        #[source]
        source: io::Error,
    },
    /// The server could not read the upload it stored.
    #[error("cannot read the stored upload")]
    Read(#[source] io::Error),
}

impl ArchiveError {
    /// A short machine-readable kind, for metrics and API errors.
    pub fn kind(&self) -> &'static str {
        match self {
            ArchiveError::NotAnArchive => "not-an-archive",
            ArchiveError::Invalid(_) => "invalid-archive",
            ArchiveError::Entry { .. } => "bad-entry",
            ArchiveError::TooLarge { .. } => "too-large",
            ArchiveError::TooManyEntries { .. } => "too-many-entries",
            ArchiveError::Io { .. } | ArchiveError::Read(_) => "io",
        }
    }

    /// Whether the client is to blame (400) rather than the server (500).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, ArchiveError::Io { .. } | ArchiveError::Read(_))
    }
}

fn entry_err(entry: &str, reason: impl Into<String>) -> ArchiveError {
    // A name is at most a few KiB ([`MAX_EXTENSION`]), but an answer
    // need not echo all of it.
    let entry = match entry.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &entry[..i]),
        None => entry.to_string(),
    };
    ArchiveError::Entry {
        entry,
        reason: reason.into(),
    }
}

/// The largest GNU long-name or PAX extension header read (tar-rs holds
/// one whole in memory): a name or link target is at most PATH_MAX.
const MAX_EXTENSION: u64 = 64 * 1024;
/// The most components a path may have.
const MAX_DEPTH: usize = 128;
/// The longest path (PATH_MAX).
const MAX_PATH: usize = 4096;

/// An I/O error while extracting `entry`. A name the filesystem cannot
/// hold (ENAMETOOLONG) is the archive's doing, so it is an entry error.
fn io_err(entry: &str) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| {
        if source.raw_os_error() == Some(libc::ENAMETOOLONG) {
            entry_err(entry, "has a name too long for the server's filesystem")
        } else {
            ArchiveError::Io {
                entry: entry.to_string(),
                source,
            }
        }
    }
}

/// The longest name of one path component most filesystems hold.
const NAME_MAX: usize = 255;

/// How many links one resolution may follow before it counts as a loop
/// (the kernel's limit).
const MAX_HOPS: u32 = 40;

/// What kind of archive the bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    TarGz,
    Tar,
    Zip,
}

/// Sniffs the format from the first bytes.
pub fn sniff(data: &[u8]) -> Option<Format> {
    if data.starts_with(&[0x1f, 0x8b]) {
        Some(Format::TarGz)
    } else if data.starts_with(b"PK\x03\x04") || data.starts_with(b"PK\x05\x06") {
        Some(Format::Zip)
    } else if data.len() >= 262 && &data[257..262] == b"ustar" {
        Some(Format::Tar)
    } else {
        None
    }
}

/// Extracts `input` (a tar.gz, tar or zip, read from its start) into
/// `dest`, which must exist and be empty. On error `dest` may hold a
/// partial tree; the caller removes it.
pub fn extract<R: Read + Seek>(
    mut input: R,
    dest: &Path,
    limits: Limits,
) -> Result<Format, ArchiveError> {
    let mut head = Vec::with_capacity(512);
    input
        .by_ref()
        .take(512)
        .read_to_end(&mut head)
        .map_err(ArchiveError::Read)?;
    input.seek(SeekFrom::Start(0)).map_err(ArchiveError::Read)?;
    let format = sniff(&head).ok_or(ArchiveError::NotAnArchive)?;
    let mut x = Extractor {
        root: dest.to_path_buf(),
        limits,
        bytes: 0,
        entries: 0,
        links: Vec::new(),
    };
    match format {
        Format::TarGz => {
            let gz = flate2::read::GzDecoder::new(io::BufReader::new(input));
            // Headers and padding count too, so that a bomb of empty
            // entries or zero blocks is stopped as well.
            let budget = limits
                .max_bytes
                .saturating_add(limits.max_entries.saturating_mul(1536))
                .saturating_add(1 << 20);
            x.tar(Budget {
                inner: gz,
                left: budget,
            })?
        }
        Format::Tar => x.tar(Budget {
            inner: io::BufReader::new(input),
            left: u64::MAX,
        })?,
        Format::Zip => x.zip(input)?,
    }
    x.recheck_links()?;
    Ok(format)
}

/// Reads a tar stream through, looking at each header as it passes: an
/// extension header (GNU long name or link, PAX) larger than
/// [`MAX_EXTENSION`] is an error before tar-rs reads it whole into memory.
struct HeaderGuard<R> {
    inner: R,
    header: Vec<u8>,
    /// Bytes of the current entry's data (with padding) still to pass.
    data_left: u64,
}

const EXTENSION_TOO_LARGE: &str = "an extension header (long name or PAX) is larger than 64 KiB";

impl<R> HeaderGuard<R> {
    fn new(inner: R) -> Self {
        HeaderGuard {
            inner,
            header: Vec::with_capacity(512),
            data_left: 0,
        }
    }

    fn look(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.data_left > 0 {
                let n = (self.data_left.min(bytes.len() as u64)) as usize;
                self.data_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = (512 - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == 512 {
                let size = header_size(&self.header);
                if matches!(self.header[156], b'L' | b'K' | b'x' | b'g') && size > MAX_EXTENSION {
                    return Err(io::Error::other(EXTENSION_TOO_LARGE));
                }
                self.data_left = size.div_ceil(512) * 512;
                self.header.clear();
            }
        }
        Ok(())
    }
}

/// The size field of a tar header: octal, or base-256 (GNU) when its high
/// bit is set.
fn header_size(h: &[u8]) -> u64 {
    let field = &h[124..136];
    if field[0] & 0x80 != 0 {
        return field[1..].iter().fold(0u64, |acc, b| {
            acc.saturating_mul(256).saturating_add(u64::from(*b))
        });
    }
    field
        .iter()
        .skip_while(|b| **b == b' ' || **b == 0)
        .take_while(|b| (b'0'..=b'7').contains(b))
        .fold(0u64, |acc, b| {
            acc.saturating_mul(8).saturating_add(u64::from(b - b'0'))
        })
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.look(&buf[..n])?;
        Ok(n)
    }
}

/// A reader that fails once more than `left` bytes were read.
struct Budget<R> {
    inner: R,
    left: u64,
}

const BUDGET_EXCEEDED: &str = "ftl: decompression budget exceeded";

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::other(BUDGET_EXCEEDED));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn is_budget(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|i| i.to_string() == BUDGET_EXCEEDED)
}

struct Extractor {
    root: PathBuf,
    limits: Limits,
    bytes: u64,
    entries: u64,
    /// Every symlink extracted (entry name, place), for the check once the
    /// whole tree is there: a later entry can change where an earlier link
    /// resolves (`l -> q/../x`, then `q -> .`).
    links: Vec<(String, PathBuf)>,
}

/// A checked relative path: no `..`, not absolute, not empty, no component
/// longer than a filesystem holds.
fn checked_relative(name: &str, path: &Path) -> Result<Option<PathBuf>, ArchiveError> {
    if path.as_os_str().len() > MAX_PATH {
        return Err(entry_err(
            name,
            format!("has a path longer than {MAX_PATH} bytes"),
        ));
    }
    if path.components().count() > MAX_DEPTH {
        return Err(entry_err(
            name,
            format!("has a path deeper than {MAX_DEPTH} directories"),
        ));
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => {
                if p.len() > NAME_MAX {
                    return Err(entry_err(
                        name,
                        format!("has a path component longer than {NAME_MAX} bytes"),
                    ));
                }
                out.push(p)
            }
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(entry_err(name, "escapes the upload directory with `..`"))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(entry_err(name, "is an absolute path"))
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Why a link's target does not stay in the tree.
#[derive(Debug, PartialEq, Eq)]
enum Escape {
    /// `..` above the root, after following these links (empty: by the
    /// target's own text).
    Above { through: Vec<PathBuf> },
    /// An absolute target, here or in a link followed.
    Absolute { through: Vec<PathBuf> },
    /// More than [`MAX_HOPS`] links.
    Loop,
}

impl Escape {
    fn reason(&self, target: &Path) -> String {
        let through = |links: &[PathBuf]| match links.last() {
            None => String::new(),
            Some(l) => format!(" through the link `{}` already in it", l.display()),
        };
        match self {
            Escape::Above { through: links } => format!(
                "is a symlink pointing out of the upload ({}{})",
                target.display(),
                through(links)
            ),
            Escape::Absolute { through: links } if links.is_empty() => format!(
                "is a symlink to an absolute path ({}), which points out of the upload",
                target.display()
            ),
            Escape::Absolute { through: links } => format!(
                "is a symlink pointing out of the upload ({}{}, which is absolute)",
                target.display(),
                through(links)
            ),
            Escape::Loop => format!(
                "is a symlink ({}) whose resolution follows more than {MAX_HOPS} links",
                target.display()
            ),
        }
    }
}

/// Where `target`, the text of a link in the directory `dir` (components
/// below `root`), leads in the tree as it is on disk: component by
/// component, each link already there followed (its own text resolved
/// from its own directory), never above the root. A component that is not
/// there (yet) or is no link is taken as it is written, so the answer is
/// strict: a link the kernel could not follow at all may be refused, one
/// that leaves the root never passes.
fn resolve_in(
    root: &Path,
    dir: &[OsString],
    target: &Path,
    hops: &mut u32,
    through: &mut Vec<PathBuf>,
) -> Result<Vec<OsString>, Escape> {
    let mut cur = dir.to_vec();
    for c in target.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if cur.pop().is_none() {
                    return Err(Escape::Above {
                        through: through.clone(),
                    });
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(Escape::Absolute {
                    through: through.clone(),
                })
            }
            Component::Normal(n) => {
                cur.push(n.to_os_string());
                // `cur` holds resolved components only: no link above this
                // one, so the path names exactly this place.
                let rel: PathBuf = cur.iter().collect();
                let at = root.join(&rel);
                let is_link = fs::symlink_metadata(&at)
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(false);
                if is_link {
                    *hops += 1;
                    if *hops > MAX_HOPS {
                        return Err(Escape::Loop);
                    }
                    // A link of the tree, read as the text it holds.
                    let Ok(next) = fs::read_link(&at) else {
                        continue;
                    };
                    through.push(rel);
                    cur.pop();
                    cur = resolve_in(root, &cur, &next, hops, through)?;
                }
            }
        }
    }
    Ok(cur)
}

impl Extractor {
    fn count(&mut self, name: &str) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            tracing::debug!(entry = name, "entry limit reached");
            return Err(ArchiveError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    /// Makes sure no existing component of `rel` below the root (the path
    /// itself included when `include_self`) is a symlink or a non-directory,
    /// then creates the parent directories.
    fn prepare(
        &mut self,
        name: &str,
        rel: &Path,
        include_self: bool,
    ) -> Result<PathBuf, ArchiveError> {
        let comps: Vec<_> = rel.components().collect();
        let upto = if include_self {
            comps.len()
        } else {
            comps.len() - 1
        };
        let mut p = self.root.clone();
        for c in &comps[..upto] {
            p.push(c);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(entry_err(name, "passes through a symlink"))
                }
                Ok(m) if !m.is_dir() => {
                    return Err(entry_err(name, "is below a file that is not a directory"))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // A directory an entry's path makes counts as an entry.
                    self.count(name)?;
                    fs::create_dir(&p).map_err(io_err(name))?
                }
                Err(e) => return Err(io_err(name)(e)),
            }
        }
        let dest = self.root.join(rel);
        if !include_self {
            match fs::symlink_metadata(&dest) {
                Ok(m) if m.is_dir() => return Err(entry_err(name, "replaces a directory")),
                // Never write through an existing link: remove it first.
                Ok(_) => fs::remove_file(&dest).map_err(io_err(name))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(name)(e)),
            }
        }
        Ok(dest)
    }

    fn write_file(
        &mut self,
        name: &str,
        rel: &Path,
        declared: u64,
        mode: u32,
        reader: &mut dyn Read,
    ) -> Result<(), ArchiveError> {
        if self.bytes.saturating_add(declared) > self.limits.max_bytes {
            return Err(ArchiveError::TooLarge {
                limit: self.limits.max_bytes,
            });
        }
        let dest = self.prepare(name, rel, false)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dest)
            .map_err(io_err(name))?;
        let allowed = self.limits.max_bytes - self.bytes;
        let mut limited = reader.take(allowed + 1);
        let n = copy(&mut limited, &mut f, name, self.limits.max_bytes)?;
        if n > allowed {
            return Err(ArchiveError::TooLarge {
                limit: self.limits.max_bytes,
            });
        }
        self.bytes += n;
        set_mode(&f, name, if mode & 0o111 != 0 { 0o755 } else { 0o644 })?;
        Ok(())
    }

    /// Where a link at `rel` to `target` leads in the tree as it is now.
    fn check_link(&self, rel: &Path, target: &Path) -> Result<(), Escape> {
        let dir: Vec<OsString> = rel
            .parent()
            .into_iter()
            .flat_map(|p| p.components())
            .map(|c| c.as_os_str().to_os_string())
            .collect();
        resolve_in(&self.root, &dir, target, &mut 0, &mut Vec::new()).map(|_| ())
    }

    fn symlink(&mut self, name: &str, rel: &Path, target: &Path) -> Result<(), ArchiveError> {
        if target.as_os_str().is_empty() {
            return Err(entry_err(name, "is a symlink without a target"));
        }
        self.check_link(rel, target)
            .map_err(|e| entry_err(name, e.reason(target)))?;
        let dest = self.prepare(name, rel, false)?;
        std::os::unix::fs::symlink(target, &dest).map_err(io_err(name))?;
        self.links.push((name.to_string(), rel.to_path_buf()));
        Ok(())
    }

    /// Every link of the finished tree, resolved again: the tree is final
    /// now, so what passes here is what a reader of the tree meets.
    fn recheck_links(&self) -> Result<(), ArchiveError> {
        for (name, rel) in &self.links {
            let at = self.root.join(rel);
            let Ok(target) = fs::read_link(&at) else {
                // Replaced by a later entry.
                continue;
            };
            self.check_link(rel, &target)
                .map_err(|e| entry_err(name, e.reason(&target)))?;
        }
        Ok(())
    }

    fn hardlink(&mut self, name: &str, rel: &Path, target: &Path) -> Result<(), ArchiveError> {
        let shown = target.display().to_string();
        let target = checked_relative(name, target)
            .map_err(|_| {
                entry_err(
                    name,
                    format!("is a hardlink pointing out of the upload ({shown})"),
                )
            })?
            .ok_or_else(|| entry_err(name, "is a hardlink with an empty target"))?;
        // The target must be a regular file already extracted, reached
        // without passing through a symlink.
        let mut p = self.root.clone();
        for c in target.components() {
            p.push(c);
            let m = fs::symlink_metadata(&p).map_err(|_| {
                entry_err(
                    name,
                    format!("is a hardlink to `{shown}`, which is not in the upload"),
                )
            })?;
            if m.file_type().is_symlink() {
                return Err(entry_err(name, "is a hardlink through a symlink"));
            }
        }
        if !fs::symlink_metadata(&p)
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            return Err(entry_err(
                name,
                format!("is a hardlink to `{shown}`, which is not a file"),
            ));
        }
        let size = fs::metadata(&p).map_err(io_err(name))?.len();
        if self.bytes.saturating_add(size) > self.limits.max_bytes {
            return Err(ArchiveError::TooLarge {
                limit: self.limits.max_bytes,
            });
        }
        let dest = self.prepare(name, rel, false)?;
        // A copy, not a link: nothing in the tree shares an inode.
        fs::copy(&p, &dest).map_err(io_err(name))?;
        self.bytes += size;
        Ok(())
    }

    fn dir(&mut self, name: &str, rel: &Path) -> Result<(), ArchiveError> {
        self.prepare(name, rel, true).map(|_| ())
    }

    fn tar<R: Read>(&mut self, reader: Budget<R>) -> Result<(), ArchiveError> {
        let mut archive = tar::Archive::new(HeaderGuard::new(reader));
        let entries = archive.entries().map_err(|e| self.read_error(e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.read_error(e))?;
            let raw = entry.path().map_err(|e| self.read_error(e))?.into_owned();
            let name = raw.display().to_string();
            self.count(&name)?;
            let kind = entry.header().entry_type();
            let Some(rel) = checked_relative(&name, &raw)? else {
                if kind.is_dir() {
                    continue;
                }
                return Err(entry_err(&name, "has an empty path"));
            };
            use tar::EntryType as T;
            match kind {
                T::Regular | T::Continuous => {
                    let size = entry.size();
                    let mode = entry.header().mode().unwrap_or(0o644);
                    self.write_file(&name, &rel, size, mode, &mut entry)?;
                }
                T::Directory => self.dir(&name, &rel)?,
                T::Symlink => {
                    let target = entry
                        .link_name()
                        .map_err(|e| self.read_error(e))?
                        .ok_or_else(|| entry_err(&name, "is a symlink without a target"))?
                        .into_owned();
                    self.symlink(&name, &rel, &target)?
                }
                T::Link => {
                    let target = entry
                        .link_name()
                        .map_err(|e| self.read_error(e))?
                        .ok_or_else(|| entry_err(&name, "is a hardlink without a target"))?
                        .into_owned();
                    self.hardlink(&name, &rel, &target)?
                }
                T::Char | T::Block => return Err(entry_err(&name, "is a device file")),
                T::Fifo => return Err(entry_err(&name, "is a FIFO")),
                T::GNUSparse => return Err(entry_err(&name, "is a sparse file (not supported)")),
                T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
                other => {
                    return Err(entry_err(
                        &name,
                        format!(
                            "has an unsupported entry type {:?}",
                            other.as_byte() as char
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    fn read_error(&self, e: io::Error) -> ArchiveError {
        if is_budget(&e) {
            ArchiveError::TooLarge {
                limit: self.limits.max_bytes,
            }
        } else {
            ArchiveError::Invalid(e.to_string())
        }
    }

    fn zip<R: Read + Seek>(&mut self, mut input: R) -> Result<(), ArchiveError> {
        // The zip crate reads the whole central directory first: its
        // declared size and entry count are checked before.
        if let Some((entries, cd_size)) = zip_directory(&mut input).map_err(ArchiveError::Read)? {
            if entries > self.limits.max_entries {
                return Err(ArchiveError::TooManyEntries {
                    limit: self.limits.max_entries,
                });
            }
            // 46 bytes and a name (at most MAX_PATH) an entry, with room
            // for extra fields.
            if cd_size > entries.saturating_mul(46 + MAX_PATH as u64 + 1024) + 4096 {
                return Err(ArchiveError::Invalid(
                    "the zip's central directory is larger than its entries need".into(),
                ));
            }
        }
        input.seek(SeekFrom::Start(0)).map_err(ArchiveError::Read)?;
        let mut archive =
            zip::ZipArchive::new(input).map_err(|e| ArchiveError::Invalid(e.to_string()))?;
        for i in 0..archive.len() {
            let mut file = archive
                .by_index(i)
                .map_err(|e| ArchiveError::Invalid(e.to_string()))?;
            let name = file.name().to_string();
            self.count(&name)?;
            let Some(rel) = checked_relative(&name, Path::new(&name))? else {
                if file.is_dir() {
                    continue;
                }
                return Err(entry_err(&name, "has an empty path"));
            };
            let mode = file.unix_mode().unwrap_or(0o644);
            match mode & 0o170000 {
                0o020000 | 0o060000 => return Err(entry_err(&name, "is a device file")),
                0o010000 => return Err(entry_err(&name, "is a FIFO")),
                _ => {}
            }
            if file.is_symlink() {
                let mut target = String::new();
                file.by_ref()
                    .take(4096)
                    .read_to_string(&mut target)
                    .map_err(|e| ArchiveError::Invalid(e.to_string()))?;
                self.symlink(&name, &rel, Path::new(&target))?;
            } else if file.is_dir() {
                self.dir(&name, &rel)?;
            } else {
                let size = file.size();
                self.write_file(&name, &rel, size, mode, &mut file)?;
            }
        }
        Ok(())
    }
}

/// The entry count and central directory size a zip declares in its end
/// of central directory record (zip64's where the classic one says so);
/// `None` when there is no such record (the zip crate then says why).
fn zip_directory<R: Read + Seek>(input: &mut R) -> io::Result<Option<(u64, u64)>> {
    let len = input.seek(SeekFrom::End(0))?;
    let tail_len = len.min(65_535 + 22);
    input.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = vec![0u8; tail_len as usize];
    input.read_exact(&mut tail)?;
    let Some(at) = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| tail[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
    else {
        return Ok(None);
    };
    let eocd = &tail[at..];
    let u16_at = |b: &[u8], o: usize| u64::from(u16::from_le_bytes([b[o], b[o + 1]]));
    let u32_at =
        |b: &[u8], o: usize| u64::from(u32::from_le_bytes(b[o..o + 4].try_into().unwrap()));
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let (mut entries, mut size) = (u16_at(eocd, 10), u32_at(eocd, 12));
    if entries == 0xffff || size == 0xffff_ffff {
        // The zip64 locator sits just before the record.
        let eocd_pos = len - tail_len + at as u64;
        if eocd_pos >= 20 {
            input.seek(SeekFrom::Start(eocd_pos - 20))?;
            let mut loc = [0u8; 20];
            input.read_exact(&mut loc)?;
            if loc[..4] == [0x50, 0x4b, 0x06, 0x07] {
                input.seek(SeekFrom::Start(u64_at(&loc, 8)))?;
                let mut rec = [0u8; 56];
                input.read_exact(&mut rec)?;
                if rec[..4] == [0x50, 0x4b, 0x06, 0x06] {
                    entries = u64_at(&rec, 32);
                    size = u64_at(&rec, 40);
                }
            }
        }
    }
    Ok(Some((entries, size)))
}

fn copy(r: &mut dyn Read, w: &mut File, name: &str, limit: u64) -> Result<u64, ArchiveError> {
    let mut buf = [0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_budget(&e) => return Err(ArchiveError::TooLarge { limit }),
            Err(e) => {
                return Err(ArchiveError::Invalid(format!(
                    "reading entry `{name}`: {e}"
                )))
            }
        };
        w.write_all(&buf[..n]).map_err(io_err(name))?;
        total += n as u64;
    }
}

fn set_mode(f: &File, name: &str, mode: u32) -> Result<(), ArchiveError> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn limits() -> Limits {
        Limits {
            max_bytes: 1 << 20,
            max_entries: 100,
        }
    }

    fn tar_with(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h
    }

    /// Writes a raw name into the header, bypassing the tar crate's checks.
    fn raw_name(h: &mut tar::Header, name: &str) {
        let bytes = &mut h.as_old_mut().name;
        bytes.fill(0);
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
    }

    fn extract_tar(data: &[u8]) -> (tempfile::TempDir, Result<Format, ArchiveError>) {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("src");
        fs::create_dir(&dest).unwrap();
        let r = extract(Cursor::new(data), &dest, limits());
        (dir, r)
    }

    /// tar-rs reads a GNU long name (or a PAX header) whole into memory:
    /// a 1 MB upload claiming a 1 GB name took the server to 4 GB. The
    /// header is refused from its size, before anything of it is read.
    #[test]
    fn a_huge_long_name_is_refused_before_it_is_read() {
        for kind in [b'L', b'x'] {
            let mut h = header(tar::EntryType::new(kind), 1 << 30);
            raw_name(&mut h, "././@LongLink");
            let mut data = h.as_bytes().to_vec();
            data.extend_from_slice(&[b'a'; 4096]);
            let (_d, r) = extract_tar(&data);
            let e = r.unwrap_err();
            assert!(e.to_string().contains("larger than 64 KiB"), "{e}");
            assert!(e.is_client_error());
        }
    }

    /// Each entry could make thousands of directories on its way (a 4.6 KB
    /// upload made 400,000): the directories an entry's path makes count
    /// as entries, and a path is at most 128 deep.
    #[test]
    fn the_directories_a_path_makes_count_and_depth_is_bounded() {
        let deep = |depth: usize| {
            let name = format!("{}f", "d/".repeat(depth));
            tar_with(|b| {
                let h = header(tar::EntryType::Regular, 1);
                let mut h = h;
                b.append_data(&mut h, name, &b"x"[..]).unwrap();
            })
        };
        // 120 directories for one file: past the limit of 100 entries.
        let (_d, r) = extract_tar(&deep(120));
        assert!(
            matches!(r, Err(ArchiveError::TooManyEntries { limit: 100 })),
            "{r:?}"
        );
        let (_d, r) = extract_tar(&deep(200));
        let e = r.unwrap_err().to_string();
        assert!(e.contains("deeper than 128"), "{e}");
        let (_d, r) = extract_tar(&deep(20));
        r.unwrap();
    }

    /// The zip crate reads the whole central directory before the entry
    /// limit could apply (2M entries: 1.2 GB): the count the archive
    /// declares is checked first.
    #[test]
    fn a_zip_declaring_too_many_entries_is_refused_before_reading_them() {
        let mut eocd = vec![0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0];
        eocd.extend_from_slice(&60_000u16.to_le_bytes());
        eocd.extend_from_slice(&60_000u16.to_le_bytes());
        eocd.extend_from_slice(&(60_000u32 * 46).to_le_bytes());
        eocd.extend_from_slice(&0u32.to_le_bytes());
        eocd.extend_from_slice(&0u16.to_le_bytes());
        let mut data = vec![0x50, 0x4b, 0x03, 0x04];
        data.extend_from_slice(&[0u8; 60]);
        data.extend_from_slice(&eocd);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("src");
        fs::create_dir(&dest).unwrap();
        let r = extract(Cursor::new(data), &dest, limits());
        assert!(
            matches!(r, Err(ArchiveError::TooManyEntries { limit: 100 })),
            "{r:?}"
        );
    }

    #[test]
    fn a_plain_tree_extracts() {
        let data = tar_with(|b| {
            let mut h = header(tar::EntryType::Regular, 3);
            b.append_data(&mut h, "app/main.py", &b"hi\n"[..]).unwrap();
            let mut h = header(tar::EntryType::Symlink, 0);
            b.append_link(&mut h, "app/link", "main.py").unwrap();
            let mut h = header(tar::EntryType::Link, 0);
            b.append_link(&mut h, "app/hard", "app/main.py").unwrap();
        });
        let (dir, r) = extract_tar(&data);
        assert_eq!(r.unwrap(), Format::Tar);
        let src = dir.path().join("src/app");
        assert_eq!(fs::read_to_string(src.join("main.py")).unwrap(), "hi\n");
        assert_eq!(fs::read_to_string(src.join("hard")).unwrap(), "hi\n");
        assert_eq!(
            fs::read_link(src.join("link")).unwrap(),
            Path::new("main.py")
        );
    }

    #[test]
    fn traversal_absolute_and_links_out_are_refused_naming_the_entry() {
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "dotdot",
                tar_with(|b| {
                    let mut h = header(tar::EntryType::Regular, 1);
                    raw_name(&mut h, "../evil");
                    b.append(&h, &b"x"[..]).unwrap();
                }),
                "`../evil` escapes",
            ),
            (
                "absolute",
                tar_with(|b| {
                    let mut h = header(tar::EntryType::Regular, 1);
                    raw_name(&mut h, "/tmp/evil");
                    b.append(&h, &b"x"[..]).unwrap();
                }),
                "`/tmp/evil` is an absolute path",
            ),
            (
                "symlink out",
                tar_with(|b| {
                    let mut h = header(tar::EntryType::Symlink, 0);
                    b.append_link(&mut h, "up", "../..").unwrap();
                }),
                "`up` is a symlink pointing out",
            ),
            (
                "symlink absolute",
                tar_with(|b| {
                    let mut h = header(tar::EntryType::Symlink, 0);
                    b.append_link(&mut h, "etc", "/etc").unwrap();
                }),
                "`etc` is a symlink to an absolute path",
            ),
            (
                "hardlink out",
                tar_with(|b| {
                    let mut h = header(tar::EntryType::Link, 0);
                    b.append_link(&mut h, "passwd", "/etc/passwd").unwrap();
                }),
                "`passwd` is a hardlink pointing out",
            ),
            (
                "device",
                tar_with(|b| {
                    let mut h = header(tar::EntryType::Char, 0);
                    b.append_data(&mut h, "null", &b""[..]).unwrap();
                }),
                "`null` is a device file",
            ),
        ];
        for (what, data, want) in cases {
            let (dir, r) = extract_tar(&data);
            let e = r.expect_err(what).to_string();
            assert!(e.contains(want), "{what}: {e}");
            assert!(!dir.path().join("evil").exists());
        }
    }

    fn symlink(b: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) {
        let mut h = header(tar::EntryType::Symlink, 0);
        b.append_link(&mut h, name, target).unwrap();
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        let mut h = header(tar::EntryType::Regular, data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    }

    /// Each link looks inside by its text; resolved against the links
    /// already extracted, the second leaves the root (and would read the
    /// server's file beside it).
    #[test]
    fn an_upload_link_chain_out_of_the_tree_is_refused() {
        let data = tar_with(|b| {
            let mut h = header(tar::EntryType::Directory, 0);
            b.append_data(&mut h, "a/b", &b""[..]).unwrap();
            symlink(b, "a/b/s", "../..");
            symlink(b, "requirements.txt", "a/b/s/../../host-file");
        });
        let (dir, r) = extract_tar(&data);
        fs::write(dir.path().join("host-file"), "HOST SECRET").unwrap();
        let e = r.unwrap_err().to_string();
        assert_eq!(
            e,
            "archive entry `requirements.txt` is a symlink pointing out of the upload \
             (a/b/s/../../host-file through the link `a/b/s` already in it)"
        );
        assert!(!dir.path().join("src/requirements.txt").exists());

        // A link through an absolute one is refused as well (the absolute
        // one is refused itself; here it is made by hand).
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("src");
        fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        let x = Extractor {
            root: root.clone(),
            limits: limits(),
            bytes: 0,
            entries: 0,
            links: Vec::new(),
        };
        assert_eq!(
            x.check_link(Path::new("l"), Path::new("abs/passwd")),
            Err(Escape::Absolute {
                through: vec![PathBuf::from("abs")]
            })
        );
    }

    #[test]
    fn a_link_that_a_later_entry_turns_outwards_is_refused() {
        // `l -> q/../x` stays inside while `q` is nothing; `q -> .` then
        // makes it `./../x`.
        let data = tar_with(|b| {
            symlink(b, "l", "q/../x");
            symlink(b, "q", ".");
        });
        let (_dir, r) = extract_tar(&data);
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with("archive entry `l` is a symlink pointing out of the upload"),
            "{e}"
        );
        assert!(e.contains("through the link `q`"), "{e}");

        let looped = tar_with(|b| {
            symlink(b, "x", "y");
            symlink(b, "y", "x");
        });
        let (_dir, r) = extract_tar(&looped);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("more than 40 links"), "{e}");
    }

    #[test]
    fn link_chains_that_stay_inside_extract() {
        let data = tar_with(|b| {
            file(b, "a/b/real.txt", b"flask\n");
            symlink(b, "a/b/s", "..");
            symlink(b, "inside.txt", "a/b/s/b/real.txt");
            symlink(b, "top", "a/b/s/..");
            symlink(b, "dangling", "not/there");
        });
        let (dir, r) = extract_tar(&data);
        r.unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("src/inside.txt")).unwrap(),
            "flask\n"
        );
        assert_eq!(
            fs::read_link(dir.path().join("src/top")).unwrap(),
            Path::new("a/b/s/..")
        );
    }

    #[test]
    fn a_too_long_entry_name_is_refused_naming_it_without_a_server_path() {
        let long = "n".repeat(300);
        let data = tar_with(|b| {
            let mut h = header(tar::EntryType::Regular, 1);
            b.append_data(&mut h, &long, &b"x"[..]).unwrap();
        });
        let (dir, r) = extract_tar(&data);
        let e = r.unwrap_err();
        assert!(e.is_client_error(), "{e:?}");
        // Named by its first 200 characters.
        assert_eq!(
            e.to_string(),
            format!(
                "archive entry `{}…` has a path component longer than 255 bytes",
                &long[..200]
            )
        );
        // Each component fits, the whole path does not (PATH_MAX).
        let deep = vec!["d".repeat(250); 20].join("/") + "/f";
        let data = tar_with(|b| {
            let mut h = header(tar::EntryType::Regular, 1);
            b.append_data(&mut h, &deep, &b"x"[..]).unwrap();
        });
        let (dir2, r) = extract_tar(&data);
        let e = r.unwrap_err();
        assert!(e.is_client_error(), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("archive entry `{}", &deep[..100])),
            "{msg}"
        );
        // Refused from its length, before the filesystem says ENAMETOOLONG.
        assert!(msg.ends_with("has a path longer than 4096 bytes"), "{msg}");
        for d in [dir.path(), dir2.path()] {
            assert!(!msg.contains(d.to_str().unwrap()));
        }
    }

    #[test]
    fn writing_through_an_inside_symlink_is_refused() {
        let data = tar_with(|b| {
            let mut h = header(tar::EntryType::Directory, 0);
            b.append_data(&mut h, "d", &b""[..]).unwrap();
            let mut h = header(tar::EntryType::Symlink, 0);
            b.append_link(&mut h, "l", "d").unwrap();
            let mut h = header(tar::EntryType::Regular, 1);
            b.append_data(&mut h, "l/f", &b"x"[..]).unwrap();
        });
        let (_dir, r) = extract_tar(&data);
        assert!(r
            .unwrap_err()
            .to_string()
            .contains("`l/f` passes through a symlink"));
    }

    #[test]
    fn bombs_and_junk_are_refused() {
        // A gzip of 4 MiB of one file: past the 1 MiB limit.
        let big = tar_with(|b| {
            let mut h = header(tar::EntryType::Regular, 4 << 20);
            b.append_data(&mut h, "zeros", io::repeat(0).take(4 << 20))
                .unwrap();
        });
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&big).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 200 << 10);
        let (_d, r) = extract_tar(&bomb);
        assert!(matches!(r, Err(ArchiveError::TooLarge { .. })), "{r:?}");

        let (_d, r) = extract_tar(b"just some text, not an archive");
        assert!(matches!(r, Err(ArchiveError::NotAnArchive)), "{r:?}");

        let truncated = &bomb[..bomb.len() / 2];
        let (_d, r) = extract_tar(truncated);
        assert!(
            matches!(
                r,
                Err(ArchiveError::Invalid(_)) | Err(ArchiveError::TooLarge { .. })
            ),
            "{r:?}"
        );

        let many = tar_with(|b| {
            for i in 0..200 {
                let mut h = header(tar::EntryType::Regular, 0);
                b.append_data(&mut h, format!("f{i}"), &b""[..]).unwrap();
            }
        });
        let (_d, r) = extract_tar(&many);
        assert!(
            matches!(r, Err(ArchiveError::TooManyEntries { limit: 100 })),
            "{r:?}"
        );
    }

    #[test]
    fn zip_extracts_and_refuses_traversal() {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default();
        w.start_file("app/main.py", opts).unwrap();
        w.write_all(b"print(1)\n").unwrap();
        let good = w.finish().unwrap().into_inner();
        let (dir, r) = extract_tar(&good);
        assert_eq!(r.unwrap(), Format::Zip);
        assert!(dir.path().join("src/app/main.py").is_file());

        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        w.start_file("../evil.py", opts).unwrap();
        w.write_all(b"x").unwrap();
        let bad = w.finish().unwrap().into_inner();
        let (_d, r) = extract_tar(&bad);
        assert!(r.unwrap_err().to_string().contains("`../evil.py` escapes"));
    }
}
