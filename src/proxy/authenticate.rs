//! Phases `authenticate` (which client is calling, with which of its keys,
//! and so as which app), `authorize` (may it call this endpoint: its
//! `allow` list) and `tenant` (for a store app, which tenant).

use http::header::AUTHORIZATION;
use http::request::Parts;
use http::HeaderMap;

use crate::auth::sdk_token::PREFIX as SDK_TOKEN_PREFIX;
use crate::auth::{bearer, AuthError};
use crate::proxy::error::GatewayError;
use crate::store_apps::TenantError;

use super::{Gateway, RequestCtx, X_GATEWAY_KEY, X_TENANT_KEY};

impl Gateway {
    /// Phase `authenticate`: who is calling, and so as which app. The
    /// bearer credential is one of:
    /// - a user access token (`u-…`), with the client key in `X-Gateway-Key`:
    ///   forwarded untouched, still counted against the app's quota;
    /// - a gateway token from [`Gateway::issue_token`] (`t-g1.…`);
    /// - one of the client's gateway keys itself.
    ///
    /// The request keeps the [`crate::auth::Caller`] it found (the client
    /// and which key), counted in `feishu_gateway_client_requests_total`.
    pub(super) fn authenticate(
        &self,
        ctx: &mut RequestCtx,
        headers: &HeaderMap,
    ) -> Result<(), GatewayError> {
        let credential = bearer(headers).ok_or(GatewayError::MissingCredentials)?;
        let caller = if credential.starts_with("u-") {
            let key = headers
                .get(X_GATEWAY_KEY)
                .and_then(|v| v.to_str().ok())
                .ok_or(GatewayError::UserTokenWithoutKey)?;
            let caller = self
                .clients
                .by_key(key.trim().as_bytes())
                .ok_or(GatewayError::UserTokenWithoutKey)?;
            ctx.user_token = headers.get(AUTHORIZATION).cloned();
            caller
        } else if credential.starts_with(SDK_TOKEN_PREFIX) {
            self.issuer
                .verify(credential, &self.clients)
                .map_err(|_| GatewayError::InvalidCredentials)?
        } else {
            self.clients.authenticate(headers).map_err(|e| match e {
                AuthError::Missing => GatewayError::MissingCredentials,
                AuthError::Unknown => GatewayError::InvalidCredentials,
            })?
        };
        caller.client.count_request(caller.key);
        ctx.app = Some(caller.client.app);
        ctx.caller = Some(caller);
        Ok(())
    }

    /// Phase `authorize`: a client with an `allow` list may call only the
    /// endpoints it names; anything else is answered 403 here, before its
    /// body is read and before any quota or token is spent, and counted in
    /// `feishu_gateway_forbidden_total{client,route}`.
    pub(super) fn authorize(&self, ctx: &RequestCtx, parts: &Parts) -> Result<(), GatewayError> {
        let Some(caller) = &ctx.caller else {
            return Err(GatewayError::Internal);
        };
        let client = &caller.client;
        let Some(allow) = &client.allow else {
            return Ok(());
        };
        if allow.allows(&parts.method, parts.uri.path(), ctx.route) {
            return Ok(());
        }
        self.metrics.forbidden(&client.name, ctx.route);
        Err(GatewayError::Forbidden {
            client: client.name.clone(),
            method: parts.method.to_string(),
            route: ctx.route.map(|r| self.catalog.route(r).template.clone()),
        })
    }

    /// Phase `tenant`: a store app acts for one tenant per request: fixed
    /// for the client in config, or named in `X-Tenant-Key`. Nothing to do
    /// for a self-built app.
    pub(super) fn tenant(
        &self,
        ctx: &mut RequestCtx,
        headers: &HeaderMap,
    ) -> Result<(), GatewayError> {
        let Some(caller) = &ctx.caller else {
            return Err(GatewayError::Internal);
        };
        let client = &caller.client;
        if !self.store.is_store(client.app) {
            return Ok(());
        }
        let key = match &client.tenant {
            Some(t) => t.as_str(),
            None => headers
                .get(X_TENANT_KEY)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or(GatewayError::MissingTenant)?,
        };
        let tenant = self.store.tenant(&self.tokens, client.app, key);
        ctx.tenant = Some(tenant.map_err(|e| match e {
            TenantError::BadKey => GatewayError::BadHeader {
                name: "X-Tenant-Key",
                expected: "a Feishu tenant key (letters, digits, '-' or '_', at most 128)",
            },
            TenantError::NotStoreApp => GatewayError::Internal,
        })?);
        Ok(())
    }
}
