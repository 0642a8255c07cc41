//! An internal service subscribed to events: a hyper server on loopback
//! that records every POST (headers, body) and answers as the test says
//! ([`Behaviour`]): 200 with a body, another status, or late.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// How the subscriber answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 with this body.
    Ok(String),
    /// This status, empty body.
    Status(u16),
    /// Wait, then 200 with this body.
    Late(Duration, String),
}

/// One request received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// `header.event_id` of the event received.
    pub fn event_id(&self) -> String {
        self.json()["header"]["event_id"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

type Shared = (Arc<Mutex<Vec<Received>>>, Arc<Mutex<Behaviour>>);

pub struct Subscriber {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// On a free loopback port, answering 200 `{}`.
    pub async fn start() -> Subscriber {
        Subscriber::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// On `addr` (e.g. a port a test kept free until now).
    pub async fn start_on(addr: SocketAddr) -> Subscriber {
        let listener = TcpListener::bind(addr).await.expect("bind subscriber");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let behaviour = Arc::new(Mutex::new(Behaviour::Ok("{}".into())));
        let shared: Shared = (Arc::clone(&received), Arc::clone(&behaviour));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| receive(req, shared.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Subscriber {
            addr,
            received,
            behaviour,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// How many requests arrived so far (whatever they were answered).
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port that nothing listens on (bound, then released).
pub async fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

async fn receive(
    req: Request<Incoming>,
    (received, behaviour): Shared,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    received.lock().unwrap().push(Received {
        headers: parts.headers,
        body,
        at: Instant::now(),
    });
    let b = behaviour.lock().unwrap().clone();
    let (status, text) = match b {
        Behaviour::Ok(text) => (StatusCode::OK, text),
        Behaviour::Status(s) => (StatusCode::from_u16(s).unwrap(), String::new()),
        Behaviour::Late(d, text) => {
            tokio::time::sleep(d).await;
            (StatusCode::OK, text)
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    Ok(resp)
}
