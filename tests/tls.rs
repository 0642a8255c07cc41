//! TLS on both sides, through real sockets: the gateway calling an HTTPS
//! Feishu (the simulated one, with a CA made at start), and the gateway's
//! own listener serving HTTPS with certificates reloaded while it runs.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

// ----- helpers -------------------------------------------------------------

/// A rustls client trusting only `ca_pem`, offering `alpn`.
fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA cert");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A TLS connection to `addr` as `localhost`, within 10 s.
async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(Arc::new(client_config(ca_pem, alpn)));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake hung"))?
}

/// The certificate the server presented on `stream`.
fn peer_cert(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0]
        .clone()
}

/// An HTTP/1.1 keep-alive connection over `stream`.
async fn http1(
    stream: TlsStream<TcpStream>,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    send
}

/// GET `/` on an open connection; the body as text.
async fn get(send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>) -> String {
    send.ready().await.expect("connection still usable");
    let req = Request::get("/")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("answer within 10 s")
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(body.to_vec()).expect("utf-8")
}

/// Certificate and key files in a temporary directory.
struct CertFiles {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl CertFiles {
    fn new(issued: &IssuedCert) -> CertFiles {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = CertFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            _dir: dir,
        };
        files.write(&issued.cert_pem, &issued.key_pem);
        files
    }

    /// Replaces both files the way deploy tools do: write aside, rename.
    fn write(&self, cert: &str, key: &str) {
        replace(&self.key, key);
        replace(&self.cert, cert);
    }
}

fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A TLS listener with a trivial service that answers "hello" and a
/// title-cased `X-Tt-Logid`. Dropping the sender stops it.
async fn serve_hello(tls: ReloadingAcceptor) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = tower::service_fn(|_req: Request<hyper::body::Incoming>| async {
        let resp = Response::builder()
            .header("x-tt-logid", "20240101000000LOGID")
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"hello")))
            .expect("response");
        Ok::<_, Infallible>(resp)
    });
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve_with_tls(
        listener,
        Some(tls),
        None,
        service,
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(1),
    ));
    (addr, stop)
}

/// A simulated Feishu over HTTPS and a gateway in front of it, trusting the
/// sim's CA (or not).
async fn start_https(trust_the_ca: bool) -> (Harness, tempfile::NamedTempFile) {
    let sim = SimFeishu::start(SimConfig {
        tls: true,
        ..sim_config()
    })
    .await
    .expect("sim starts");
    assert!(sim.base_url().starts_with("https://127.0.0.1:"));
    let ca_file = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(ca_file.path(), sim.ca_pem().expect("CA")).expect("write CA");
    let h = Harness::on(sim, |c| {
        if trust_the_ca {
            c.upstream_ca_file(ca_file.path())
        } else {
            c
        }
    })
    .await;
    (h, ca_file)
}

// ----- the gateway as an HTTPS client ---------------------------------------

#[tokio::test]
async fn forwards_over_https_to_feishu_with_http2() {
    let (h, _ca) = start_https(true).await;
    let a = h.put("oc_123").await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.code(), 0);
    assert!(a.header("x-tt-logid").is_some());

    assert_eq!(h.sim.token_calls().len(), 1);
    let reqs = h.sim.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, PUT_PATH);
    assert_eq!(reqs[0].answered_code, 0);
    assert_eq!(
        reqs[0].version,
        Version::HTTP_2,
        "ALPN must have chosen h2 with the upstream"
    );
}

#[tokio::test]
async fn an_untrusted_feishu_certificate_fails_fast_with_json() {
    let (h, _ca) = start_https(false).await;
    let started = tokio::time::Instant::now();
    let a = h.put("oc_123").await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered in {:?}",
        started.elapsed()
    );
    assert!(
        a.status == StatusCode::SERVICE_UNAVAILABLE || a.status == StatusCode::BAD_GATEWAY,
        "{} {:?}",
        a.status,
        a.body
    );
    assert!(a
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/json"));
    let reason = a.header("x-gateway-error").expect("a gateway-made answer");
    assert!(
        reason == "token-unavailable" || reason == "upstream-unavailable",
        "{reason}"
    );
    assert_ne!(a.code(), 0);
    assert!(a.json()["msg"].is_string());
    // The handshake failed before any HTTP: the fake saw nothing.
    assert!(h.sim.token_calls().is_empty());
    assert!(h.sim.requests().is_empty());
}

