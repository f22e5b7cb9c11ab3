//! Manifests, configs, platform selection and tag listing.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, StatusCode};
use oci_spec::image::{
    Arch, Digest, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os, Platform,
    PlatformBuilder,
};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::client::{Access, Call, Client, Stats};
use crate::error::Error;
use crate::reference::Reference;

/// Docker's v2 schema 2 manifest media type.
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

const MANIFEST_ACCEPT: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST_V2,
    DOCKER_MANIFEST_LIST,
];
const OK: &[StatusCode] = &[StatusCode::OK];
const OK_OR_404: &[StatusCode] = &[StatusCode::OK, StatusCode::NOT_FOUND];
const CREATED: &[StatusCode] = &[StatusCode::CREATED, StatusCode::OK, StatusCode::ACCEPTED];
const DELETED: &[StatusCode] = &[StatusCode::ACCEPTED, StatusCode::OK, StatusCode::NO_CONTENT];

/// The sha256 digest of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> Digest {
    let hex = hex::encode(Sha256::digest(bytes));
    format!("sha256:{hex}")
        .parse()
        .expect("sha256 hex is a valid digest")
}

/// `linux/amd64`, the platform picked from an index by default.
pub fn default_platform() -> Platform {
    PlatformBuilder::default()
        .os(Os::Linux)
        .architecture(Arch::Amd64)
        .build()
        .expect("os and architecture are set")
}

/// `os/arch[/variant]`.
pub fn platform_string(p: &Platform) -> String {
    match p.variant() {
        Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
        None => format!("{}/{}", p.os(), p.architecture()),
    }
}

/// A manifest as fetched: raw bytes (what the digest is over), media type,
/// digest and the parsed form.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The exact bytes the registry served.
    pub bytes: Bytes,
    /// The media type (from the body, else the `Content-Type`).
    pub media_type: MediaType,
    /// The sha256 of `bytes`.
    pub digest: Digest,
    /// The parsed manifest.
    pub parsed: ParsedManifest,
}

/// An image manifest or an index / manifest list. (One value per fetch, so
/// the size difference of the variants does not matter.)
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum ParsedManifest {
    /// An OCI image manifest or Docker v2 schema 2 manifest.
    Image(ImageManifest),
    /// An OCI index or Docker manifest list.
    Index(ImageIndex),
}

/// What a manifest HEAD tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestHead {
    /// `Docker-Content-Digest`.
    pub digest: Digest,
    /// `Content-Type`.
    pub media_type: Option<MediaType>,
    /// `Content-Length`.
    pub size: Option<u64>,
}

/// An image resolved for one platform: manifest and config, nothing else.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The reference, pinned to the image manifest's digest.
    pub reference: Reference,
    /// The digest of the index the manifest was picked from, if any.
    pub index_digest: Option<Digest>,
    /// The parsed image manifest.
    pub manifest: ImageManifest,
    /// Its raw bytes.
    pub manifest_bytes: Bytes,
    /// Its media type.
    pub manifest_media_type: MediaType,
    /// Its digest.
    pub manifest_digest: Digest,
    /// The parsed config.
    pub config: ImageConfiguration,
    /// The config's raw bytes.
    pub config_bytes: Bytes,
    /// The config's digest.
    pub config_digest: Digest,
}

#[derive(Deserialize)]
struct MediaTypeOnly {
    #[serde(default, rename = "mediaType")]
    media_type: Option<String>,
    #[serde(default, rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct TagList {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

impl Client {
    /// GETs a manifest by tag or digest (OCI and Docker v2 media types). A
    /// digest reference is verified against the bytes.
    pub async fn get_manifest(&self, reference: &Reference) -> Result<Manifest, Error> {
        self.get_manifest_with(reference, &Stats::default()).await
    }

