//! A minimal reader of jar (zip) files: the central directory (names,
//! CRC-32s, sizes: enough to key a layer without inflating anything) and
//! the contents of single entries (stored or deflated). No zip64, which
//! jars of apps do not need; such a jar is an error, never misread.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

/// One entry of the central directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub crc32: u32,
    pub compressed_size: u64,
    pub size: u64,
    /// 0 stored, 8 deflated.
    pub method: u16,
    pub local_header: u64,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.name.ends_with('/')
    }

    /// Whether the name is a safe relative path (no `..`, not absolute).
    pub fn is_safe(&self) -> bool {
        let p = Path::new(&self.name);
        !self.name.is_empty()
            && !self.name.contains('\\')
            && p.components().all(|c| matches!(c, Component::Normal(_)))
    }
}

/// An open jar.
pub struct Jar {
    file: File,
    pub entries: Vec<Entry>,
}

fn u16le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

impl Jar {
    pub fn open(path: &Path) -> std::io::Result<Jar> {
        Jar::from_file(File::open(path)?)
    }

    /// Reads the jar open as `file`.
    pub fn from_file(mut file: File) -> std::io::Result<Jar> {
        let len = file.metadata()?.len();
        // The end of central directory record: 22 bytes plus a comment of
        // at most 64 KiB.
        let tail_len = len.min(22 + 65535);
        file.seek(SeekFrom::Start(len - tail_len))?;
        let mut tail = vec![0u8; tail_len as usize];
        file.read_exact(&mut tail)?;
        let eocd = (0..tail.len().saturating_sub(21))
            .rev()
            .find(|&i| u32le(&tail, i) == 0x0605_4b50)
            .ok_or_else(|| bad("not a zip file (no end of central directory)"))?;
        let count = u16le(&tail, eocd + 10) as usize;
        let cd_size = u32le(&tail, eocd + 12) as u64;
        let cd_offset = u32le(&tail, eocd + 16) as u64;
        if count == 0xffff || cd_offset == 0xffff_ffff {
            return Err(bad("zip64 jars are not supported"));
        }
        file.seek(SeekFrom::Start(cd_offset))?;
        let mut cd = vec![0u8; cd_size as usize];
        file.read_exact(&mut cd)?;
        let mut entries = Vec::with_capacity(count);
        let mut at = 0usize;
        for _ in 0..count {
            if at + 46 > cd.len() || u32le(&cd, at) != 0x0201_4b50 {
                return Err(bad("corrupt central directory"));
            }
            let method = u16le(&cd, at + 10);
            let crc32 = u32le(&cd, at + 16);
            let compressed_size = u32le(&cd, at + 20) as u64;
            let size = u32le(&cd, at + 24) as u64;
            let name_len = u16le(&cd, at + 28) as usize;
            let extra_len = u16le(&cd, at + 30) as usize;
            let comment_len = u16le(&cd, at + 32) as usize;
            let local_header = u32le(&cd, at + 42) as u64;
            let name_end = at + 46 + name_len;
            if name_end > cd.len() {
                return Err(bad("corrupt central directory"));
            }
            let name = String::from_utf8_lossy(&cd[at + 46..name_end]).into_owned();
            entries.push(Entry {
                name,
                crc32,
                compressed_size,
                size,
                method,
                local_header,
            });
            at = name_end + extra_len + comment_len;
        }
        Ok(Jar { file, entries })
    }

    /// The uncompressed bytes of `entry`.
    pub fn read(&mut self, entry: &Entry) -> std::io::Result<Vec<u8>> {
        self.file.seek(SeekFrom::Start(entry.local_header))?;
        let mut header = [0u8; 30];
        self.file.read_exact(&mut header)?;
        if u32le(&header, 0) != 0x0403_4b50 {
            return Err(bad(format!("corrupt local header for {}", entry.name)));
        }
        let skip = u16le(&header, 26) as i64 + u16le(&header, 28) as i64;
        self.file.seek(SeekFrom::Current(skip))?;
        let raw = (&mut self.file).take(entry.compressed_size);
        let mut out = Vec::with_capacity(entry.size as usize);
        match entry.method {
            0 => {
                raw.take(entry.size).read_to_end(&mut out)?;
            }
            8 => {
                flate2::read::DeflateDecoder::new(raw).read_to_end(&mut out)?;
            }
            m => {
                return Err(bad(format!(
                    "{}: unsupported compression method {m}",
                    entry.name
                )))
            }
        }
        if out.len() as u64 != entry.size {
            return Err(bad(format!("{}: truncated entry", entry.name)));
        }
        Ok(out)
    }

    /// `META-INF/MANIFEST.MF`'s main attributes, continuation lines joined.
    pub fn manifest(&mut self) -> std::io::Result<Vec<(String, String)>> {
        let Some(entry) = self
            .entries
            .iter()
            .find(|e| e.name == "META-INF/MANIFEST.MF")
            .cloned()
        else {
            return Ok(Vec::new());
        };
        let text = String::from_utf8_lossy(&self.read(&entry)?).into_owned();
        Ok(parse_manifest(&text))
    }
}

/// The main section of a manifest as (name, value) pairs.
pub fn parse_manifest(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.is_empty() {
            break;
        }
        if let Some(cont) = line.strip_prefix(' ') {
            if let Some(last) = out.last_mut() {
                last.1.push_str(cont);
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_continuations() {
        let m = parse_manifest(
            "Manifest-Version: 1.0\r\nMain-Class: com.example.very.long.\r\n Name\r\n\r\nName: x\r\nA: b\r\n",
        );
        assert_eq!(
            m,
            vec![
                ("Manifest-Version".into(), "1.0".into()),
                ("Main-Class".into(), "com.example.very.long.Name".into())
            ]
        );
    }

    #[test]
    fn reads_the_prebuilt_sample() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/java/prebuilt/target/hello-1.0.0.jar");
        let mut jar = Jar::open(&path).unwrap();
        assert!(jar
            .entries
            .iter()
            .any(|e| e.name == "com/example/hello/Main.class"));
        assert!(jar.entries.iter().all(Entry::is_safe));
        let m = jar.manifest().unwrap();
        assert!(m.contains(&("Main-Class".into(), "com.example.hello.Main".into())));
        let e = jar
            .entries
            .iter()
            .find(|e| e.name == "greeting.txt")
            .cloned()
            .unwrap();
        assert_eq!(jar.read(&e).unwrap(), b"hello, world\n");
    }

    #[test]
    fn unsafe_names() {
        let e = |n: &str| Entry {
            name: n.into(),
            crc32: 0,
            compressed_size: 0,
            size: 0,
            method: 0,
            local_header: 0,
        };
        assert!(!e("../x").is_safe());
        assert!(!e("/etc/passwd").is_safe());
        assert!(!e("a/../../b").is_safe());
        assert!(e("a/b.class").is_safe());
        assert!(e("a/").is_safe());
    }
}
