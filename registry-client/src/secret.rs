//! A string that never shows itself in `Debug`, `Display`, logs or errors.

use std::fmt;

/// A credential (password, token). `Debug` and `Display` print `****`; the
/// value is reachable only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The wrapped value. Call only where the value is sent on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// Credentials for one registry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Credential {
    /// No credentials: anonymous access.
    #[default]
    Anonymous,
    /// A user name and password (or personal access token).
    Basic {
        /// The user name; not secret.
        username: String,
        /// The password; redacted everywhere.
        password: Secret,
    },
    /// An OAuth2 refresh token (docker's `identitytoken`), exchanged at the
    /// token realm for access tokens.
    IdentityToken(Secret),
}

impl Credential {
    /// Basic credentials.
    pub fn basic(username: impl Into<String>, password: impl Into<Secret>) -> Self {
        Self::Basic {
            username: username.into(),
            password: password.into(),
        }
    }

    pub(crate) fn is_anonymous(&self) -> bool {
        matches!(self, Self::Anonymous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let c = Credential::basic("alice", "hunter2");
        let dbg = format!("{c:?}");
        assert!(dbg.contains("alice"));
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert_eq!(Secret::from("x").to_string(), "****");
    }
}
