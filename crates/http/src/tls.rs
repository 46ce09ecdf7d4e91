//! TLS on the services' listeners, with rustls: a certificate and key from
//! files, reloaded when the files change (new handshakes get the new
//! certificate, open connections keep theirs), HTTP/2 offered through ALPN
//! (so only over TLS), and optionally mutual TLS: a client without a
//! certificate the configured CA signed is refused in the handshake.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::ring,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio_util::sync::CancellationToken;
use turnstile_runtime::secret::SecretPath;

/// How often the certificate files are looked at for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// A listener's TLS settings, from the command line or the environment;
/// unset, the listeners speak plain HTTP/1.1.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsSettings {
    /// The listeners' certificate chain (a PEM file, leaf first); with
    /// TURNSTILE_TLS_KEY, both listeners speak TLS only, and the public one
    /// offers HTTP/2. The files are read again when they change
    #[arg(long = "tls-cert", env = "TURNSTILE_TLS_CERT", requires = "tls_key")]
    pub cert: Option<PathBuf>,

    /// The certificate's private key (a PEM file)
    #[arg(
        id = "tls_key",
        long = "tls-key",
        env = "TURNSTILE_TLS_KEY",
        requires = "cert",
        hide_env_values = true
    )]
    pub key: Option<SecretPath>,

    /// Mutual TLS on the public listener: the CA (a PEM file) that must have
    /// signed a caller's client certificate; a caller without one is
    /// refused in the handshake
    #[arg(long = "tls-client-ca", env = "TURNSTILE_TLS_CLIENT_CA", requires = "cert")]
    pub client_ca: Option<PathBuf>,

    /// With mutual TLS, a client certificate's common name is its holder's
    /// tenant: a request whose API key belongs to another tenant is
    /// refused 403
    #[arg(
        long = "tls-client-tenant",
        env = "TURNSTILE_TLS_CLIENT_TENANT",
        default_value_t = false,
        action = clap::ArgAction::Set,
        requires = "client_ca"
    )]
    pub client_tenant: bool,
}

/// The client certificate a caller showed in the TLS handshake, as a
/// request extension: what the authentication compares with the API key
/// when certificates name tenants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The subject's common name, if it has one.
    pub common_name: Option<Arc<str>>,
}

impl ClientCertificate {
    /// The certificate of the end entity (the first of the chain), read.
    pub fn from_der(der: &[u8]) -> Self {
        let common_name = x509_parser::parse_x509_certificate(der).ok().and_then(|(_, cert)| {
            cert.subject()
                .iter_common_name()
                .next()
                .and_then(|name| name.as_str().ok())
                .map(Arc::from)
        });
        Self { common_name }
    }
}

impl TlsSettings {
    /// The variables with no default: unset, plain HTTP.
    pub const WITHOUT_DEFAULT: [&'static str; 3] =
        ["TURNSTILE_TLS_CERT", "TURNSTILE_TLS_KEY", "TURNSTILE_TLS_CLIENT_CA"];
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM.
    #[error("reading {path}: {reason}")]
    File {
        /// The file (a key's path shows as such, never its contents).
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the certificate, the key or the CA.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA could not make a verifier.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A listener's TLS: the rustls configurations (public and operator) and
/// the certificate they both serve, which [`ServerTls::watch`] reloads.
#[derive(Clone)]
pub struct ServerTls {
    /// The public listener's: ALPN h2 and http/1.1, client certificates if
    /// configured.
    pub public: Arc<ServerConfig>,
    /// The operator listener's: http/1.1, no client certificate (a
    /// scraper has none).
    pub operator: Arc<ServerConfig>,
    certificate: Arc<ReloadingCertificate>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.certificate.cert)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// TLS from `settings`, or `None` when no certificate is set.
    pub fn from_settings(settings: &TlsSettings) -> Result<Option<Self>, TlsError> {
        let (Some(cert), Some(key)) = (&settings.cert, &settings.key) else {
            return Ok(None);
        };
        let certificate = Arc::new(ReloadingCertificate::load(cert.clone(), key.clone())?);
        let provider = Arc::new(ring::default_provider());
        let builder =
            ServerConfig::builder_with_provider(Arc::clone(&provider)).with_safe_default_protocol_versions()?;
        let public_builder = match &settings.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certificates(ca)? {
                    roots.add(cert)?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider)).build()?;
                builder.clone().with_client_cert_verifier(verifier)
            }
            None => builder.clone().with_no_client_auth(),
        };
        let mut public = public_builder.with_cert_resolver(Arc::clone(&certificate) as Arc<dyn ResolvesServerCert>);
        public.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut operator = builder
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&certificate) as Arc<dyn ResolvesServerCert>);
        operator.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Self {
            public: Arc::new(public),
            operator: Arc::new(operator),
            certificate,
        }))
    }

    /// Reads the certificate and key again whenever either file changes
    /// (looked at every [`RELOAD_CHECK`]) until `stop` fires. A pair that
    /// does not load is logged and the old one kept.
    pub async fn watch(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(RELOAD_CHECK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            self.certificate.reload_if_changed();
        }
    }
}

/// The certificate every handshake gets, swapped when its files change.
struct ReloadingCertificate {
    cert: PathBuf,
    key: SecretPath,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>)>,
}

impl fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCertificate")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl ReloadingCertificate {
    fn load(cert: PathBuf, key: SecretPath) -> Result<Self, TlsError> {
        let stamp = changed_at(&cert, key.expose());
        let certified = certified_key(&cert, key.expose())?;
        Ok(Self {
            cert,
            key,
            current: RwLock::new((certified, stamp)),
        })
    }

    fn reload_if_changed(&self) {
        let stamp = changed_at(&self.cert, self.key.expose());
        if stamp == self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).1 {
            return;
        }
        match certified_key(&self.cert, self.key.expose()) {
            Ok(certified) => {
                *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = (certified, stamp);
                tracing::info!(cert = %self.cert.display(), "tls certificate reloaded");
            }
            // Mid-rotation the files may not match yet: keep serving the
            // old pair and look again at the next check.
            Err(e) => {
                tracing::warn!(cert = %self.cert.display(), error = %e, "tls certificate not reloaded; keeping the old one")
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).0,
        ))
    }
}

/// When the later of the two files last changed (`None` if unreadable).
fn changed_at(cert: &Path, key: &Path) -> Option<SystemTime> {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    modified(cert).max(modified(key))
}

fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        path: "the tls key".to_owned(),
        reason: e.to_string(),
    })?;
    let certified = CertifiedKey::from_der(chain, key, &ring::default_provider())?;
    Ok(Arc::new(certified))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |reason: String| TlsError::File {
        path: path.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error("no certificate in it".to_owned()));
    }
    Ok(chain)
}