    pub(crate) async fn get_manifest_with(
        &self,
        reference: &Reference,
        stats: &Stats,
    ) -> Result<Manifest, Error> {
        let url = self.repo_url(
            reference,
            &format!("manifests/{}", reference.manifest_reference()),
        );
        let call = Call::new(
            Method::GET,
            url.clone(),
            reference,
            OK,
            format!("manifest {reference}"),
        )
        .scope(reference.repository(), Access::Pull)
        .accept(MANIFEST_ACCEPT);
        let resp = self.send(&call, stats).await?;
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_owned());
        let bytes = resp.bytes().await.map_err(|e| Error::Transport {
            description: call.description.clone(),
            method: "GET".into(),
            url: url.to_string(),
            source: e,
        })?;
        let digest = sha256_digest(&bytes);
        if let Some(expected) = reference.digest() {
            if *expected != digest {
                return Err(Error::DigestMismatch {
                    url: url.to_string(),
                    expected: Box::new(expected.clone()),
                    actual: Box::new(digest),
                });
            }
        }
        parse_manifest(reference, bytes, content_type, digest)
    }

    /// HEADs a manifest: `None` when it does not exist.
    pub async fn head_manifest(
        &self,
        reference: &Reference,
    ) -> Result<Option<ManifestHead>, Error> {
        let url = self.repo_url(
            reference,
            &format!("manifests/{}", reference.manifest_reference()),
        );
        let call = Call::new(
            Method::HEAD,
            url.clone(),
            reference,
            OK_OR_404,
            format!("manifest {reference}"),
        )
        .scope(reference.repository(), Access::Pull)
        .accept(MANIFEST_ACCEPT);
        let resp = self.send(&call, &Stats::default()).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let headers = resp.headers();
        let digest = headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok())
            .or_else(|| reference.digest().cloned());
        let Some(digest) = digest else {
            // Some registries omit the header on HEAD: fall back to a GET.
            let m = self.get_manifest(reference).await?;
            return Ok(Some(ManifestHead {
                digest: m.digest,
                media_type: Some(m.media_type),
                size: Some(m.bytes.len() as u64),
            }));
        };
        Ok(Some(ManifestHead {
            digest,
            media_type: headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(MediaType::from),
            size: headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse().ok()),
        }))
    }

    /// PUTs a manifest under the reference's tag (or digest, when it has no
    /// tag). Returns the manifest's digest.
    pub async fn put_manifest(
        &self,
        reference: &Reference,
        bytes: Bytes,
        media_type: &MediaType,
    ) -> Result<Digest, Error> {
        self.put_manifest_with(reference, bytes, media_type, &Stats::default())
            .await
    }

    pub(crate) async fn put_manifest_with(
        &self,
        reference: &Reference,
        bytes: Bytes,
        media_type: &MediaType,
        stats: &Stats,
    ) -> Result<Digest, Error> {
        let digest = sha256_digest(&bytes);
        let target = match reference.tag() {
            Some(tag) => tag.to_owned(),
            None => digest.to_string(),
        };
        let url = self.repo_url(reference, &format!("manifests/{target}"));
        let call = Call::new(
            Method::PUT,
            url,
            reference,
            CREATED,
            format!("push manifest {reference}"),
        )
        .scope(reference.repository(), Access::PullPush)
        .header(CONTENT_TYPE, media_type.as_ref())
        .body(bytes);
        self.send(&call, stats).await?;
        tracing::info!(%reference, %digest, "manifest pushed");
        Ok(digest)
    }

    /// Deletes a manifest by digest (the registry must allow deletes).
    /// Tags pointing at it go with it.
    pub async fn delete_manifest(
        &self,
        repository: &Reference,
        digest: &Digest,
    ) -> Result<(), Error> {
        let url = self.repo_url(repository, &format!("manifests/{digest}"));
        let call = Call::new(
            Method::DELETE,
            url,
            repository,
            DELETED,
            format!(
                "delete of manifest {digest} in {}/{}",
                repository.registry(),
                repository.repository()
            ),
        )
        .scope(repository.repository(), Access::Delete);
        self.send(&call, &Stats::default()).await?;
        Ok(())
    }

    /// Resolves a reference to one platform's image manifest and config.
    /// Downloads the manifest (and index) and the config blob, nothing else.
    pub async fn resolve(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedImage, Error> {
        self.resolve_with(reference, platform, &|_| None).await
    }

    /// As [`Client::resolve`], taking the config blob from `known` when it
    /// has it (a content-addressed cache; bytes that do not hash to the
    /// digest are ignored): an unchanged image then costs its manifest
    /// request alone.
    pub async fn resolve_with(
        &self,
        reference: &Reference,
        platform: &Platform,
        known: &(dyn Fn(&Digest) -> Option<Bytes> + Send + Sync),
    ) -> Result<ResolvedImage, Error> {
        let stats = Stats::default();
        let first = self.get_manifest_with(reference, &stats).await?;
        let (manifest, index_digest, pinned) = match first.parsed {
            ParsedManifest::Image(_) => {
                let pinned = reference.with_digest(first.digest.clone());
                (first, None, pinned)
            }
            ParsedManifest::Index(ref index) => {
                let chosen = select_platform(reference, index, platform)?;
                let pinned = reference.with_digest(chosen);
                let m = self.get_manifest_with(&pinned, &stats).await?;
                (m, Some(first.digest.clone()), pinned)
            }
        };
        let ParsedManifest::Image(image) = manifest.parsed else {
            return Err(Error::UnsupportedMediaType {
                reference: pinned.to_string(),
                media_type: format!("{} (an index inside an index)", manifest.media_type),
            });
        };
        let config_digest = image.config().digest().clone();
        let config_bytes = match known(&config_digest).filter(|b| sha256_digest(b) == config_digest)
        {
            Some(b) => b,
            None => {
                self.get_blob_bytes_with(&pinned, &config_digest, 64 * 1024 * 1024, &stats)
                    .await?
            }
        };
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|e| Error::InvalidManifest {
                what: "config",
                reference: pinned.to_string(),
                media_type: image.config().media_type().to_string(),
                source: e,
            })?;
        Ok(ResolvedImage {
            reference: pinned,
            index_digest,
            manifest: image,
            manifest_bytes: manifest.bytes,
            manifest_media_type: manifest.media_type,
            manifest_digest: manifest.digest,
            config,
            config_bytes,
            config_digest,
        })
    }

    /// Lists a repository's tags (following `Link` pagination). A repository
    /// that does not exist has no tags.
    pub async fn list_tags(&self, repository: &Reference) -> Result<Vec<String>, Error> {
        let stats = Stats::default();
        let mut url = self.repo_url(repository, "tags/list");
        let mut tags = Vec::new();
        for _ in 0..1000 {
            let call = Call::new(
                Method::GET,
                url.clone(),
                repository,
                OK_OR_404,
                format!(
                    "tags of {}/{}",
                    repository.registry(),
                    repository.repository()
                ),
            )
            .scope(repository.repository(), Access::Pull);
            let resp = self.send(&call, &stats).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(tags);
            }
            let next = resp
                .headers()
                .get(http::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_next_link)
                .and_then(|l| url.join(&l).ok());
            let body = resp.bytes().await.map_err(|e| Error::Transport {
                description: call.description.clone(),
                method: "GET".into(),
                url: url.to_string(),
                source: e,
            })?;
            let list: TagList =
                serde_json::from_slice(&body).map_err(|e| Error::InvalidResponse {
                    what: "tag list".into(),
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
            tags.extend(list.tags.unwrap_or_default());
            match next {
                Some(n) => url = n,
                None => break,
            }
        }
        Ok(tags)
    }
}

