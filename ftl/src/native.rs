//! Native code in a layer: which shared libraries its ELF files need from
//! the system they run on.
//!
//! A dependency layer is keyed by the runtime it runs on (interpreter
//! version and ABI, libc), not by the base image, so that a rebased image
//! reuses it. Code compiled in the sandbox can need more of the base than
//! that: an extension linked against the base's `libpython3.11.so.1.0` or
//! `libpq.so.5` runs only where that library is. [`foreign_needs`] finds
//! such a need, so that the plugin can mark the layer
//! [root-dependent](crate::LayerContents::root_dependent).
//!
//! Files are read as a step left them, through [`Dir`]: no link is
//! followed, and only an ELF file's headers and dynamic section are read.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use object::elf;
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::{Endianness, ReadCache, ReadRef};

use crate::beneath::{BeneathError, Dir, Kind};

/// The libraries the manylinux policies (PEP 513, 571, 599, 600; auditwheel's
/// `lib_whitelist`) let a wheel take from the system: every Linux system with
/// the same libc has them, so needing them ties a layer to no base.
const SYSTEM_LIBRARIES: &[&str] = &[
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "librt.so.1",
    "libpthread.so.0",
    "libgcc_s.so.1",
    "libstdc++.so.6",
    "libutil.so.1",
    "libnsl.so.1",
    "libresolv.so.2",
    "libcrypt.so.1",
    "libatomic.so.1",
    "libX11.so.6",
    "libXext.so.6",
    "libXrender.so.1",
    "libICE.so.6",
    "libSM.so.6",
    "libGL.so.1",
    "libgobject-2.0.so.0",
    "libgthread-2.0.so.0",
    "libglib-2.0.so.0",
];

/// Whether `soname` is a library every system of its libc has: one of
/// the manylinux policies' libraries, or the dynamic loader or libc of
/// glibc or musl (`ld-linux-x86-64.so.2`, `ld-musl-x86_64.so.1`, ...).
pub fn is_system_library(soname: &str) -> bool {
    SYSTEM_LIBRARIES.contains(&soname)
        || soname.starts_with("ld-linux")
        || soname.starts_with("ld64.so.")
        || soname.starts_with("ld-musl-")
        || soname.starts_with("libc.musl-")
}

/// What an ELF file's dynamic section asks of the loader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfNeeds {
    /// `DT_NEEDED`: the libraries it links against, by soname.
    pub needed: Vec<String>,
    /// `DT_RUNPATH` and `DT_RPATH` entries (`$ORIGIN/../foo.libs`).
    pub run_paths: Vec<String>,
    /// It has a dynamic segment whose section could not be read (headers
    /// stripped): what it needs is unknown.
    pub unreadable: bool,
}

/// The needs of the ELF file `file`; `None` when it is not an ELF file (or
/// not one a loader would take: a truncated or corrupt one).
pub fn elf_needs(file: File) -> Option<ElfNeeds> {
    let mut file = file;
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_err() || magic != *b"\x7fELF" {
        return None;
    }
    let data = ReadCache::new(file);
    match object::FileKind::parse(&data).ok()? {
        object::FileKind::Elf64 => needs::<elf::FileHeader64<Endianness>, _>(&data),
        object::FileKind::Elf32 => needs::<elf::FileHeader32<Endianness>, _>(&data),
        _ => None,
    }
}

fn needs<'data, H: FileHeader<Endian = Endianness>, R: ReadRef<'data>>(
    data: R,
) -> Option<ElfNeeds> {
    let header = H::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let mut out = ElfNeeds::default();
    let sections = header.sections(endian, data).ok()?;
    let Some((dynamic, strings)) = sections.dynamic(endian, data).ok().flatten() else {
        // Statically linked, or its section headers are gone: a dynamic
        // segment says it needs libraries we cannot name.
        out.unreadable = header
            .program_headers(endian, data)
            .ok()?
            .iter()
            .any(|p| p.p_type(endian) == elf::PT_DYNAMIC);
        return Some(out);
    };
    let strings = sections.strings(endian, data, strings).ok()?;
    for d in dynamic {
        let (Some(tag), Some(val)) = (d.tag32(endian), d.val32(endian)) else {
            continue;
        };
        let text = || {
            strings
                .get(val)
                .ok()
                .map(|s| String::from_utf8_lossy(s).into_owned())
        };
        match tag {
            elf::DT_NEEDED => out.needed.extend(text()),
            elf::DT_RUNPATH | elf::DT_RPATH => {
                out.run_paths
                    .extend(text().iter().flat_map(|p| p.split(':')).map(String::from));
            }
            _ => {}
        }
    }
    Some(out)
}

/// A library an ELF file of a layer needs from outside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignNeed {
    /// The file, relative to the layer's root.
    pub file: PathBuf,
    /// The soname it needs, or `None` when its dynamic section could not be
    /// read.
    pub library: Option<String>,
}

