//! Settings that must never print: a connection URL whose user part or
//! query may hold a password. `Debug` and `Display` show where it points
//! and nothing else, so a settings struct can derive `Debug` and be logged
//! whole; the one way to the value is [`ConnectionUrl::expose`], at the
//! place that connects.

use std::{fmt, str::FromStr};

use secrecy::{ExposeSecret as _, SecretString};

/// A URL to a store (`postgres://user:password@host/db`,
/// `rediss://:password@host:6380`), held as a secret.
///
/// It shows as its scheme, host, port and path, with any credentials and
/// query (where `password=` or key paths may sit) left out:
/// `postgres://db.internal:5432/turnstile (credentials hidden)`.
#[derive(Clone)]
pub struct ConnectionUrl(SecretString);

impl ConnectionUrl {
    /// The URL itself, for the client that connects with it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Where it points, with nothing secret.
    fn shown(&self) -> String {
        let Ok(url) = url::Url::parse(self.expose()) else {
            return "<not a url>".to_owned();
        };
        let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
        if let Some(port) = url.port() {
            shown.push_str(&format!(":{port}"));
        }
        shown.push_str(url.path());
        let hidden = !url.username().is_empty() || url.password().is_some() || url.query().is_some();
        if hidden {
            shown.push_str(" (credentials hidden)");
        }
        shown
    }
}

impl From<String> for ConnectionUrl {
    fn from(value: String) -> Self {
        Self(value.into())
    }
}

impl From<&str> for ConnectionUrl {
    fn from(value: &str) -> Self {
        Self(value.into())
    }
}

impl FromStr for ConnectionUrl {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(value.into())
    }
}

impl fmt::Debug for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionUrl({})", self.shown())
    }
}

impl fmt::Display for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

/// The path of a file that holds a secret (a TLS private key): `Debug`
/// shows that one is set, never where it is.
#[derive(Clone)]
pub struct SecretPath(std::path::PathBuf);

impl SecretPath {
    /// The path itself, for the code that reads the file.
    pub fn expose(&self) -> &std::path::Path {
        &self.0
    }
}

impl FromStr for SecretPath {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.into()))
    }
}

impl From<std::path::PathBuf> for SecretPath {
    fn from(path: std::path::PathBuf) -> Self {
        Self(path)
    }
}

impl fmt::Debug for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPath([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_user_names_and_queries_never_show() {
        let url = ConnectionUrl::from(
            "postgres://turnstile:hunter2@db.internal:5432/claims?sslpassword=k3y&sslmode=verify-full",
        );
        for shown in [format!("{url:?}"), url.to_string()] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(!shown.contains("k3y"), "{shown}");
            assert!(!shown.contains("turnstile:"), "{shown}");
            assert!(shown.contains("postgres://db.internal:5432/claims"), "{shown}");
            assert!(shown.contains("credentials hidden"), "{shown}");
        }
        assert_eq!(
            url.expose(),
            "postgres://turnstile:hunter2@db.internal:5432/claims?sslpassword=k3y&sslmode=verify-full"
        );
    }

    #[test]
    fn a_key_path_never_shows() {
        let path: SecretPath = "/run/secrets/redis-client.key".parse().unwrap();
        assert_eq!(format!("{path:?}"), "SecretPath([redacted])");
        assert_eq!(path.expose(), std::path::Path::new("/run/secrets/redis-client.key"));
    }

    #[test]
    fn a_redis_password_never_shows() {
        let url = ConnectionUrl::from("rediss://:s3cret@cache:6380");
        assert_eq!(url.to_string(), "rediss://cache:6380 (credentials hidden)");
    }

    #[test]
    fn a_url_without_credentials_shows_whole() {
        assert_eq!(
            ConnectionUrl::from("redis://127.0.0.1:6379").to_string(),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn what_does_not_parse_is_not_shown_either() {
        // A typo must not turn the password into the message.
        let url = ConnectionUrl::from("postgres//user:hunter2@db");
        assert_eq!(format!("{url:?}"), "ConnectionUrl(<not a url>)");
    }
}
