//! The registry rig itself: every variant starts and answers, the process
//! is gone after drop, and missing tools name their Debian package.

use std::io::{Read, Write};
use std::net::TcpStream;

use ftl_test_support::registry::{require_binary, Registry, RegistryOptions};

fn get_v2(registry: &Registry) -> String {
    let mut conn = TcpStream::connect(registry.socket_addr()).unwrap();
    conn.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn variants_start_answer_and_die_on_drop() {
    let plain = Registry::start(RegistryOptions::plain()).unwrap();
    assert!(
        get_v2(&plain).starts_with("HTTP/1.0 200"),
        "{}",
        get_v2(&plain)
    );
    assert_eq!(plain.url(), format!("http://{}", plain.host()));
    assert!(plain.credentials().is_none());

    let basic = Registry::start(RegistryOptions::htpasswd()).unwrap();
    let answer = get_v2(&basic);
    assert!(answer.starts_with("HTTP/1.0 401"), "{answer}");
    assert!(answer.contains("Basic realm"), "{answer}");

    let token = Registry::start(RegistryOptions::token()).unwrap();
    let answer = get_v2(&token);
    let realm = token.token_server().unwrap().realm();
    assert!(
        answer.contains(&format!("Bearer realm=\"{realm}\"")),
        "{answer}"
    );

    let tls = Registry::start(RegistryOptions::tls()).unwrap();
    assert!(tls.url().starts_with("https://ftl-registry.test:"));
    let ca = std::fs::read_to_string(tls.ca_pem().unwrap()).unwrap();
    assert!(ca.contains("BEGIN CERTIFICATE"));

    let pids: Vec<u32> = [&plain, &basic, &token, &tls]
        .iter()
        .map(|r| r.pid())
        .collect();
    drop((plain, basic, token, tls));
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "registry {pid} outlived its handle"
        );
    }
}

#[test]
fn a_missing_tool_names_its_package() {
    let err = require_binary("ftl-surely-missing-tool", "ftl-missing-package").unwrap_err();
    assert!(
        err.to_string()
            .contains("apt-get install -y ftl-missing-package"),
        "{err}"
    );
}