impl std::fmt::Display for ForeignNeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.library {
            Some(lib) => write!(f, "{} needs {lib}", self.file.display()),
            None => write!(
                f,
                "{} has an unreadable dynamic section",
                self.file.display()
            ),
        }
    }
}

/// The first ELF file among `files` (relative to `root`; links and
/// directories skipped, never followed) that needs a shared library the
/// system may not have and the layer does not hold:
///
/// - not a [system library](is_system_library);
/// - not the name of a file among `files` (auditwheel's `foo.libs/`,
///   a package's own `lib/`);
/// - not reached through a run path of the file that starts at `$ORIGIN`
///   and leads to a directory below `root` holding none of `files`: that
///   is another package's directory of the same environment, with a layer
///   of its own (torch's `$ORIGIN/../../nvidia/cublas/lib`).
///
/// `None` when every ELF file's needs are met so.
pub fn foreign_needs(root: &Dir, files: &[PathBuf]) -> Result<Option<ForeignNeed>, BeneathError> {
    let names: BTreeSet<&std::ffi::OsStr> = files.iter().filter_map(|f| f.file_name()).collect();
    for rel in files {
        match root.stat(rel)? {
            Some(n) if n.kind == Kind::File && n.size >= 64 => {}
            _ => continue,
        }
        let Some(needs) = elf_needs(root.open_file(rel)?) else {
            continue;
        };
        if needs.unreadable {
            return Ok(Some(ForeignNeed {
                file: rel.clone(),
                library: None,
            }));
        }
        let from_another_layer = needs
            .run_paths
            .iter()
            .filter_map(|p| origin_dir(rel, p))
            .any(|dir| !files.iter().any(|f| f.starts_with(&dir)));
        if from_another_layer {
            continue;
        }
        if let Some(lib) = needs.needed.into_iter().find(|lib| {
            !is_system_library(lib) && !names.contains(std::ffi::OsStr::new(lib.as_str()))
        }) {
            return Ok(Some(ForeignNeed {
                file: rel.clone(),
                library: Some(lib),
            }));
        }
    }
    Ok(None)
}

