//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while preparing, starting or tearing down a
/// container.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The bundle has no `config.json`.
    #[error("bundle {bundle} has no config.json")]
    MissingConfig {
        bundle: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `config.json` is not valid JSON or not a valid runtime spec.
    #[error("invalid {path}: {message}")]
    InvalidConfig { path: PathBuf, message: String },
    /// A field of the spec has a value the runtime cannot honour.
    #[error("invalid spec field `{field}`: {message}")]
    InvalidSpec { field: String, message: String },
    /// The root filesystem does not exist or is not a directory.
    #[error("root filesystem {path} (field `root.path`) is not a directory")]
    MissingRootfs { path: PathBuf },
    /// A container id is empty or contains characters other than
    /// `[A-Za-z0-9_.+-]`.
    #[error("invalid container id {id:?}: use letters, digits and `_.+-`")]
    InvalidId { id: String },
    /// A container with that id already exists under the state root.
    #[error("container {id} already exists in {root}")]
    AlreadyExists { id: String, root: PathBuf },
    /// No container with that id exists under the state root.
    #[error("container {id} does not exist in {root}")]
    NotFound { id: String, root: PathBuf },
    /// The container is in the wrong state for the operation.
    #[error("container {id} is {status}, {operation} needs it {wanted}")]
    WrongState {
        id: String,
        status: String,
        operation: &'static str,
        wanted: &'static str,
    },
    /// A system call made while preparing the container failed.
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The user-mode network stack of an egress container failed.
    #[error("network stack {stack}: {message}")]
    NetworkStack {
        stack: &'static str,
        message: String,
    },
    /// The container's init failed during setup, before running the program.
    #[error("container setup failed at {step}")]
    Setup {
        step: String,
        #[source]
        source: io::Error,
    },
    /// The program could not be executed inside the container.
    #[error("cannot execute {program:?} in the container")]
    Exec {
        program: String,
        #[source]
        source: io::Error,
    },
    /// A cgroup could not be created or configured.
    #[error("cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A user namespace id range (`--userns-range`, `/etc/subuid`) is unusable.
    #[error("id range {text:?}: {why} (give HOST[:SIZE] with HOST > 0, or a user with a range in /etc/subuid and /etc/subgid)")]
    InvalidIdRange { text: String, why: String },
    /// The seccomp profile could not be compiled.
    #[error("seccomp profile: {0}")]
    Seccomp(String),
    /// Reading or writing runtime state failed.
    #[error("state file {path}")]
    State {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An external runtime (runsc, runc, crun) could not be started or failed.
    #[error("external runtime {runtime}: {message}")]
    External { runtime: String, message: String },
}

impl SandboxError {
    pub(crate) fn sys(what: impl Into<String>, source: impl Into<io::Error>) -> Self {
        SandboxError::Sys {
            what: what.into(),
            source: source.into(),
        }
    }

    pub(crate) fn spec(field: impl Into<String>, message: impl Into<String>) -> Self {
        SandboxError::InvalidSpec {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<nix::Error> for SandboxError {
    fn from(e: nix::Error) -> Self {
        SandboxError::sys("system call", io::Error::from(e))
    }
}
