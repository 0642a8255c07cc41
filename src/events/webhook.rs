//! The webhook intake's verification: one [`Verifier`] per app that has a
//! Verification Token (store apps always; self-built apps when one is
//! configured), built with each config generation so a reload changes the
//! keys. `POST /feishu/events/<app>` (`proxy/front.rs`) verifies here, then
//! answers the URL check, hands an app_ticket to the store apps, and any
//! other event to the [`EventHub`](super::EventHub).

use std::collections::HashMap;

use http::HeaderMap;

use super::config::AppEvents;
use crate::secret::Secret;
use crate::store_apps::callback::{Event, EventError, Verifier, VerifyOptions};
use crate::store_apps::CallbackRefused;

/// A verified push, classified.
#[derive(Debug)]
pub enum Push {
    /// The subscription check: answer `{"challenge": …}`.
    Challenge(String),
    /// A store app's app_ticket.
    AppTicket {
        /// The app id the ticket is for.
        app_id: String,
        /// The ticket.
        ticket: Secret,
    },
    /// Any other event, as plain JSON.
    Event(Vec<u8>),
}

/// The verifiers of the apps that take webhook pushes.
#[derive(Debug, Default)]
pub struct Intake {
    apps: HashMap<String, (usize, Verifier)>,
}

impl Intake {
    /// Verifiers for `apps` (by app index) that have callback keys.
    pub fn new(apps: &[AppEvents]) -> Intake {
        let apps = apps
            .iter()
            .enumerate()
            .filter_map(|(i, a)| {
                let keys = a.callback.clone()?;
                let options = VerifyOptions {
                    require_signature: a.require_signature,
                    ..VerifyOptions::default()
                };
                Some((a.name.clone(), (i, Verifier::new(keys, options))))
            })
            .collect();
        Intake { apps }
    }

    /// Verifies a push to `/feishu/events/<app>`: the app's index and what
    /// it is. A push that fails verification changes nothing.
    pub fn verify(
        &self,
        app: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(usize, Push), CallbackRefused> {
        let (index, verifier) = self.apps.get(app).ok_or(CallbackRefused::UnknownApp)?;
        let (event, plain) = verifier.verify_plain(headers, body).map_err(|e| {
            tracing::warn!(app, error = ?e, "event callback refused");
            match e {
                EventError::BadSignature | EventError::Stale | EventError::BadToken => {
                    CallbackRefused::Unauthenticated
                }
                _ => CallbackRefused::Invalid,
            }
        })?;
        let push = match event {
            Event::UrlVerification { challenge } => Push::Challenge(challenge),
            Event::AppTicket { app_id, app_ticket } => Push::AppTicket {
                app_id,
                ticket: app_ticket,
            },
            Event::Other { .. } => Push::Event(plain),
        };
        Ok((*index, push))
    }
}
