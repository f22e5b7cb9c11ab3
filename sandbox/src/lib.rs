//! ftl's sandbox: an OCI runtime (runtime-spec bundles, types from
//! `oci-spec`) that starts a container in a few milliseconds, a
//! runsc-compatible command line over it, and a driver for external
//! runtimes (runsc, runc, crun) with the same API.
//!
//! ```no_run
//! use ftl_sandbox::{spec_for_step, RunRequest, Sandbox, StepSpec};
//! use std::time::Duration;
//!
//! let spec = spec_for_step(&StepSpec::new("/var/cache/ftl/rootfs", ["echo", "hi"]));
//! let req = RunRequest::from_spec("step-1", "/var/cache/ftl/rootfs", spec)
//!     .with_timeout(Duration::from_secs(60));
//! let outcome = Sandbox::default().run(&req)?;
//! assert_eq!(outcome.stdout, b"hi\n");
//! # Ok::<(), ftl_sandbox::SandboxError>(())
//! ```

mod cgroup;
pub mod cli;
mod error;
mod external;
pub mod idmap;
mod net;
mod runtime;
mod sandbox;
pub mod seccomp;
mod spec;
pub mod state;
mod syscalls;
pub mod volume;

pub use cgroup::Cgroup;

/// An annotation (`"true"`) asking ftl's runtime to remove a detached
/// container (state, cgroup) as soon as it exits, instead of keeping it for
/// `delete`: for long-lived steps nobody waits for. Other runtimes ignore
/// it (the caller deletes a stopped container before reusing its id).
pub const REMOVE_ON_EXIT: &str = "dev.ftl.remove-on-exit";
pub use error::SandboxError;
pub use external::ExternalRuntime;
pub use net::{
    connect_in_netns, parse_allow, stack_available, Stack, BLOCKED_V4, BLOCKED_V6, EGRESS_ALLOW,
    NETWORK, NETWORK_STACK,
};
pub use sandbox::{Outcome, RunRequest, Running, Sandbox, Source, Stdio};
pub use spec::{
    default_mounts, default_namespaces, example_spec, load_bundle, parse_config, spec_for_step,
    step_device_rules, uid_map_of, BindMount, IdRange, Limits, Network, StepSpec,
    DEFAULT_CAPABILITIES, DEFAULT_TMP_BYTES, MASKED_PATHS, READONLY_PATHS, ROOTFS_IDMAP,
    STEP_CAPABILITIES, STEP_DEVICES,
};
