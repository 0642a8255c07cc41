//! TLS on the gateway's own listener, with certificates that can be replaced
//! while it runs.
//!
//! The Python SDK refuses plain `http://` for any host but localhost, so the
//! gateway can serve HTTPS itself (`tls_cert` / `tls_key`, PEM files). The
//! alternative, terminating TLS at an ingress, needs none of this.
//!
//! [`ReloadingAcceptor`] holds one rustls server config (ALPN `h2` and
//! `http/1.1`) whose certificate resolver hands out the *current*
//! certificate. A reload swaps that certificate in place:
//!
//! - handshakes that start afterwards present the new certificate;
//! - connections already established are not touched (their handshake is
//!   done), so a reload drops nothing;
//! - new files that cannot be read, do not parse, or whose key does not
//!   match the certificate are logged and ignored: the current certificate
//!   stays.
//!
//! [`ReloadingAcceptor::spawn_reloader`] reloads on SIGHUP and when the
//! files' contents change (checked every `interval`; no file-watching
//! dependency, and it also sees files replaced by renames or symlink swaps
//! as Kubernetes does for mounted secrets).
//!
//! ```no_run
//! # async fn demo(listener: tokio::net::TcpListener) -> Result<(), String> {
//! use std::time::Duration;
//! use feishu_gateway::server::tls::ReloadingAcceptor;
//!
//! let tls = ReloadingAcceptor::from_files("/etc/gw/cert.pem", "/etc/gw/key.pem")?;
//! let reloader = tls.spawn_reloader(Duration::from_secs(5));
//! # let service = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//! # });
//! feishu_gateway::server::serve_with_tls(
//!     listener,
//!     Some(tls),
//!     None, // no connection workers: serve on this runtime
//!     service,
//!     std::future::pending(),
//!     Duration::from_secs(10),
//! )
//! .await;
//! reloader.abort();
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete its TLS handshake by default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A sensible interval for [`ReloadingAcceptor::spawn_reloader`].
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// A TLS acceptor for the listener whose certificate can be reloaded from
/// its files. Cheap to clone; clones share the certificate.
#[derive(Clone)]
pub struct ReloadingAcceptor {
    inner: Arc<Inner>,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
}

struct Inner {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    resolver: Arc<SwappableCert>,
    /// Digest of the file contents last tried (loaded or rejected), so the
    /// poller acts once per change and logs a bad file once, not every tick.
    /// A digest, not the bytes: the key is not kept around twice.
    seen: Mutex<[u8; 32]>,
}

impl std::fmt::Debug for ReloadingAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingAcceptor")
            .field("cert", &self.inner.cert_path)
            .field("key", &self.inner.key_path)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

/// The certificate resolver: every handshake takes the current certificate.
struct SwappableCert(RwLock<Arc<CertifiedKey>>);

impl std::fmt::Debug for SwappableCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SwappableCert")
    }
}

impl SwappableCert {
    fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = key;
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ReloadingAcceptor {
    /// Loads the certificate chain (`cert`, PEM, leaf first) and its private
    /// key (`key`, PEM: PKCS#8, PKCS#1 or SEC1). The error names the file and
    /// what is wrong with it, never the key's contents.
    pub fn from_files(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Result<ReloadingAcceptor, String> {
        let cert_path = cert.into();
        let key_path = key.into();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert, key) = read_both(&cert_path, &key_path)?;
        let certified = parse(&cert_path, &cert, &key_path, &key, &provider)?;
        let resolver = Arc::new(SwappableCert(RwLock::new(Arc::new(certified))));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        // HTTP/2 first: clients that speak it get it; the rest get HTTP/1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ReloadingAcceptor {
            inner: Arc::new(Inner {
                cert_path,
                key_path,
                provider,
                resolver,
                seen: Mutex::new(digest(&cert, &key)),
            }),
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        })
    }

    /// The same acceptor with another handshake timeout (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> ReloadingAcceptor {
        self.handshake_timeout = timeout;
        self
    }

    /// How long a client may take to complete its handshake.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.inner.cert_path
    }

    /// The key file.
    pub fn key_path(&self) -> &Path {
        &self.inner.key_path
    }

    /// The end-entity certificate new handshakes present (DER).
    pub fn current_cert(&self) -> CertificateDer<'static> {
        let key = self.inner.resolver.current();
        key.cert
            .first()
            .cloned()
            .expect("a loaded chain is never empty")
    }

    /// Reads both files again and, when they are valid, makes them the
    /// certificate of every handshake from now on. When they are not, the
    /// current certificate stays, and the error is returned and logged.
    pub fn reload(&self) -> Result<(), String> {
        self.reload_files(false).map(|_| ())
    }

    /// Reloads when the files' contents differ from the last ones tried.
    /// `Ok(true)`: a new certificate is in use; `Ok(false)`: nothing changed.
    /// A change that does not load is reported once, then ignored until the
    /// files change again. A file that cannot be read (being replaced) is
    /// not a change.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        self.reload_files(true)
    }

    /// Starts a task that reloads on SIGHUP (unconditionally) and every
    /// `interval` when the files changed. The SIGHUP handler is installed
    /// before this returns, so a SIGHUP sent afterwards never takes the
    /// process's default action (exit). Abort the handle to stop it.
    pub fn spawn_reloader(&self, interval: Duration) -> JoinHandle<()> {
        let this = self.clone();
        #[cfg(unix)]
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS reload on file change only");
                None
            }
        };
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                #[cfg(unix)]
                let hup = async {
                    match hangup.as_mut() {
                        Some(s) => s.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let hup = std::future::pending::<Option<()>>();
                tokio::select! {
                    _ = ticks.tick() => {
                        // Errors are logged by the reload itself.
                        let _ = this.reload_if_changed();
                    }
                    Some(()) = hup => {
                        tracing::info!("SIGHUP: reloading the TLS certificate");
                        let _ = this.reload();
                    }
                }
            }
        })
    }

    /// The TLS handshake on an accepted connection, bounded by the handshake
    /// timeout so a silent client cannot hold a task forever.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream)).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, [u8; 32]> {
        self.inner
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn reload_files(&self, only_if_changed: bool) -> Result<bool, String> {
        let i = &self.inner;
        let (cert, key) = match read_both(&i.cert_path, &i.key_path) {
            Ok(bytes) => bytes,
            Err(e) if only_if_changed => {
                tracing::debug!(error = %e, "TLS files not readable; will look again");
                return Ok(false);
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; keeping the current one");
                return Err(e);
            }
        };
        let now = digest(&cert, &key);
        {
            let mut seen = self.seen();
            if only_if_changed && *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        match parse(&i.cert_path, &cert, &i.key_path, &key, &i.provider) {
            Ok(certified) => {
                i.resolver.set(Arc::new(certified));
                tracing::info!(cert = %i.cert_path.display(), "TLS certificate loaded; new connections use it");
                Ok(true)
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; keeping the current one");
                Err(e)
            }
        }
    }
}

