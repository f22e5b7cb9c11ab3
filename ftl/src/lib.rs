//! ftl: source to OCI image, straight to the registry.
//!
//! The image model (digests, lazy layers, the reproducible layer writer,
//! config composition, OCI layout and docker-archive output), the language
//! plugin interface, and the build engine.

pub mod app;
pub mod beneath;
pub mod detect;
pub mod engine;
pub mod export;
pub mod gzip;
pub mod image;
pub mod key;
pub mod layer;
pub mod native;
pub mod plugin;
pub mod rootfs;
pub mod source;

pub use key::{canonical_json, sha256_tagged, short_digest, CacheKey};

/// An error and its sources as one line (`outer: inner: …`), each message
/// once even when an outer one already quotes an inner one.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}
pub use beneath::{Beneath, BeneathError};
pub use detect::Detects;
pub use plugin::*;
pub use source::{Exclusion, SourceError, SourceTree};
