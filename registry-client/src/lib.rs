//! A client for the OCI Distribution / Docker Registry HTTP API V2: image
//! references, authentication (anonymous, basic, bearer tokens, the docker
//! config and credential helpers), manifests, blobs, cross-repository
//! mounts, uploads, and a push engine that writes the manifest last.
//!
//! Every registry call is a value (method, URL, accepted types, body, token
//! scopes, description); one function sends them all and owns
//! authentication, retries and error mapping. The library never prints; it
//! emits `tracing` events. Credentials never reach logs, errors or `Debug`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use ftl_registry_client::{Client, ClientSettings, Reference, default_platform};
//!
//! # async fn run() -> Result<(), ftl_registry_client::Error> {
//! let client = Client::new(ClientSettings::default())?;
//! let base = Reference::parse("python:3.12-slim")?;
//! let image = client.resolve(&base, &default_platform()).await?;
//! println!("{} has {} layers", image.reference, image.manifest.layers().len());
//! # Ok(()) }
//! ```

mod auth;
mod blob;
mod client;
mod error;
mod manifest;
mod push;
mod reference;
mod secret;
mod settings;

pub use blob::{BlobSource, BlobStream, BytesSource, FileSource, NoProgress, PushProgress};
pub use client::Client;
pub use error::Error;
pub use manifest::{
    default_platform, platform_string, select_platform, sha256_digest, Manifest, ManifestHead,
    ParsedManifest, ResolvedImage, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2, OCI_INDEX,
    OCI_MANIFEST,
};
pub use oci_spec::image::{
    Descriptor, Digest, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Platform,
};
pub use push::{BlobAction, BlobReport, PushBlob, PushReport, PushRequest};
pub use reference::{Reference, DOCKER_HUB, DOCKER_HUB_API};
pub use secret::{Credential, Secret};
pub use settings::{ClientSettings, RetryPolicy};