fn read_both(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, Vec<u8>), String> {
    let cert =
        std::fs::read(cert_path).map_err(|e| format!("tls_cert {}: {e}", cert_path.display()))?;
    let key =
        std::fs::read(key_path).map_err(|e| format!("tls_key {}: {e}", key_path.display()))?;
    Ok((cert, key))
}

fn digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((cert.len() as u64).to_be_bytes());
    h.update(cert);
    h.update(key);
    h.finalize().into()
}

/// Parses a chain and a key and checks that they belong together.
fn parse(
    cert_path: &Path,
    cert: &[u8],
    key_path: &Path,
    key: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls_cert {}: {e}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "tls_cert {}: no PEM certificate in the file",
            cert_path.display()
        ));
    }
    // The PEM error names the section kind, never the key's bytes.
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
        format!(
            "tls_key {}: no usable PEM private key ({e})",
            key_path.display()
        )
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!(
            "tls_cert {} / tls_key {}: {e}",
            cert_path.display(),
            key_path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use feishu_sim::ca::TestCa;

    struct Files {
        _dir: tempfile::TempDir,
        cert: PathBuf,
        key: PathBuf,
    }

    fn files() -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        Files {
            _dir: dir,
            cert,
            key,
        }
    }

    fn write(f: &Files, cert: &str, key: &str) {
        std::fs::write(&f.cert, cert).expect("write cert");
        std::fs::write(&f.key, key).expect("write key");
    }

    #[test]
    fn loads_reloads_on_change_and_keeps_the_old_cert_on_bad_files() {
        let ca = TestCa::new("unit CA").expect("CA");
        let one = ca.issue_localhost("one").expect("cert");
        let two = ca.issue_localhost("two").expect("cert");
        let f = files();
        write(&f, &one.cert_pem, &one.key_pem);
        let tls = ReloadingAcceptor::from_files(&f.cert, &f.key).expect("loads");
        assert_eq!(tls.current_cert(), one.cert_der());
        assert_eq!(tls.reload_if_changed(), Ok(false));

        // A key that does not match: refused once, then ignored until the
        // files change again.
        write(&f, &two.cert_pem, &one.key_pem);
        let e = tls.reload_if_changed().expect_err("mismatched key");
        assert!(e.contains("tls_cert"), "{e}");
        assert!(!e.contains("PRIVATE KEY"), "no key material: {e}");
        assert_eq!(tls.reload_if_changed(), Ok(false));
        assert_eq!(tls.current_cert(), one.cert_der());

        write(&f, &two.cert_pem, &two.key_pem);
        assert_eq!(tls.reload_if_changed(), Ok(true));
        assert_eq!(tls.current_cert(), two.cert_der());

        // Garbage and missing files keep the current certificate.
        write(&f, "not a certificate", &two.key_pem);
        assert!(tls.reload().is_err());
        std::fs::remove_file(&f.key).expect("rm");
        assert_eq!(tls.reload_if_changed(), Ok(false));
        assert!(tls.reload().expect_err("missing key").contains("tls_key"));
        assert_eq!(tls.current_cert(), two.cert_der());
    }

    #[test]
    fn bad_files_at_start_are_errors_naming_the_file() {
        let f = files();
        let e = ReloadingAcceptor::from_files(&f.cert, &f.key).expect_err("missing");
        assert!(e.starts_with("tls_cert"), "{e}");
        write(&f, "", "");
        let e = ReloadingAcceptor::from_files(&f.cert, &f.key).expect_err("empty");
        assert!(e.contains("no PEM certificate"), "{e}");
        let ca = TestCa::new("unit CA").expect("CA");
        let one = ca.issue_localhost("one").expect("cert");
        write(&f, &one.cert_pem, "");
        let e = ReloadingAcceptor::from_files(&f.cert, &f.key).expect_err("no key");
        assert!(e.starts_with("tls_key"), "{e}");
        let dbg = format!("{:?}", one);
        assert!(!dbg.contains(&one.key_pem), "{dbg}");
    }
}