// ----- the gateway as an HTTPS server ----------------------------------------

#[tokio::test]
async fn the_gateway_listener_serves_https_with_h2_and_title_cased_http1() {
    // The gateway configured with `tls_cert` / `tls_key`, in front of a
    // plain-HTTP simulated Feishu; the listener's certificate comes from a
    // test CA.
    let ca = TestCa::new("gateway test CA").expect("CA");
    let files = CertFiles::new(&ca.issue_localhost("gateway").expect("cert"));
    let h = start_with(sim_config(), |c| c.tls(&files.cert, &files.key)).await;
    let addr = h.gw.addr();
    let ca_pem = ca.cert_pem();

    // HTTP/2 by ALPN, as SDKs with an h2-capable client get it.
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_config(&ca_pem, &[]))
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("https://localhost:{}{PUT_PATH}", addr.port()))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from_static(PUT_BODY.as_bytes())))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("answer within 30 s")
        .expect("answer");
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(json["code"], 0);

    // HTTP/1.1 by ALPN: header names title-cased on the wire.
    let mut stream = tls_connect(addr, &ca_pem, &[b"http/1.1"])
        .await
        .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let request = format!(
        "POST {PUT_PATH} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{PUT_BODY}",
        PUT_BODY.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    // A missing close_notify is not the point here; what was read is.
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw)).await;
    let raw = String::from_utf8_lossy(&raw);
    let head = raw.split("\r\n\r\n").next().unwrap_or("");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\nX-Tt-Logid: "), "{head}");
    assert!(
        head.contains("\r\nContent-Type: application/json"),
        "{head}"
    );

    assert_eq!(h.sim.requests().len(), 2);
    h.gw.shutdown();
    h.gw.wait().await;
}

#[tokio::test]
async fn a_changed_certificate_is_used_by_new_connections_and_old_ones_keep_working() {
    let ca = TestCa::new("reload CA").expect("CA");
    let ca_pem = ca.cert_pem();
    let first = ca.issue_localhost("first").expect("cert");
    let second = ca.issue_localhost("second").expect("cert");
    let files = CertFiles::new(&first);
    let tls = ReloadingAcceptor::from_files(&files.cert, &files.key).expect("loads");
    let reloader = tls.spawn_reloader(Duration::from_millis(50));
    let (addr, _stop) = serve_hello(tls.clone()).await;

    let old = tls_connect(addr, &ca_pem, &[b"http/1.1"])
        .await
        .expect("handshake");
    assert_eq!(peer_cert(&old), first.cert_der());
    let mut old = http1(old).await;
    assert_eq!(get(&mut old).await, "hello");

    files.write(&second.cert_pem, &second.key_pem);
    wait_for(Duration::from_secs(10), || async {
        tls.current_cert() == second.cert_der()
    })
    .await;

    let new = tls_connect(addr, &ca_pem, &[b"http/1.1"])
        .await
        .expect("handshake");
    assert_eq!(
        peer_cert(&new),
        second.cert_der(),
        "new handshakes use the new cert"
    );
    let mut new = http1(new).await;
    assert_eq!(get(&mut new).await, "hello");

    // The connection opened before the reload is still the same, working one.
    assert_eq!(get(&mut old).await, "hello");
    assert_eq!(get(&mut old).await, "hello");
    reloader.abort();
}