fn parse_next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let part = part.trim();
        if !part.contains("rel=\"next\"") && !part.contains("rel=next") {
            return None;
        }
        let start = part.find('<')? + 1;
        let end = part.find('>')?;
        Some(part[start..end].to_owned())
    })
}

fn parse_manifest(
    reference: &Reference,
    bytes: Bytes,
    content_type: Option<String>,
    digest: Digest,
) -> Result<Manifest, Error> {
    let head: MediaTypeOnly =
        serde_json::from_slice(&bytes).map_err(|e| Error::InvalidManifest {
            what: "manifest",
            reference: reference.to_string(),
            media_type: content_type.clone().unwrap_or_default(),
            source: e,
        })?;
    if head.schema_version == Some(1) {
        return Err(Error::UnsupportedMediaType {
            reference: reference.to_string(),
            media_type: "application/vnd.docker.distribution.manifest.v1+json (schema 1)".into(),
        });
    }
    let media_type = head.media_type.or(content_type).unwrap_or_else(|| {
        if head.manifests.is_some() {
            OCI_INDEX.into()
        } else {
            OCI_MANIFEST.into()
        }
    });
    let invalid = |what, e| Error::InvalidManifest {
        what,
        reference: reference.to_string(),
        media_type: media_type.clone(),
        source: e,
    };
    let parsed = match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST_V2 => ParsedManifest::Image(
            serde_json::from_slice(&bytes).map_err(|e| invalid("manifest", e))?,
        ),
        OCI_INDEX | DOCKER_MANIFEST_LIST => {
            ParsedManifest::Index(serde_json::from_slice(&bytes).map_err(|e| invalid("index", e))?)
        }
        other => {
            return Err(Error::UnsupportedMediaType {
                reference: reference.to_string(),
                media_type: other.to_owned(),
            })
        }
    };
    Ok(Manifest {
        bytes,
        media_type: MediaType::from(media_type.as_str()),
        digest,
        parsed,
    })
}

