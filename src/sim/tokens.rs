//! The token book: which tokens were issued to which app, until when, and
//! Feishu's 30-minute same-token rule (facts §1).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::distributions::Alphanumeric;
use rand::Rng;
use tokio::time::Instant;

use super::{TokenKind, TokenVerdict};

/// Random characters after the `t-` / `a-` prefix.
const TOKEN_RANDOM_LEN: usize = 40;

/// One issued token.
#[derive(Debug)]
struct Issued {
    app_id: Arc<str>,
    expires_at: Instant,
}

/// The tokens of one kind (tenant or app).
#[derive(Debug, Default)]
struct KindBook {
    /// Every issued token still remembered, expired ones included (so an
    /// expired token can be told from an unknown one).
    by_token: HashMap<String, Issued>,
    /// The app's most recently issued token.
    current: HashMap<String, String>,
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

    /// A token for an app whose credentials were checked: its current one
    /// while at least `same_token_threshold` remains, otherwise a new one. The
    /// old token stays valid until its own expiry.
    pub(crate) fn grant(&mut self, kind: TokenKind, app_id: &str, now: Instant) -> Grant {
        let threshold = self.same_token_threshold;
        let lifetime = self.lifetime;
        let book = self.book_mut(kind);
        if let Some(current) = book.current.get(app_id) {
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
                app_id: Arc::from(app_id),
                expires_at: now + lifetime,
            },
        );
        book.current.insert(app_id.to_owned(), token.clone());
        Grant {
            token,
            expire: lifetime.as_secs(),
        }
    }

    /// Judge a bearer token on a business request: only tenant tokens are
    /// accepted. Returns the app of a valid token.
    pub(crate) fn judge(
        &self,
        bearer: Option<&str>,
        now: Instant,
    ) -> (TokenVerdict, Option<Arc<str>>) {
        let Some(token) = bearer else {
            return (TokenVerdict::Missing, None);
        };
        match self.book(TokenKind::Tenant).by_token.get(token) {
            None => (TokenVerdict::Unknown, None),
            Some(issued) if now >= issued.expires_at => (TokenVerdict::Expired, None),
            Some(issued) => (TokenVerdict::Valid, Some(Arc::clone(&issued.app_id))),
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
        let a = book.grant(TokenKind::Tenant, "cli_a", t0);
        assert!(a.token.starts_with("t-") && a.token.len() == 42);
        assert_eq!(a.expire, 7200);

        let exactly = t0 + Duration::from_secs(5400); // 1800 s remain
        let same = book.grant(TokenKind::Tenant, "cli_a", exactly);
        assert_eq!(
            same,
            Grant {
                token: a.token.clone(),
                expire: 1800
            }
        );

        let later = exactly + Duration::from_secs(1);
        let b = book.grant(TokenKind::Tenant, "cli_a", later);
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
        let a = book.grant(TokenKind::Tenant, "cli_a", now);
        let b = book.grant(TokenKind::Tenant, "cli_b", now);
        let app = book.grant(TokenKind::App, "cli_a", now);
        assert_ne!(a.token, b.token);
        assert!(app.token.starts_with("a-"));
        let (verdict, who) = book.judge(Some(&b.token), now);
        assert_eq!(verdict, TokenVerdict::Valid);
        assert_eq!(who.as_deref(), Some("cli_b"));
        // App tokens are not accepted on business calls.
        assert_eq!(book.judge(Some(&app.token), now).0, TokenVerdict::Unknown);
        assert_eq!(book.judge(None, now).0, TokenVerdict::Missing);
    }

    #[test]
    fn zero_threshold_never_returns_an_expired_token() {
        let mut book = TokenBook::new(Duration::from_secs(10), Duration::ZERO);
        let t0 = Instant::now();
        let a = book.grant(TokenKind::Tenant, "cli_a", t0);
        let b = book.grant(TokenKind::Tenant, "cli_a", t0 + Duration::from_secs(10));
        assert_ne!(a.token, b.token);
    }
}
