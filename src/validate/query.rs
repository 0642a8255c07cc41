//! Query parameters: each rule's parameter found in the raw query string and
//! checked against its form.
//!
//! The query is read as Feishu's servers read it (Go's `url.ParseQuery`):
//! pairs split at `&`, name and value at the first `=`, `+` and `%XX`
//! decoded. A value is decoded only when it holds a `%` or `+`, so the
//! common `receive_id_type=open_id` is compared in place, without
//! allocating. A parameter given twice is refused as ambiguous (which copy
//! counts is a guess between parsers), like a body field given twice.

use std::borrow::Cow;

use super::contract::QueryParam;
use super::text::text_problem;
use super::violation::{cap, Sink, Violation};

/// Checks `param` against the raw query (`uri.query()`, without the `?`).
pub(crate) fn check_query(param: &QueryParam, query: Option<&str>, sink: &mut Sink) {
    let mut raw = None;
    let mut count = 0usize;
    for pair in query.unwrap_or("").split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(name).is_some_and(|n| n == param.name.as_str()) {
            count += 1;
            raw.get_or_insert(value);
        }
    }
    let problem = match (raw, count) {
        (None, _) if param.required => Some((None, "required".to_string())),
        (None, _) => None,
        (Some(_), 2..) => Some((None, "appears more than once; send it once".into())),
        (Some(raw), _) => match decode(raw) {
            None => Some((Some(cap(raw)), "must be percent-encoded UTF-8".into())),
            Some(value) => text_problem(&param.text, &value).map(|p| (Some(cap(&value)), p)),
        },
    };
    if let Some((value, description)) = problem {
        sink.push(|| Violation::new(param.name.clone(), value, description));
    }
}

/// `raw` with `+` as a space and `%XX` escapes resolved; `None` when an
/// escape is malformed or the result is not UTF-8.
pub(crate) fn decode(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(raw));
    }
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let (hi, lo) = (hex(*b.get(i + 1)?)?, hex(*b.get(i + 2)?)?);
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}
