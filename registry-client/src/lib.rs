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
//! How it behaves:
//!
//! - **Transport.** Plain HTTP for `localhost`, `127.0.0.0/8`, `[::1]` and
//!   [`ClientSettings::insecure_registries`]; HTTPS otherwise, trusting the
//!   system roots plus [`ClientSettings::extra_ca_files`].
//! - **Auth.** A request goes out anonymously until the registry answers
//!   401; its challenge (Basic, or Bearer with realm and service) is
//!   remembered per registry, and later requests authenticate up front.
//!   Bearer tokens are cached per (registry, scope) and refreshed before
//!   they expire; a 401 drops the token used and retries once. A mount asks
//!   for `pull,push` on the target and `pull` on the source. Credentials
//!   come from [`ClientSettings::credentials`], then the docker config in
//!   [`ClientSettings::docker_config_dir`] (`auths`, `credHelpers`,
//!   `credsStore`).
//! - **Retries.** 408, 429 (honouring `Retry-After`), 5xx and connection
//!   errors are retried with capped exponential backoff and jitter. A blob
//!   upload is retried from a fresh session by reopening its
//!   [`BlobSource`], only when the source says it can be reopened.
//! - **Push.** [`Client::push`] HEADs each blob in the target, mounts it
//!   from the listed repositories, else uploads it (POST, then one streamed
//!   PUT, or PATCH chunks above a threshold; never a monolithic POST), each
//!   digest once, at most [`ClientSettings::max_concurrency`] at a time. The
//!   manifest is PUT last, and only when every blob is in place.
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
