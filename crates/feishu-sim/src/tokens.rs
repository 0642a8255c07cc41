//! The token book: which tokens were issued to which app (and, for store
//! apps' tenant tokens, which tenant), until when, and Feishu's 30-minute
//! same-token rule (the current token while at least 30 minutes of it remain,
//! a new one after), which holds per (app, tenant) too.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::distributions::Alphanumeric;
use rand::Rng;
use tokio::time::Instant;

use super::{TokenKind, TokenVerdict};

/// Random characters after the `t-` / `a-` prefix.
const TOKEN_RANDOM_LEN: usize = 40;

/// Who a token was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) app_id: Arc<str>,
    /// The tenant of a store app's tenant token; `None` otherwise.
    pub(crate) tenant_key: Option<Arc<str>>,
}

/// One issued token.
#[derive(Debug)]
struct Issued {
    holder: Holder,
    expires_at: Instant,
}

/// The tokens of one kind (tenant or app).
#[derive(Debug, Default)]
struct KindBook {
    /// Every issued token still remembered, expired ones included (so an
    /// expired token can be told from an unknown one).
    by_token: HashMap<String, Issued>,
    /// The holder's most recently issued token, by [`owner_key`].
    current: HashMap<String, String>,
}

/// The key of `current`: the app id, or app id, a separator no id contains,
/// and the tenant key.
fn owner_key<'a>(app_id: &'a str, tenant_key: Option<&str>) -> Cow<'a, str> {
    match tenant_key {
        None => Cow::Borrowed(app_id),
        Some(t) => Cow::Owned(format!("{app_id}\u{1f}{t}")),
    }
}

/// What a token call hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) token: String,
    /// Remaining whole seconds.
    pub(crate) expire: u64,
}

/// Issued tokens of both kinds.
#[derive(Debug)]
pub(crate) struct TokenBook {
    lifetime: Duration,
    same_token_threshold: Duration,
    tenant: KindBook,
    app: KindBook,
}

impl TokenBook {
    pub(crate) fn new(lifetime: Duration, same_token_threshold: Duration) -> Self {
        TokenBook {
            lifetime,
            same_token_threshold,
            tenant: KindBook::default(),
            app: KindBook::default(),
        }
    }

    pub(crate) fn set_lifetime(&mut self, d: Duration) {
        self.lifetime = d;
    }

    fn book(&self, kind: TokenKind) -> &KindBook {
        match kind {
            TokenKind::Tenant => &self.tenant,
            TokenKind::App => &self.app,
        }
    }

    fn book_mut(&mut self, kind: TokenKind) -> &mut KindBook {
        match kind {
            TokenKind::Tenant => &mut self.tenant,
            TokenKind::App => &mut self.app,
        }
    }

    /// A token for an app whose credentials were checked (and, for a store
    /// app's tenant token, a tenant that installed it): its current one while
    /// at least `same_token_threshold` remains, otherwise a new one. The old
    /// token stays valid until its own expiry.
    pub(crate) fn grant(
        &mut self,
        kind: TokenKind,
        app_id: &str,
        tenant_key: Option<&str>,
        now: Instant,
    ) -> Grant {
        let threshold = self.same_token_threshold;
        let lifetime = self.lifetime;
        let book = self.book_mut(kind);
        let owner = owner_key(app_id, tenant_key);
        if let Some(current) = book.current.get(owner.as_ref()) {
            if let Some(issued) = book.by_token.get(current) {
                let remaining = issued.expires_at.saturating_duration_since(now);
                // `remaining > 0` keeps a zero threshold from re-issuing an
                // expired token.
                if remaining >= threshold && !remaining.is_zero() {
                    return Grant {
                        token: current.clone(),
                        expire: remaining.as_secs(),
                    };
                }
            }
        }
        let token = new_token(kind);
        book.by_token.insert(
            token.clone(),
            Issued {
                holder: Holder {
                    app_id: Arc::from(app_id),
                    tenant_key: tenant_key.map(Arc::from),
                },
                expires_at: now + lifetime,
            },
        );
        book.current.insert(owner.into_owned(), token.clone());
        Grant {
            token,
            expire: lifetime.as_secs(),
        }
    }

    /// Judge a bearer token on a business request: only tenant tokens are
    /// accepted. Returns the holder of a valid token.
    pub(crate) fn judge(
        &self,
        bearer: Option<&str>,
        now: Instant,
    ) -> (TokenVerdict, Option<Holder>) {
        self.check(TokenKind::Tenant, bearer, now)
    }

