//! ftl: source to OCI image, straight to the registry.
//!
//! The image model (digests, lazy layers, the reproducible layer writer,
//! config composition, OCI layout and docker-archive output), the language
//! plugin interface, and the build engine.

pub mod app;
pub mod engine;
pub mod export;
pub mod gzip;
pub mod image;
pub mod key;
pub mod layer;
pub mod plugin;
pub mod rootfs;
pub mod source;

pub use key::{canonical_json, sha256_tagged, CacheKey};
pub use plugin::*;
pub use source::{SourceError, SourceTree};