#[tokio::test]
async fn invalid_new_files_keep_the_old_certificate() {
    let ca = TestCa::new("invalid CA").expect("CA");
    let ca_pem = ca.cert_pem();
    let first = ca.issue_localhost("first").expect("cert");
    let other = ca.issue_localhost("other").expect("cert");
    let third = ca.issue_localhost("third").expect("cert");
    let files = CertFiles::new(&first);
    let tls = ReloadingAcceptor::from_files(&files.cert, &files.key).expect("loads");
    let reloader = tls.spawn_reloader(Duration::from_millis(50));
    let (addr, _stop) = serve_hello(tls.clone()).await;

    let presented = || async {
        let s = tls_connect(addr, &ca_pem, &[b"http/1.1"])
            .await
            .expect("handshake");
        let cert = peer_cert(&s);
        assert_eq!(get(&mut http1(s).await).await, "hello");
        cert
    };

    // Garbage, then a key that belongs to another certificate: each is
    // refused (reload() says why) and the first certificate stays, also
    // after the poller has seen the files.
    for (cert, key) in [
        (
            "-----BEGIN CERTIFICATE-----\nnot base64\n",
            first.key_pem.as_str(),
        ),
        (other.cert_pem.as_str(), first.key_pem.as_str()),
    ] {
        files.write(cert, key);
        let e = tls.reload().expect_err("invalid files are refused");
        assert!(e.contains("tls_"), "{e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(tls.current_cert(), first.cert_der());
        assert_eq!(presented().await, first.cert_der());
    }

    // Valid files again: picked up.
    files.write(&third.cert_pem, &third.key_pem);
    wait_for(Duration::from_secs(10), || async {
        tls.current_cert() == third.cert_der()
    })
    .await;
    assert_eq!(presented().await, third.cert_der());
    reloader.abort();
}

#[tokio::test]
async fn failed_and_silent_handshakes_do_not_stop_the_accept_loop() {
    let ca = TestCa::new("handshake CA").expect("CA");
    let ca_pem = ca.cert_pem();
    let cert = ca.issue_localhost("server").expect("cert");
    let files = CertFiles::new(&cert);
    let tls = ReloadingAcceptor::from_files(&files.cert, &files.key)
        .expect("loads")
        .with_handshake_timeout(Duration::from_millis(300));
    let (addr, _stop) = serve_hello(tls).await;

    // A client that sends nothing is closed after the handshake timeout,
    // while other clients are served meanwhile.
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let started = tokio::time::Instant::now();

    // Plain HTTP on the TLS port, and a client that does not trust the
    // certificate: both fail their handshake.
    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf))
        .await
        .expect("closed, not hung");
    assert!(
        !matches!(n, Ok(n) if n > 0 && buf[..n].starts_with(b"HTTP/")),
        "no HTTP over TLS port"
    );
    let stranger = TestCa::new("stranger").expect("CA").cert_pem();
    assert!(tls_connect(addr, &stranger, &[]).await.is_err());

    let ok = tls_connect(addr, &ca_pem, &[b"http/1.1"])
        .await
        .expect("a good client is still served");
    assert_eq!(get(&mut http1(ok).await).await, "hello");

    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the silent client is dropped, not kept forever");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));

    let again = tls_connect(addr, &ca_pem, &[b"h2"])
        .await
        .expect("handshake");
    assert_eq!(again.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

/// SIGHUP is process-wide: it reloads every acceptor with a reloader in this
/// test binary. That is harmless here (each reloads its own files), and the
/// handler is installed by `spawn_reloader` before the signal is sent.
#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_certificate() {
    let ca = TestCa::new("hup CA").expect("CA");
    let first = ca.issue_localhost("first").expect("cert");
    let second = ca.issue_localhost("second").expect("cert");
    let files = CertFiles::new(&first);
    let tls = ReloadingAcceptor::from_files(&files.cert, &files.key).expect("loads");
    // Polling effectively off: only the signal can make the change visible.
    let reloader = tls.spawn_reloader(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(50)).await;
    files.write(&second.cert_pem, &second.key_pem);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(tls.current_cert(), first.cert_der());

    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_for(Duration::from_secs(10), || async {
        tls.current_cert() == second.cert_der()
    })
    .await;
    reloader.abort();
}
