//! Store apps (ISV), the platform side: their tickets, the tenants that
//! installed them, where their events go, and the pushes made there.
//!
//! # Tickets
//!
//! Every push (after a resend, or [`SimFeishu::push_ticket_now`]) issues a
//! new ticket. Issued tickets stay valid until
//! [`SimFeishu::invalidate_tickets`]; Feishu keeps an old ticket usable for
//! hours, and no test needs it to expire on its own.
//!
//! # Pushes
//!
//! Made by [`super::push`] with what [`StoreBook`] plans under its lock.
//!
//! [`SimFeishu::push_ticket_now`]: super::SimFeishu::push_ticket_now
//! [`SimFeishu::invalidate_tickets`]: super::SimFeishu::invalidate_tickets

use std::collections::{HashMap, HashSet};

use rand::distributions::Alphanumeric;
use rand::Rng;

use super::SimStoreApp;

/// One store app's live state.
#[derive(Debug)]
struct StoreApp {
    cfg: SimStoreApp,
    tenants: HashSet<String>,
    /// Tickets issued and not invalidated, oldest first.
    tickets: Vec<String>,
}

/// Every store app, by id.
#[derive(Debug, Default)]
pub(crate) struct StoreBook {
    apps: HashMap<String, StoreApp>,
}

/// What a push needs, taken under the lock and used without it.
#[derive(Debug, Clone)]
pub(crate) struct PushPlan {
    pub(crate) app_id: String,
    pub(crate) url: Option<String>,
    pub(crate) encrypt_key: Option<String>,
    pub(crate) verification_token: String,
}

impl StoreBook {
    pub(crate) fn new(apps: Vec<SimStoreApp>) -> Self {
        let apps = apps
            .into_iter()
            .map(|cfg| {
                let app = StoreApp {
                    tenants: cfg.tenants.iter().cloned().collect(),
                    tickets: Vec::new(),
                    cfg,
                };
                (app.cfg.app_id.clone(), app)
            })
            .collect();
        StoreBook { apps }
    }

    pub(crate) fn is_store_app(&self, app_id: &str) -> bool {
        self.apps.contains_key(app_id)
    }

    /// Whether `app_id` / `app_secret` are a store app's credentials.
    pub(crate) fn credentials_ok(&self, app_id: &str, app_secret: &str) -> bool {
        self.apps
            .get(app_id)
            .is_some_and(|a| a.cfg.app_secret == app_secret)
    }

    pub(crate) fn ticket_ok(&self, app_id: &str, ticket: &str) -> bool {
        self.apps
            .get(app_id)
            .is_some_and(|a| a.tickets.iter().any(|t| t == ticket))
    }

    pub(crate) fn tenant_ok(&self, app_id: &str, tenant_key: &str) -> bool {
        self.apps
            .get(app_id)
            .is_some_and(|a| a.tenants.contains(tenant_key))
    }

    /// Issue a new ticket for a known app.
    pub(crate) fn issue_ticket(&mut self, app_id: &str) -> Option<String> {
        let app = self.apps.get_mut(app_id)?;
        let ticket: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        app.tickets.push(ticket.clone());
        Some(ticket)
    }

    pub(crate) fn latest_ticket(&self, app_id: &str) -> Option<String> {
        self.apps.get(app_id)?.tickets.last().cloned()
    }

    /// Forget the app's tickets; returns whether the app is known.
    pub(crate) fn invalidate_tickets(&mut self, app_id: &str) -> bool {
        self.apps
            .get_mut(app_id)
            .map(|a| a.tickets.clear())
            .is_some()
    }

    pub(crate) fn set_event_url(&mut self, app_id: &str, url: Option<String>) -> bool {
        self.apps
            .get_mut(app_id)
            .map(|a| a.cfg.event_url = url)
            .is_some()
    }

    pub(crate) fn add_tenant(&mut self, app_id: &str, tenant_key: &str) -> bool {
        self.apps
            .get_mut(app_id)
            .map(|a| a.tenants.insert(tenant_key.to_owned()))
            .is_some()
    }

    pub(crate) fn plan(&self, app_id: &str) -> Option<PushPlan> {
        let app = self.apps.get(app_id)?;
        Some(PushPlan {
            app_id: app_id.to_owned(),
            url: app.cfg.event_url.clone(),
            encrypt_key: app.cfg.encrypt_key.clone(),
            verification_token: app.cfg.verification_token.clone(),
        })
    }
}
