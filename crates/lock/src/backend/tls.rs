//! TLS for the Redis backends (`rediss://` URLs), behind the `tls` feature:
//! the certificate authority the servers' certificates must chain to, and
//! a client certificate for servers that ask for one (`tls-auth-clients`).

use std::{fmt, path::Path};

/// What a `rediss://` connection trusts and shows, all PEM. Without a CA
/// the system's roots are trusted.
#[derive(Clone, Default)]
pub struct RedisTls {
    ca_pem: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for RedisTls {
    /// The client key never shows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("own_ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

impl RedisTls {
    /// Trusts the certificate authority `ca_pem` (PEM) instead of the
    /// system's roots.
    #[must_use]
    pub fn with_ca(mut self, ca_pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(ca_pem.into());
        self
    }

    /// Shows the client certificate `cert_pem` with its key `key_pem` to a
    /// server that asks for one.
    #[must_use]
    pub fn with_client_certificate(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.client = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Reads the CA and the client certificate and key from PEM files: a
    /// CA alone, a certificate with its key, or both.
    pub fn from_files(ca: Option<&Path>, client: Option<(&Path, &Path)>) -> std::io::Result<Self> {
        let mut tls = Self::default();
        if let Some(ca) = ca {
            tls = tls.with_ca(std::fs::read(ca)?);
        }
        if let Some((cert, key)) = client {
            tls = tls.with_client_certificate(std::fs::read(cert)?, std::fs::read(key)?);
        }
        Ok(tls)
    }

    /// The redis client's form.
    pub fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self.client.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: self.ca_pem.clone(),
        }
    }
}

/// A client for `url`, for the application's own connections to a Redis
/// the lock also uses (a cache, say): with `tls`, one that verifies the
/// server against its CA and shows its certificate; without, a plain one
/// (which still speaks TLS, trusting the system's roots, for a `rediss://`
/// URL).
pub fn client(url: impl redis::IntoConnectionInfo, tls: Option<&RedisTls>) -> redis::RedisResult<redis::Client> {
    match tls {
        Some(tls) => redis::Client::build_with_tls(url, tls.certificates()),
        None => redis::Client::open(url),
    }
}
