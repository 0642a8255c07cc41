//! Where a slot's token comes from, and the call that fetches it: a
//! self-built app's secret, a store app's ticket, or a tenant's key with
//! its app's token.

use super::*;

/// A token call in flight: the token and its lifetime.
pub(super) type FetchFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(Secret, Duration), FeishuError>> + Send + 'a>,
>;

/// Where a slot's token comes from.
pub enum Source {
    /// A self-built app's tenant token: `tenant_access_token/internal` with
    /// the app secret.
    SelfBuilt {
        /// Feishu app id.
        app_id: String,
        /// The app secret.
        secret: Secret,
        /// The token endpoint.
        url: Uri,
    },
    /// A store app's app token: `app_access_token` with the app secret and
    /// the app_ticket Feishu pushed to the event endpoint.
    StoreApp {
        /// The app's ticket (and how to ask for a new one).
        ticket: Arc<TicketBox>,
        /// The token endpoint.
        url: Uri,
    },
    /// One tenant's token of a store app: `tenant_access_token` with the
    /// app token and the tenant key.
    StoreTenant {
        /// The app-token slot of the app.
        app_slot: Arc<TokenSlot>,
        /// The tenant.
        tenant_key: Arc<str>,
        /// The token endpoint.
        url: Uri,
    },
}

impl Source {
    /// The token field of Feishu's answer.
    pub(super) fn field(&self) -> &'static str {
        match self {
            Source::StoreApp { .. } => "app_access_token",
            _ => "tenant_access_token",
        }
    }
}

#[derive(Deserialize)]
pub(super) struct TokenAnswer {
    code: Option<i64>,
    msg: Option<String>,
    tenant_access_token: Option<String>,
    app_access_token: Option<String>,
    expire: Option<i64>,
}

impl TokenManager {
    /// One token call for `slot`, by its source. Boxed: a tenant token's
    /// fetch first gets the app token through [`TokenManager::get_slot`],
    /// which fetches through here one level down; the box ends that cycle
    /// of types (it costs one allocation per token call, not per request).
    pub(super) fn fetch<'a>(self: &'a Arc<Self>, slot: &'a TokenSlot) -> FetchFuture<'a> {
        Box::pin(async move { self.fetch_inner(slot).await })
    }

    pub(super) async fn fetch_inner(
        self: &Arc<Self>,
        slot: &TokenSlot,
    ) -> Result<(Secret, Duration), FeishuError> {
        match &slot.source {
            Source::SelfBuilt {
                app_id,
                secret,
                url,
            } => {
                let body = serde_json::json!({
                    "app_id": app_id,
                    "app_secret": secret.expose(),
                });
                self.call(url, &body, "tenant_access_token").await
            }
            Source::StoreApp { ticket, url } => {
                let body = |t: &Secret| {
                    serde_json::json!({
                        "app_id": ticket.app_id(),
                        "app_secret": ticket.secret().expose(),
                        "app_ticket": t.expose(),
                    })
                };
                let current = ticket.get_or_wait(self.policy.fetch_timeout).await?;
                match self.call(url, &body(&current), "app_access_token").await {
                    // Feishu says the ticket is no good: ask for a new one,
                    // wait for it, and try once more.
                    Err(e) if e.code == codes::APP_TICKET_INVALID => {
                        ticket.invalidate(&current).await;
                        let fresh = ticket.get_or_wait(self.policy.fetch_timeout).await?;
                        self.call(url, &body(&fresh), "app_access_token").await
                    }
                    other => other,
                }
            }
            Source::StoreTenant {
                app_slot,
                tenant_key,
                url,
            } => {
                let mut retried = false;
                loop {
                    let app_token = self.get_slot(app_slot).await?;
                    let body = serde_json::json!({
                        "app_access_token": app_token.value.expose(),
                        "tenant_key": &**tenant_key,
                    });
                    match self.call(url, &body, "tenant_access_token").await {
                        // The app token went bad: drop it (if still the
                        // cached one) and try once more with a fresh one.
                        Err(e)
                            if !retried
                                && matches!(
                                    e.code,
                                    codes::APP_TOKEN_INVALID | codes::TOKEN_EXPIRED
                                ) =>
                        {
                            self.invalidate_slot(app_slot, app_token.generation);
                            retried = true;
                        }
                        other => return other,
                    }
                }
            }
        }
    }

    /// POSTs `body` to a token endpoint and reads `field` and `expire` from
    /// Feishu's flat answer.
    pub(super) async fn call(
        &self,
        url: &Uri,
        body: &serde_json::Value,
        field: &str,
    ) -> Result<(Secret, Duration), FeishuError> {
        let (status, bytes) = post_json(&self.client, url, body, self.policy.fetch_timeout).await?;
        let answer: TokenAnswer = serde_json::from_slice(&bytes).map_err(|_| FeishuError {
            code: codes::TENANT_TOKEN_FETCH_FAILED,
            msg: format!("token answer with HTTP {status} is not Feishu JSON"),
        })?;
        let code = answer.code.unwrap_or(-1);
        if code != 0 {
            return Err(FeishuError {
                code,
                msg: answer.msg.unwrap_or_else(|| "token call refused".into()),
            });
        }
        let token = if field == "app_access_token" {
            answer.app_access_token
        } else {
            answer.tenant_access_token
        };
        match (token, answer.expire) {
            (Some(t), Some(e)) if !t.is_empty() && e > 0 => {
                Ok((Secret::new(t), Duration::from_secs(e as u64)))
            }
            _ => Err(FeishuError {
                code: codes::TENANT_TOKEN_FETCH_FAILED,
                msg: format!("token answer without {field} or a positive expire"),
            }),
        }
    }
}
