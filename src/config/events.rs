//! `[events]` and `[[subscriptions]]`: how events are de-duplicated, queued,
//! retried and dropped, and who gets which events of which app. Checked
//! against the apps (`[[apps]]` `events` and their webhook keys).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::Uri;

use super::apps::{check_label, Apps};
use super::reader::{Problems, Section};
use super::{secret_source, Environment};
use crate::events::{EventSettings, EventsConfig, SubscriptionConfig, Transport, CARD_ACTION};

/// Subscription secrets shorter than this are refused.
const MIN_SECRET_LEN: usize = 16;
/// Feishu waits 3 s for a card callback's answer.
const CARD_DEADLINE_MAX: Duration = Duration::from_millis(2900);
/// Feishu re-pushes for about 7.1 h: a shorter window lets duplicates by.
const DEDUPE_WINDOW_ADVISED: Duration = Duration::from_secs(7 * 3600 + 1800);

/// Reads `[events]` and `[[subscriptions]]`; `apps` are the apps read.
pub(super) fn read(
    root: &mut Section<'_>,
    apps: &Apps,
    env: &dyn Environment,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> EventsConfig {
    let settings = match root.table("events", p) {
        Some(mut s) => {
            let settings = read_settings(&mut s, p, warnings);
            s.finish(p);
            settings
        }
        None => EventSettings::default(),
    };
    let subscriptions = read_subscriptions(root, apps, env, p);
    EventsConfig {
        settings,
        apps: apps.events.clone(),
        subscriptions,
    }
}

fn read_settings(
    s: &mut Section<'_>,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> EventSettings {
    let d = EventSettings::default();
    let mut positive =
        |s: &mut Section<'_>, key: &'static str, default: Duration| match s.duration(key, p) {
            Some(v) if v.is_zero() => {
                p.push(s.key(key), "must be more than 0");
                default
            }
            Some(v) => v,
            None => default,
        };
    let dedupe_window = positive(s, "dedupe_window", d.dedupe_window);
    let delivery_timeout = positive(s, "delivery_timeout", d.delivery_timeout);
    let retry_first = positive(s, "retry_first", d.retry_first);
    let retry_max = positive(s, "retry_max", d.retry_max);
    let drop_after = positive(s, "drop_after", d.drop_after);
    let card_deadline = positive(s, "card_deadline", d.card_deadline);
    let mut count = |s: &mut Section<'_>, key: &'static str, max: u64, default: usize| match s
        .integer(key, max, p)
    {
        Some(0) => {
            p.push(s.key(key), "must be at least 1");
            default
        }
        Some(v) => v as usize,
        None => default,
    };
    let dedupe_max_ids = count(s, "dedupe_max_ids", 100_000_000, d.dedupe_max_ids);
    let queue_max_events = count(s, "queue_max_events", 10_000_000, d.queue_max_events);
    let queue_max_bytes = count(s, "queue_max_bytes", 1 << 40, d.queue_max_bytes);
    if retry_first > retry_max {
        p.push(s.key("retry_first"), "must not be more than retry_max");
    }
    if card_deadline > CARD_DEADLINE_MAX {
        p.push(
            s.key("card_deadline"),
            "must be at most 2.9s: Feishu waits 3 s for a card callback's answer",
        );
    }
    if dedupe_window < DEDUPE_WINDOW_ADVISED {
        warnings.push(format!(
            "events.dedupe_window is {}: Feishu re-pushes an event for about 7.1 h, so duplicates pushed later will be delivered again",
            humantime::format_duration(dedupe_window)
        ));
    }
    let card_fallback = match s.string("card_fallback", p) {
        None => d.card_fallback,
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) if v.is_object() => Bytes::from(text.to_owned()),
            _ => {
                p.push(s.key("card_fallback"), "must be a JSON object, e.g. \"{}\"");
                d.card_fallback
            }
        },
    };
    EventSettings {
        dedupe_window,
        dedupe_max_ids,
        queue_max_events,
        queue_max_bytes,
        delivery_timeout,
        retry_first,
        retry_max,
        drop_after,
        card_deadline,
        card_fallback,
    }
}

fn read_subscriptions(
    root: &mut Section<'_>,
    apps: &Apps,
    env: &dyn Environment,
    p: &mut Problems,
) -> Vec<SubscriptionConfig> {
    let mut out = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    // App name -> the subscription that answers its card callbacks.
    let mut card: HashMap<String, usize> = HashMap::new();
    for (i, mut s) in root.tables("subscriptions", p).into_iter().enumerate() {
        let name = s.required_string("name", p);
        let app = s.required_string("app", p);
        let events = s.strings("events", p);
        let url = s.required_string("url", p);
        let secret = secret_source(&mut s, "secret_env", "secret_file", &[], env, p);
        if let Some(n) = name {
            check_label(&s, n, p);
            if let Some(j) = names.insert(n.to_string(), i) {
                p.push(
                    s.key("name"),
                    format!("{n:?} is already used by subscriptions[{j}]"),
                );
            }
        }
        let app_at = app.and_then(|a| {
            let at = apps.apps.iter().position(|c| c.name == a);
            if at.is_none() {
                p.push(
                    s.key("app"),
                    format!("{a:?} is not the name of an [[apps]] entry"),
                );
            }
            at
        });
        let events = match events {
            None => {
                p.push(s.key("events"), "is required: event types, or [\"*\"]");
                None
            }
            Some(list) if list.is_empty() => {
                p.push(
                    s.key("events"),
                    "must name at least one event type, or \"*\"",
                );
                None
            }
            Some(list) => {
                for (k, e) in list.iter().enumerate() {
                    if e.trim().is_empty() || e.chars().any(char::is_whitespace) {
                        p.push(format!("{}[{k}]", s.key("events")), "is not an event type");
                    }
                }
                Some(list.iter().map(|e| e.to_string()).collect::<Vec<_>>())
            }
        };
        if let (Some(a), Some(ev)) = (app, &events) {
            if ev.iter().any(|e| e == CARD_ACTION) {
                if let Some(j) = card.insert(a.to_string(), i) {
                    p.push(
                        s.key("events"),
                        format!("app {a:?} has a card.action.trigger subscription already (subscriptions[{j}]): card callbacks are answered by one subscriber"),
                    );
                }
            }
        }
        let url = url.and_then(|u| match u.parse::<Uri>() {
            Ok(uri)
                if (uri.scheme() == Some(&Scheme::HTTP)
                    || uri.scheme() == Some(&Scheme::HTTPS))
                    && uri.host().is_some() =>
            {
                Some(uri)
            }
            _ => {
                p.push(s.key("url"), "must be an absolute http:// or https:// URL");
                None
            }
        });
        if let Some(sec) = &secret {
            if sec.expose().len() < MIN_SECRET_LEN {
                p.push(
                    s.key("secret_env"),
                    format!("the secret must be at least {MIN_SECRET_LEN} characters"),
                );
            }
        }
        if let Some(at) = app_at {
            let ev = &apps.events[at];
            if ev.transport == Transport::Webhook && ev.callback.is_none() {
                p.push(
                    format!("apps[{}].verification_token_env", apps.file_index[at]),
                    format!("is required: subscriptions[{i}] takes events of {:?}, which Feishu pushes to the webhook (or set events = \"long_connection\")", ev.name),
                );
            }
        }
        s.finish(p);
        if let (Some(name), Some(app), Some(events), Some(url), Some(secret)) =
            (name, app, events, url, secret)
        {
            out.push(SubscriptionConfig {
                name: name.to_string(),
                app: app.to_string(),
                events,
                url,
                secret,
            });
        }
    }
    out
}
