//! The transport to Feishu.
//!
//! | part | what it is |
//! |------|------------|
//! | [`Upstream`] | where an app's calls go: scheme and authority |
//! | [`build_connector`] | TCP + rustls, ALPN `h2` and `http/1.1` |
//! | [`pool`] | the request path's connections (hyper's HTTP/1.1 and HTTP/2), one pool per worker; retry-once rules |
//! | [`outgoing`] | a request's body: held (replayable) or streamed from the client (uploads) |
//! | [`HttpClient`] | hyper-util's client for token and ticket calls ([`client`])   |
//! | [`UpstreamFailure`] | how a call failed: connect, timeout, reset, protocol |

pub mod client;
mod failure;
pub mod outgoing;
pub mod pool;

pub use client::{build_client, endpoint, post_json, HttpClient};
pub use failure::{classify, classify_chain, BodyError, UpstreamFailure};
pub use outgoing::OutgoingBody;

use std::sync::Arc;
use std::time::Duration;

use std::path::PathBuf;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use http::uri::{Authority, Scheme};
use pool::Pool;

/// An upstream base URL: scheme and authority only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host and optional port.
    pub authority: Authority,
}

impl Upstream {
    /// Parses `https://host[:port]` (a trailing `/` is allowed, a path is not).
    pub fn parse(s: &str) -> Result<Upstream, String> {
        let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL ({e})"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => return Err(format!("{s:?} must start with https:// or http://")),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{s:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{s:?} must not carry credentials"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "{s:?} must be a base URL without a path, like https://open.feishu.cn"
            ));
        }
        Ok(Upstream { scheme, authority })
    }

    /// True for `localhost` and loopback addresses.
    pub fn is_loopback(&self) -> bool {
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false)
    }

    /// `scheme://authority`, for logs and docs.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

/// How connections to Feishu are made and kept.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A CA trusted beside the public web roots (a private deployment).
    pub ca_file: Option<PathBuf>,
    /// TCP+TLS connect timeout.
    pub connect_timeout: Duration,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
    /// Idle connections kept per upstream.
    pub max_idle_per_host: usize,
}

/// The connector every upstream connection is made with: connect timeout,
/// TCP keep-alive and no Nagle, TLS via rustls with the webpki roots plus
/// an optional extra CA, and ALPN offering HTTP/2 and HTTP/1.1.
pub fn build_connector(config: &Settings) -> Result<HttpsConnector<HttpConnector>, String> {
    let tls = tls_client_config(config)?;

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

/// The TLS client configuration toward Feishu, without ALPN: rustls with
/// ring, the webpki roots plus `upstream_ca_file`. [`build_connector`]
/// adds ALPN; the long connection's WebSocket uses it as is.
pub fn tls_client_config(config: &Settings) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &config.ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("upstream_ca_file {}: {e}", path.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("upstream_ca_file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("upstream_ca_file {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tls)
}

/// The gateway's upstream connections: for the request path, one
/// [`Pool`] per connection worker, so a request's upstream connection lives
/// on the worker thread that serves the request (see [`crate::workers`]),
/// and one for requests served off the workers (`workers = 0`); for token
/// fetches and ticket calls, one shared hyper-util client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Upstreams {
    shared: HttpClient,
    shared_pool: Pool,
    per_worker: Arc<[Pool]>,
}

impl Upstreams {
    /// The shared client and pools for `workers` workers, all from `config`.
    pub fn build(config: &Settings, workers: usize) -> Result<Upstreams, String> {
        let connector = build_connector(config)?;
        let pool = || {
            Pool::new(
                connector.clone(),
                config.idle_timeout,
                config.max_idle_per_host,
            )
        };
        Ok(Upstreams {
            shared: client::client_on(connector.clone(), config),
            shared_pool: pool(),
            per_worker: (0..workers).map(|_| pool()).collect(),
        })
    }

    /// The client for token calls and other background traffic.
    pub fn shared(&self) -> &HttpClient {
        &self.shared
    }

    /// The request-path pool for the caller's thread: its worker's, or the
    /// one used off the workers.
    pub fn current(&self) -> &Pool {
        crate::workers::current()
            .and_then(|i| self.per_worker.get(i))
            .unwrap_or(&self.shared_pool)
    }
}
