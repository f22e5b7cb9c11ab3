//! The crate's error type.

use std::path::PathBuf;

use http::StatusCode;
use oci_spec::image::Digest;

/// Everything the registry client can fail with. Messages are lowercase,
/// name the URL, reference or digest involved, and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The text is not an image reference.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The text as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The registry could not be reached (DNS, connection, timeout, body).
    #[error("could not reach the registry for {description} ({method} {url}); check the registry address and that it is running")]
    Transport {
        /// What the request was for.
        description: String,
        /// The HTTP method.
        method: String,
        /// The URL.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },

    /// The registry accepted the request but did not answer in time.
    #[error("the registry did not answer {description} ({method} {url}) within {after:?}; check that it is healthy, or allow it more time")]
    Timeout {
        /// What the request was for.
        description: String,
        /// The HTTP method.
        method: String,
        /// The URL.
        url: String,
        /// How long we waited.
        after: std::time::Duration,
    },

    /// The TLS handshake failed, typically an untrusted certificate.
    #[error("tls connection to {host} failed for {description}; if the registry uses a private certificate authority, add its certificate (extra CA files), or list the host as an insecure (plain http) registry")]
    Tls {
        /// The registry host.
        host: String,
        /// What the request was for.
        description: String,
        /// The transport error carrying the TLS cause.
        #[source]
        source: reqwest::Error,
    },

    /// The registry refused our credentials, or we had none.
    #[error("{description}: {registry} answered 401 unauthorized for {url}; {hint}")]
    Unauthorized {
        /// What the request was for.
        description: String,
        /// The registry host.
        registry: String,
        /// The URL.
        url: String,
        /// What to do.
        hint: String,
    },

    /// The registry answered 403: the credentials lack the permission.
    #[error("{description}: {registry} denied access to {url} (403){message}; check that the account may push to and pull from this repository")]
    Denied {
        /// What the request was for.
        description: String,
        /// The registry host.
        registry: String,
        /// The URL.
        url: String,
        /// The registry's error message, prefixed with ": " when present.
        message: String,
    },

    /// The manifest, blob or repository does not exist.
    #[error("{what} not found: {url} answered 404{message}; check the reference")]
    NotFound {
        /// What was looked up (`manifest docker.io/library/python:3`).
        what: String,
        /// The URL.
        url: String,
        /// The registry's error message, prefixed with ": " when present.
        message: String,
    },

    /// Any other unexpected status.
    #[error("{description}: {method} {url} answered {status}{message}")]
    Status {
        /// What the request was for.
        description: String,
        /// The HTTP method.
        method: String,
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
        /// The registry's error code and message, prefixed with ": ".
        message: String,
    },

    /// The token server refused or failed to issue a token.
    #[error(
        "could not get a registry token from {realm} (status {status}) for scope {scope:?}; {hint}"
    )]
    Token {
        /// The realm URL.
        realm: String,
        /// The status the token server answered.
        status: StatusCode,
        /// The scopes asked for.
        scope: String,
        /// What to do.
        hint: String,
    },

    /// A `WWW-Authenticate` challenge we cannot answer.
    #[error("{registry} sent an authentication challenge ftl cannot answer: {challenge:?}")]
    UnsupportedChallenge {
        /// The registry host.
        registry: String,
        /// The challenge header.
        challenge: String,
    },

    /// A response body was not what the API promises.
    #[error("{what} from {url} is not valid: {reason}")]
    InvalidResponse {
        /// What was parsed.
        what: String,
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },

    /// A manifest or config failed to parse.
    #[error("{what} of {reference} is not valid json of its media type {media_type}")]
    InvalidManifest {
        /// `manifest`, `index`, `config`.
        what: &'static str,
        /// The reference.
        reference: String,
        /// The media type.
        media_type: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },

    /// The manifest's media type is one we do not read.
    #[error("{reference} has a manifest of media type {media_type:?}, which ftl does not support; use an image with an OCI or Docker v2 schema 2 manifest")]
    UnsupportedMediaType {
        /// The reference.
        reference: String,
        /// The media type.
        media_type: String,
    },

    /// An index has no manifest for the wanted platform.
    #[error("{reference} has no image for platform {platform}; it has: {available}")]
    NoMatchingPlatform {
        /// The reference.
        reference: String,
        /// The wanted platform (`linux/amd64`).
        platform: String,
        /// The platforms the index lists.
        available: String,
    },

    /// Content did not hash to the digest that names it.
    #[error("content from {url} has digest {actual}, expected {expected}; the registry or a proxy altered it")]
    DigestMismatch {
        /// The URL.
        url: String,
        /// The expected digest.
        expected: Box<Digest>,
        /// The digest of what arrived.
        actual: Box<Digest>,
    },

    /// Reading a blob source failed.
    #[error("could not read the content of blob {digest}")]
    Source {
        /// The blob.
        digest: Digest,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A blob is missing from the target, could not be mounted, and has no
    /// source to upload from.
    #[error("blob {digest} is missing from {repository} and could not be mounted from {tried:?}, and no local source was given to upload it")]
    BlobUnavailable {
        /// The blob.
        digest: Digest,
        /// The target repository.
        repository: String,
        /// The repositories mount was tried from.
        tried: Vec<String>,
    },

    /// A blob failed to push; no manifest was written.
    #[error("push of {target} failed at blob {digest}; no manifest was written")]
    Push {
        /// The target reference.
        target: String,
        /// The blob that failed.
        digest: Digest,
        /// Why.
        #[source]
        source: Box<Error>,
    },

    /// The manifest to push is not named by the target's digest.
    #[error("the manifest to push has digest {actual} but the target {target} names {expected}")]
    ManifestDigest {
        /// The target.
        target: String,
        /// The digest the target names.
        expected: Box<Digest>,
        /// The manifest's digest.
        actual: Box<Digest>,
    },

    /// A CA certificate file could not be read or parsed.
    #[error("could not load the CA certificate file {}; pass PEM certificates", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The HTTP client could not be built.
    #[error("could not set up the http client")]
    ClientSetup(#[source] reqwest::Error),

    /// The docker config file could not be read.
    #[error("could not read the docker config {}; fix or remove it", path.display())]
    DockerConfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A docker credential helper failed.
    #[error("credential helper docker-credential-{helper} failed for {registry}: {message}; check that the helper is installed and logged in")]
    CredentialHelper {
        /// The helper suffix (`pass`, `gcloud`).
        helper: String,
        /// The registry.
        registry: String,
        /// What went wrong (never the secret).
        message: String,
    },
}

impl Error {
    /// Whether retrying the same request may succeed (408, 429, 5xx,
    /// connection errors).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::Timeout { .. } => true,
            Error::Status { status, .. } => is_transient_status(*status),
            Error::Source { .. } => false,
            Error::Push { source, .. } => source.is_transient(),
            _ => false,
        }
    }
}

pub(crate) fn is_transient_status(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}