    /// Judge a token of `kind`. Returns the holder of a valid token.
    pub(crate) fn check(
        &self,
        kind: TokenKind,
        token: Option<&str>,
        now: Instant,
    ) -> (TokenVerdict, Option<Holder>) {
        let Some(token) = token else {
            return (TokenVerdict::Missing, None);
        };
        match self.book(kind).by_token.get(token) {
            None => (TokenVerdict::Unknown, None),
            Some(issued) if now >= issued.expires_at => (TokenVerdict::Expired, None),
            Some(issued) => (TokenVerdict::Valid, Some(issued.holder.clone())),
        }
    }

    /// Forget every token of both kinds.
    pub(crate) fn invalidate_all(&mut self) {
        self.tenant = KindBook::default();
        self.app = KindBook::default();
    }
}

/// `t-` (tenant) or `a-` (app) followed by random alphanumerics.
fn new_token(kind: TokenKind) -> String {
    let prefix = match kind {
        TokenKind::Tenant => "t-",
        TokenKind::App => "a-",
    };
    let mut token = String::with_capacity(prefix.len() + TOKEN_RANDOM_LEN);
    token.push_str(prefix);
    token.extend(
        rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(TOKEN_RANDOM_LEN)
            .map(char::from),
    );
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn same_token_while_threshold_remains_then_new_one() {
        let mut book = TokenBook::new(2 * HOUR, Duration::from_secs(1800));
        let t0 = Instant::now();
        let a = book.grant(TokenKind::Tenant, "cli_a", None, t0);
        assert!(a.token.starts_with("t-") && a.token.len() == 42);
        assert_eq!(a.expire, 7200);

        let exactly = t0 + Duration::from_secs(5400); // 1800 s remain
        let same = book.grant(TokenKind::Tenant, "cli_a", None, exactly);
        assert_eq!(
            same,
            Grant {
                token: a.token.clone(),
                expire: 1800
            }
        );

        let later = exactly + Duration::from_secs(1);
        let b = book.grant(TokenKind::Tenant, "cli_a", None, later);
        assert_ne!(b.token, a.token);
        assert_eq!(b.expire, 7200);
        assert_eq!(book.judge(Some(&a.token), later).0, TokenVerdict::Valid);
        assert_eq!(
            book.judge(Some(&a.token), t0 + 2 * HOUR).0,
            TokenVerdict::Expired
        );
    }

    #[test]
    fn tokens_are_per_app_and_per_kind() {
        let mut book = TokenBook::new(2 * HOUR, Duration::from_secs(1800));
        let now = Instant::now();
        let a = book.grant(TokenKind::Tenant, "cli_a", None, now);
        let b = book.grant(TokenKind::Tenant, "cli_b", None, now);
        let app = book.grant(TokenKind::App, "cli_a", None, now);
        assert_ne!(a.token, b.token);
        assert!(app.token.starts_with("a-"));
        let (verdict, who) = book.judge(Some(&b.token), now);
        assert_eq!(verdict, TokenVerdict::Valid);
        assert_eq!(who.map(|h| h.app_id).as_deref(), Some("cli_b"));
        // App tokens are not accepted on business calls.
        assert_eq!(book.judge(Some(&app.token), now).0, TokenVerdict::Unknown);
        assert_eq!(book.judge(None, now).0, TokenVerdict::Missing);
    }

    #[test]
    fn store_tenant_tokens_are_per_tenant() {
        let mut book = TokenBook::new(2 * HOUR, Duration::from_secs(1800));
        let now = Instant::now();
        let a = book.grant(TokenKind::Tenant, "cli_s", Some("tenant_a"), now);
        let b = book.grant(TokenKind::Tenant, "cli_s", Some("tenant_b"), now);
        let own = book.grant(TokenKind::Tenant, "cli_s", None, now);
        assert_ne!(a.token, b.token);
        assert_ne!(a.token, own.token);
        // The same-token rule holds per tenant.
        let again = book.grant(TokenKind::Tenant, "cli_s", Some("tenant_a"), now);
        assert_eq!(again.token, a.token);
        let (verdict, holder) = book.judge(Some(&b.token), now);
        assert_eq!(verdict, TokenVerdict::Valid);
        let holder = holder.expect("holder");
        assert_eq!(&*holder.app_id, "cli_s");
        assert_eq!(holder.tenant_key.as_deref(), Some("tenant_b"));
        assert_eq!(
            book.judge(Some(&own.token), now)
                .1
                .and_then(|h| h.tenant_key),
            None
        );
    }

    #[test]
    fn zero_threshold_never_returns_an_expired_token() {
        let mut book = TokenBook::new(Duration::from_secs(10), Duration::ZERO);
        let t0 = Instant::now();
        let a = book.grant(TokenKind::Tenant, "cli_a", None, t0);
        let b = book.grant(
            TokenKind::Tenant,
            "cli_a",
            None,
            t0 + Duration::from_secs(10),
        );
        assert_ne!(a.token, b.token);
    }
}