/// The directory (relative to the layer's root) that the run path `path`
/// of the file `rel` names, when it is `$ORIGIN` (or `${ORIGIN}`) followed
/// by components that stay below the root.
fn origin_dir(rel: &Path, path: &str) -> Option<PathBuf> {
    let rest = path
        .strip_prefix("$ORIGIN")
        .or_else(|| path.strip_prefix("${ORIGIN}"))?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let mut dir: Vec<&std::ffi::OsStr> =
        rel.parent().map(|p| p.iter().collect()).unwrap_or_default();
    for c in rest.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                dir.pop()?;
            }
            c => dir.push(std::ffi::OsStr::new(c)),
        }
    }
    Some(dir.iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Compiles a shared library from `src` with `args` (`-lpython3.11`).
    fn cc(dir: &Path, name: &str, src: &str, args: &[&str]) -> Option<PathBuf> {
        let c = dir.join(format!("{name}.c"));
        std::fs::write(&c, src).unwrap();
        let out = dir.join(name);
        let ok = Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&out)
            .arg(&c)
            .args(args)
            .status()
            .ok()?
            .success();
        ok.then_some(out)
    }

    #[test]
    fn system_libraries_are_the_manylinux_ones_and_the_loaders() {
        for lib in [
            "libc.so.6",
            "libstdc++.so.6",
            "libGL.so.1",
            "ld-linux-x86-64.so.2",
            "ld-linux-aarch64.so.1",
            "ld-musl-x86_64.so.1",
            "libc.musl-x86_64.so.1",
        ] {
            assert!(is_system_library(lib), "{lib}");
        }
        for lib in [
            "libpython3.11.so.1.0",
            "libpq.so.5",
            "libssl.so.3",
            "libz.so.1",
        ] {
            assert!(!is_system_library(lib), "{lib}");
        }
    }

    #[test]
    fn origin_run_paths_name_directories_below_the_root() {
        let so = Path::new("lib/python3.11/site-packages/torch/lib/libtorch.so");
        let dir = |p: &str| origin_dir(so, p).map(|d| d.display().to_string());
        assert_eq!(
            dir("$ORIGIN").as_deref(),
            Some("lib/python3.11/site-packages/torch/lib")
        );
        assert_eq!(
            dir("$ORIGIN/../../nvidia/cublas/lib").as_deref(),
            Some("lib/python3.11/site-packages/nvidia/cublas/lib")
        );
        assert_eq!(
            dir("${ORIGIN}/../.libs").as_deref(),
            Some("lib/python3.11/site-packages/torch/.libs")
        );
        assert_eq!(dir("$ORIGIN/../../../../../../usr/lib"), None);
        assert_eq!(dir("/usr/lib"), None);
        assert_eq!(dir("$ORIGINAL"), None);
        assert_eq!(origin_dir(Path::new("x.so"), "$ORIGIN/.."), None);
    }

    /// A library linked against libpython (as uwsgi's is) needs it from
    /// the system, even with `$ORIGIN` as its run path; one that needs
    /// only what it calls of a library of the layer (auditwheel's
    /// `foo.libs/`) does not; nor does one whose run path leads into
    /// another package's directory (torch's to `nvidia/`).
    #[test]
    fn finds_a_library_needed_from_outside_the_layer() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::create_dir_all(d.join("pkg/foo.libs")).unwrap();
        std::fs::create_dir_all(d.join("other/lib")).unwrap();
        let Some(plain) = cc(d, "pkg/plain.so", "int f(void) { return 1; }\n", &[]) else {
            eprintln!("no C compiler: skipped");
            return;
        };
        let uses_g = "int g(void);\nint f(void) { return g(); }\n";
        let helper = cc(
            d,
            "pkg/foo.libs/libhelper-1a2b3c.so",
            "int g(void) { return 1; }\n",
            &["-Wl,-soname,libhelper-1a2b3c.so"],
        )
        .unwrap();
        let uses_helper = cc(
            d,
            "pkg/uses_helper.so",
            uses_g,
            &[helper.to_str().unwrap(), "-Wl,-rpath,$ORIGIN/foo.libs"],
        )
        .unwrap();
        let needs = elf_needs(File::open(&uses_helper).unwrap()).unwrap();
        assert_eq!(needs.needed, ["libhelper-1a2b3c.so"]);
        assert_eq!(needs.run_paths, ["$ORIGIN/foo.libs"]);
        let other = cc(
            d,
            "other/lib/libother.so",
            "int g(void) { return 2; }\n",
            &["-Wl,-soname,libother.so"],
        )
        .unwrap();
        let uses_other = cc(
            d,
            "pkg/uses_other.so",
            uses_g,
            &[other.to_str().unwrap(), "-Wl,-rpath,$ORIGIN/../other/lib"],
        )
        .unwrap();
        std::fs::write(d.join("pkg/data.txt"), "x".repeat(100)).unwrap();
        std::os::unix::fs::symlink(&plain, d.join("pkg/link.so")).unwrap();
        let dir = Dir::open(d).unwrap();
        let rel = |p: &Path| p.strip_prefix(d).unwrap().to_path_buf();
        let layer = vec![
            rel(&plain),
            rel(&helper),
            rel(&uses_helper),
            rel(&uses_other),
            PathBuf::from("pkg/data.txt"),
            PathBuf::from("pkg/link.so"),
        ];
        assert_eq!(foreign_needs(&dir, &layer).unwrap(), None);
        // Its own `foo.libs` without the helper: the need is foreign.
        let mut without = layer.clone();
        without.retain(|f| *f != rel(&helper));
        without.push(PathBuf::from("pkg/foo.libs/libkept.so"));
        std::fs::write(d.join("pkg/foo.libs/libkept.so"), "x".repeat(100)).unwrap();
        assert_eq!(
            foreign_needs(&dir, &without).unwrap(),
            Some(ForeignNeed {
                file: rel(&uses_helper),
                library: Some("libhelper-1a2b3c.so".into())
            })
        );
        // `libother.so` with no run path to another package: foreign.
        let bare = cc(d, "pkg/bare.so", uses_g, &[other.to_str().unwrap()]).unwrap();
        let found = foreign_needs(&dir, &[rel(&bare)]).unwrap().unwrap();
        assert_eq!(found.to_string(), "pkg/bare.so needs libother.so");

        // Linked against the host's libpython, when it has one.
        let Some((libdir, libpython)) = host_libpython() else {
            eprintln!("no libpython3.*.so on this host: the libpython case skipped");
            return;
        };
        let ext = cc(
            d,
            "pkg/ext.so",
            "int Py_IsInitialized(void);\nint f(void) { return Py_IsInitialized(); }\n",
            &[
                &format!("-L{}", libdir.display()),
                &format!("-l:{libpython}"),
                "-Wl,-rpath,$ORIGIN",
            ],
        )
        .unwrap();
        let found = foreign_needs(&dir, &[rel(&plain), rel(&ext)])
            .unwrap()
            .unwrap();
        assert_eq!(found.file, rel(&ext));
        assert!(
            found.library.as_deref().unwrap().starts_with("libpython3"),
            "{found}"
        );
    }

    /// A `libpython3.*.so*` of the host: (directory, file name).
    fn host_libpython() -> Option<(PathBuf, String)> {
        for dir in [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
            "/usr/lib/aarch64-linux-gnu",
        ] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("libpython3.") && name.contains(".so.") {
                    return Some((PathBuf::from(dir), name));
                }
            }
        }
        None
    }

    #[test]
    fn a_file_that_is_not_elf_has_no_needs() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x");
        std::fs::write(&p, b"\x7fELF but not really one, just text that starts so").unwrap();
        assert_eq!(elf_needs(File::open(&p).unwrap()), None);
        std::fs::write(&p, b"#!/bin/sh\n").unwrap();
        assert_eq!(elf_needs(File::open(&p).unwrap()), None);
    }
}