/// Picks the manifest for `want` from an index: os and architecture must
/// match, and the variant when `want` names one.
pub fn select_platform(
    reference: &Reference,
    index: &ImageIndex,
    want: &Platform,
) -> Result<Digest, Error> {
    let found = index.manifests().iter().find(|d| {
        d.platform().as_ref().is_some_and(|p| {
            p.os() == want.os()
                && p.architecture() == want.architecture()
                && (want.variant().is_none() || normal_variant(p) == normal_variant(want))
        })
    });
    match found {
        Some(d) => Ok(d.digest().clone()),
        None => Err(Error::NoMatchingPlatform {
            reference: reference.to_string(),
            platform: platform_string(want),
            available: index
                .manifests()
                .iter()
                .filter_map(|d| d.platform().as_ref().map(platform_string))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The variant, with arm64's implied `v8` made explicit (as docker does).
fn normal_variant(p: &Platform) -> Option<&str> {
    match (p.architecture(), p.variant().as_deref()) {
        (Arch::ARM64, None) => Some("v8"),
        (_, v) => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_platform_from_docker_list() {
        let list = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[
          {"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":1,"digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","platform":{"architecture":"arm64","os":"linux"}},
          {"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":1,"digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","platform":{"architecture":"amd64","os":"linux"}},
          {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333","platform":{"architecture":"unknown","os":"unknown"}}]}"#;
        let r = Reference::parse("python:3").unwrap();
        let digest = sha256_digest(list.as_bytes());
        let m = parse_manifest(&r, Bytes::from(list), None, digest).unwrap();
        let ParsedManifest::Index(index) = m.parsed else {
            panic!("not an index")
        };
        assert_eq!(m.media_type.to_string(), DOCKER_MANIFEST_LIST);
        assert!(select_platform(&r, &index, &default_platform())
            .unwrap()
            .to_string()
            .starts_with("sha256:2222"));
        let arm = PlatformBuilder::default()
            .os(Os::Linux)
            .architecture(Arch::ARM64)
            .build()
            .unwrap();
        assert!(select_platform(&r, &index, &arm)
            .unwrap()
            .to_string()
            .starts_with("sha256:1111"));
        let arm_v8 = PlatformBuilder::default()
            .os(Os::Linux)
            .architecture(Arch::ARM64)
            .variant("v8")
            .build()
            .unwrap();
        assert!(select_platform(&r, &index, &arm_v8)
            .unwrap()
            .to_string()
            .starts_with("sha256:1111"));
        let s390 = PlatformBuilder::default()
            .os(Os::Linux)
            .architecture(Arch::s390x)
            .build()
            .unwrap();
        let err = select_platform(&r, &index, &s390).unwrap_err().to_string();
        assert!(
            err.contains("linux/s390x") && err.contains("linux/arm64, linux/amd64"),
            "{err}"
        );
    }

    #[test]
    fn rejects_schema1() {
        let r = Reference::parse("old:1").unwrap();
        let body = br#"{"schemaVersion":1,"name":"old","tag":"1","fsLayers":[]}"#;
        let err =
            parse_manifest(&r, Bytes::from_static(body), None, sha256_digest(body)).unwrap_err();
        assert!(err.to_string().contains("schema 1"), "{err}");
    }

    #[test]
    fn next_link() {
        assert_eq!(
            parse_next_link(r#"</v2/a/tags/list?last=x&n=2>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=x&n=2")
        );
    }
}
