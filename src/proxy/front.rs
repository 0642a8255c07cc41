//! The phases that answer a request before any client is known, or without
//! forwarding it: `route` (only `/open-apis/`, never dot segments, never
//! Feishu's own token endpoints), `issue_token` (the SDKs' token call,
//! answered with a gateway token) and `event_callback` (Feishu's pushes:
//! events of every app, store apps' tickets).

use bytes::Bytes;
use http::request::Parts;
use http::Response;
use hyper::body::Incoming;

use crate::events::webhook::Push;
use crate::events::{Accepted, Transport};
use crate::feishu::paths;
use crate::proxy::body::ProxyBody;
use crate::proxy::error::GatewayError;
use crate::store_apps::CallbackRefused;

use super::{Gateway, RequestCtx};

impl Gateway {
    /// Phase `route`: only `/open-apis/` paths are forwarded, never with
    /// dot segments, and the catalog entry (if any) is noted.
    pub(super) fn route(&self, ctx: &mut RequestCtx, parts: &Parts) -> Result<(), GatewayError> {
        let path = parts.uri.path();
        if !path.starts_with(paths::OPEN_APIS) || has_dot_segment(path) {
            return Err(GatewayError::NotFound);
        }
        // Token endpoints other than the two the gateway answers would hand
        // a caller Feishu credentials: never forwarded.
        if path.starts_with(paths::AUTH_PREFIX) && token_endpoint(path).is_none() {
            return Err(GatewayError::NotFound);
        }
        ctx.route = self.catalog.find(&parts.method, path);
        ctx.budget_exempt = self.budget.is_exempt(path);
        Ok(())
    }

    /// Phase `issue_token`: the SDKs' own token call, answered in Feishu's
    /// flat shape with a gateway token bound to the client and app. The
    /// `app_secret` is the client's gateway key; any mismatch gets Feishu's
    /// wrong-secret answer without saying which part was wrong. Never
    /// forwarded.
    pub(super) async fn issue_token(
        &self,
        ctx: &mut RequestCtx,
        parts: &Parts,
        body: Incoming,
        field: &'static str,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        #[derive(serde::Deserialize)]
        struct Credentials {
            app_id: String,
            app_secret: String,
        }
        if parts.method != http::Method::POST {
            return Err(GatewayError::NotFound);
        }
        // The Python SDK sends no Content-Type here: the body decides.
        let body = self.read_body(parts, body, self.max_body_bytes).await?;
        let creds: Credentials =
            serde_json::from_slice(&body).map_err(|_| GatewayError::BadTokenRequest)?;
        let caller = self
            .clients
            .by_key(creds.app_secret.as_bytes())
            .filter(|c| self.clients.app_id_of(&c.client) == Some(creds.app_id.as_str()))
            .ok_or(GatewayError::InvalidAppCredentials)?;
        caller.client.count_request(caller.key);
        ctx.app = Some(caller.client.app);
        ctx.code = Some(0);
        let (token, expire) = self.issuer.issue(&caller, &creds.app_id);
        ctx.caller = Some(caller);
        let answer = serde_json::json!({
            "code": 0,
            "msg": "ok",
            field: token,
            "expire": expire,
        });
        Ok(crate::proxy::error::json_answer(
            http::StatusCode::OK,
            &answer,
        ))
    }

    /// Phase `event_callback`: Feishu's pushes to `/feishu/events/<app>`,
    /// for apps of both kinds, verified (`events::webhook`): the URL check
    /// answered, a store app's app_ticket kept, any other event handed to
    /// the event hub, acknowledged 200 once queued (or a duplicate), a card
    /// callback answered with its subscriber's answer, 503 when the hub
    /// refused it (so Feishu pushes it again). Never forwarded.
    pub(super) async fn event_callback(
        &self,
        parts: &Parts,
        body: Incoming,
        app: &str,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        if parts.method != http::Method::POST {
            return Err(GatewayError::NotFound);
        }
        let body = self.read_body(parts, body, self.max_body_bytes).await?;
        let refused = |r: CallbackRefused| match r {
            CallbackRefused::UnknownApp => GatewayError::NotFound,
            CallbackRefused::Unauthenticated => {
                GatewayError::BadCallback(http::StatusCode::UNAUTHORIZED)
            }
            CallbackRefused::Invalid => GatewayError::BadCallback(http::StatusCode::BAD_REQUEST),
        };
        let ok = |answer: serde_json::Value| {
            Ok(crate::proxy::error::json_answer(
                http::StatusCode::OK,
                &answer,
            ))
        };
        let (index, push) = self
            .event_intake
            .verify(app, &parts.headers, &body)
            .map_err(refused)?;
        match push {
            Push::Challenge(challenge) => ok(serde_json::json!({ "challenge": challenge })),
            Push::AppTicket { app_id, ticket } => {
                if self.store.is_store(index) {
                    self.store
                        .receive_ticket(index, &app_id, ticket)
                        .await
                        .map_err(refused)?;
                }
                ok(serde_json::json!({}))
            }
            Push::Event(plain) => {
                match self
                    .events
                    .accept(app, Transport::Webhook, Bytes::from(plain))
                    .await
                {
                    Accepted::Queued | Accepted::Duplicate => ok(serde_json::json!({})),
                    Accepted::Answer(answer) => Ok(crate::proxy::error::raw_json_answer(
                        http::StatusCode::OK,
                        answer,
                    )),
                    Accepted::Refused(reason) => Err(GatewayError::EventRefused(reason)),
                }
            }
        }
    }
}

/// The token field of the answer if `path` is one of Feishu's token
/// endpoints the gateway answers itself.
pub(super) fn token_endpoint(path: &str) -> Option<&'static str> {
    match path {
        paths::TENANT_TOKEN_INTERNAL => Some("tenant_access_token"),
        paths::APP_TOKEN_INTERNAL => Some("app_access_token"),
        _ => None,
    }
}

/// `/./`, `/../` and their percent-encoded forms never reach Feishu.
pub(super) fn has_dot_segment(path: &str) -> bool {
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return false;
    }
    path.split('/').any(|seg| {
        [".", "..", "%2e", "%2e%2e", ".%2e", "%2e."]
            .iter()
            .any(|d| seg.eq_ignore_ascii_case(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments() {
        assert!(has_dot_segment("/open-apis/../admin"));
        assert!(has_dot_segment("/open-apis/%2E%2e/x"));
        assert!(!has_dot_segment("/open-apis/im/v1/chats/oc_1"));
    }
}
