//! Authentication and transport security against a real registry: htpasswd
//! basic auth, TLS with a private CA, and bearer tokens from a token server.

mod common;

use std::sync::Arc;

use common::*;
use ftl_registry_client::{BlobAction, Client, ClientSettings, Credential, Error, NoProgress};
use ftl_test_support::registry::{Registry, RegistryOptions, TLS_NAME};

fn start(options: RegistryOptions) -> Registry {
    Registry::start(options).unwrap_or_else(|e| panic!("{e:#}"))
}

#[tokio::test]
async fn basic_auth_pushes_and_a_wrong_password_is_a_clear_error() {
    let registry = start(RegistryOptions::htpasswd());
    let img = image("basic", false);
    let target = reference(&registry, "app/basic:1");
    let client = client_for(&registry);
    let report = client
        .push(img.request(&target, &[], true), Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!(report.manifest_digest, img.manifest_digest());
    assert!(client.head_manifest(&target).await.unwrap().is_some());

    let (user, _) = registry.credentials().unwrap();
    let mut settings = settings_for(&registry);
    settings
        .credentials
        .insert(registry.host(), Credential::basic(user, "wrong-password"));
    let wrong = Client::new(settings).unwrap();
    let err = wrong.get_manifest(&target).await.unwrap_err();
    let text = chain(&err);
    assert!(matches!(err, Error::Unauthorized { .. }), "{text}");
    assert!(
        text.contains(&registry.host()) && text.contains("were rejected"),
        "{text}"
    );
    assert!(
        !text.contains("wrong-password"),
        "the password leaks: {text}"
    );
    assert!(
        !format!("{wrong:?}").contains("wrong-password"),
        "the password leaks into Debug"
    );

    let anonymous = Client::new(ClientSettings::default()).unwrap();
    let err = anonymous
        .push(
            image("anon", false).request(&target, &[], true),
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
    let text = chain(&err);
    assert!(
        text.contains("no credentials were found") && text.contains("docker login"),
        "{text}"
    );
}

#[tokio::test]
async fn credentials_come_from_the_docker_config_dir() {
    use base64::Engine as _;
    let registry = start(RegistryOptions::htpasswd());
    let (user, pass) = registry.credentials().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    std::fs::write(
        dir.path().join("config.json"),
        format!(
            r#"{{"auths":{{"http://{}":{{"auth":"{auth}"}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let client = Client::new(ClientSettings {
        docker_config_dir: Some(dir.path().to_owned()),
        ..ClientSettings::default()
    })
    .unwrap();
    let img = image("config-dir", false);
    let target = reference(&registry, "app/cfg:1");
    client
        .push(img.request(&target, &[], true), Arc::new(NoProgress))
        .await
        .unwrap();
}

#[tokio::test]
async fn tls_with_the_ca_works_and_without_it_is_a_clear_error() {
    let registry = start(RegistryOptions::tls());
    let resolve =
        std::collections::HashMap::from([(TLS_NAME.to_owned(), registry.socket_addr().ip())]);
    let img = image("tls", false);
    let target = reference(&registry, "app/tls:1");
    assert!(target.registry().starts_with(TLS_NAME));
    let client = Client::new(ClientSettings {
        extra_ca_files: vec![registry.ca_pem().unwrap().to_owned()],
        resolve: resolve.clone(),
        ..ClientSettings::default()
    })
    .unwrap();
    let report = client
        .push(img.request(&target, &[], true), Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!(report.manifest_digest, img.manifest_digest());
    let m = client.get_manifest(&target).await.unwrap();
    assert_eq!(m.bytes, img.manifest);

    let untrusting = Client::new(ClientSettings {
        resolve,
        retry: ftl_registry_client::RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        },
        ..ClientSettings::default()
    })
    .unwrap();
    let err = untrusting.get_manifest(&target).await.unwrap_err();
    let text = chain(&err);
    assert!(matches!(err, Error::Tls { .. }), "{text}");
    assert!(
        text.contains(&registry.host()) && text.contains("certificate authority"),
        "{text}"
    );

    let err = Client::new(ClientSettings {
        extra_ca_files: vec!["/nonexistent/ca.pem".into()],
        ..ClientSettings::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

#[tokio::test]
async fn token_auth_pushes_mounts_with_source_pull_scope_and_caches_tokens() {
    let registry = start(RegistryOptions::token());
    let tokens = registry.token_server().unwrap();
    let client = client_for(&registry);
    let img = image("token", false);
    let base = reference(&registry, "base/tok:1");
    client
        .push(img.request(&base, &[], true), Arc::new(NoProgress))
        .await
        .unwrap();
    // One token for repository:base/tok:pull,push, fetched once even though
    // three blobs went up in parallel.
    assert_eq!(tokens.requests(), 1, "{:?}", tokens.scopes_requested());

    let target = reference(&registry, "app/tok:1");
    let report = client
        .push(
            img.request(&target, &["base/tok"], false),
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
    assert!(
        report.blobs.iter().all(|b| b.action
            == BlobAction::Mounted {
                from: "base/tok".into()
            }),
        "{:?}",
        report.blobs
    );
    let scopes = tokens.scopes_requested();
    assert!(
        scopes.contains(&"repository:app/tok:pull,push".to_owned()),
        "{scopes:?}"
    );
    assert!(
        scopes.contains(&"repository:base/tok:pull".to_owned()),
        "{scopes:?}"
    );
    // HEAD token + mount token, each once.
    assert_eq!(tokens.requests(), 3, "{scopes:?}");

    // Wrong password: the token server refuses, with a clear message.
    let mut settings = settings_for(&registry);
    settings
        .credentials
        .insert(registry.host(), Credential::basic("ftl-tester", "nope"));
    let err = Client::new(settings)
        .unwrap()
        .get_manifest(&target)
        .await
        .unwrap_err();
    let text = chain(&err);
    assert!(matches!(err, Error::Token { .. }), "{text}");
    assert!(
        text.contains("401") && text.contains("check the credentials"),
        "{text}"
    );
    assert!(!text.contains("nope"), "{text}");

    // Anonymous: the token grants nothing; the registry says 401.
    let err = Client::new(ClientSettings::default())
        .unwrap()
        .get_manifest(&target)
        .await
        .unwrap_err();
    let text = chain(&err);
    assert!(matches!(err, Error::Unauthorized { .. }), "{text}");
    assert!(text.contains("no credentials were found"), "{text}");
}

#[tokio::test]
async fn tokens_are_refreshed_before_they_expire() {
    let registry = start(RegistryOptions {
        token_ttl_secs: Some(1),
        ..RegistryOptions::token()
    });
    let tokens = registry.token_server().unwrap();
    let client = client_for(&registry);
    let target = reference(&registry, "app/expire:1");
    client
        .push(
            image("exp1", false).request(&target, &[], true),
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
    let first = tokens.requests();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    client
        .push(
            image("exp2", false).request(&target, &[], true),
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
    assert_eq!(
        tokens.requests(),
        first + 1,
        "a stale token is replaced once"
    );
}

#[tokio::test]
async fn a_401_in_the_middle_of_a_push_re_authenticates() {
    use ftl_test_support::proxy::{FaultProxy, Rule};
    let registry = start(RegistryOptions::token());
    let tokens = registry.token_server().unwrap();
    let proxy = FaultProxy::start(&format!("http://{}", registry.host())).unwrap();
    let mut settings = settings_for(&registry);
    let cred = settings.credentials.remove(&registry.host()).unwrap();
    settings.credentials.insert(proxy.host(), cred);
    let client = Client::new(settings).unwrap();
    // The first streamed blob PUT is refused as if its token had expired.
    let rule = proxy.add_rule(
        Rule::status(401)
            .method("PUT")
            .path_contains("/blobs/uploads/")
            .nth(1),
    );
    let img = image("reauth", false);
    let target =
        ftl_registry_client::Reference::parse(&format!("{}/app/reauth:1", proxy.host())).unwrap();
    let report = client
        .push(img.request(&target, &[], true), Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!(proxy.fired(rule), 1);
    assert_eq!(report.bytes_uploaded, img.total_blob_bytes());
    let push_tokens = tokens
        .scopes_requested()
        .iter()
        .filter(|s| *s == "repository:app/reauth:pull,push")
        .count();
    assert_eq!(
        push_tokens,
        2,
        "the refused token was replaced once: {:?}",
        tokens.scopes_requested()
    );
    assert_eq!(registry.tags("app/reauth"), vec!["1"]);
}

#[tokio::test]
async fn identity_tokens_are_exchanged_at_the_realm() {
    let registry = start(RegistryOptions::token());
    let (_, pass) = registry.credentials().unwrap();
    let mut settings = settings_for(&registry);
    settings
        .credentials
        .insert(registry.host(), Credential::IdentityToken(pass.into()));
    let client = Client::new(settings).unwrap();
    let img = image("identity", false);
    let target = reference(&registry, "app/ident:1");
    client
        .push(img.request(&target, &[], true), Arc::new(NoProgress))
        .await
        .unwrap();
    assert!(client.head_manifest(&target).await.unwrap().is_some());
}

#[tokio::test]
async fn an_unreachable_registry_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = Client::new(ClientSettings {
        retry: ftl_registry_client::RetryPolicy {
            max_attempts: 2,
            initial_backoff: std::time::Duration::from_millis(10),
            max_backoff: std::time::Duration::from_millis(10),
        },
        ..ClientSettings::default()
    })
    .unwrap();
    let target =
        ftl_registry_client::Reference::parse(&format!("127.0.0.1:{port}/app/x:1")).unwrap();
    let err = client.get_manifest(&target).await.unwrap_err();
    let text = chain(&err);
    assert!(matches!(err, Error::Transport { .. }), "{text}");
    assert!(
        text.contains(&format!("http://127.0.0.1:{port}/v2/app/x/manifests/1")),
        "{text}"
    );
    assert!(text.contains("check the registry address"), "{text}");
    assert_eq!(client.request_count(), 2, "connection errors are retried");
}
