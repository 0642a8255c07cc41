//! The background client: hyper-util's pooled client for the gateway's own
//! calls to Feishu (token fetches, app_ticket resends), off the request path.
//! The request path uses [`super::pool`] instead.

use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{build_connector, Settings, Upstream};
use crate::feishu::{codes, FeishuError};

/// The pooled client used for token and ticket calls.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds the pooled client for token calls and other background traffic:
/// the same connector, an idle pool with a real timer (without
/// `pool_timer` hyper never reaps idle connections).
pub fn build_client(config: &Settings) -> Result<HttpClient, String> {
    Ok(client_on(build_connector(config)?, config))
}

pub(super) fn client_on(connector: HttpsConnector<HttpConnector>, config: &Settings) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(config.idle_timeout)
        .pool_max_idle_per_host(config.max_idle_per_host)
        .build(connector)
}

/// POSTs a JSON body to Feishu and reads the answer (at most 64 KiB),
/// within `timeout`. Transport failures become gateway-coded errors.
pub async fn post_json(
    client: &HttpClient,
    url: &Uri,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<(http::StatusCode, Bytes), FeishuError> {
    let body = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    let req = Request::builder()
        .method(Method::POST)
        .uri(url.clone())
        .header(CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Full::new(body))
        .map_err(|_| transport_error("could not build the request"))?;
    let call = async {
        let resp = client.request(req).await.map_err(|e| {
            transport_error(&format!("call failed ({})", super::classify(&e).as_str()))
        })?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|_| transport_error("answer could not be read"))?
            .to_bytes();
        Ok::<_, FeishuError>((status, bytes))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| transport_error("call timed out"))?
}

/// `upstream` + a static path.
pub fn endpoint(upstream: &Upstream, path: &'static str) -> Uri {
    Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query(path)
        .build()
        .expect("scheme, authority and a static path form a URI")
}

fn transport_error(msg: &str) -> FeishuError {
    FeishuError {
        code: codes::GW_UPSTREAM_UNAVAILABLE,
        msg: format!("Feishu could not be reached for a token: {msg}"),
    }
}
