//! Real parts for ftl's tests: a Debian `docker-registry` on a free loopback
//! port (plain, htpasswd, TLS, token auth), a fault-injecting proxy, and base
//! images built from Debian packages.

pub mod base_images;
pub mod proxy;
pub mod registry;
pub mod rig;
pub mod token;
