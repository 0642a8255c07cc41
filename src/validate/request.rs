//! The checks of a whole request against its contract: path parameters,
//! query parameters, headers, then the body.

use http::HeaderMap;
use serde::de::DeserializeSeed;

use super::contract::{BodyRule, Contract, HeaderCheck, HeaderRule, Param, UnknownFields};
use super::json::{syntax_description, Path, ValueSeed, Walk};
use super::query::check_query;
use super::text::text_problem;
use super::violation::{cap, Sink, Violation, Violations};
use super::RequestView;

impl Contract {
    /// Checks `req` against this contract: `Ok(())`, or every violation
    /// found, in order (path parameters, query parameters, headers, body).
    pub fn check(&self, req: &RequestView<'_>) -> Result<(), Violations> {
        let mut sink = Sink::default();
        for param in &self.params {
            check_param(param, req.route.param(req.path, &param.name), &mut sink);
        }
        for param in &self.query {
            check_query(param, req.query, &mut sink);
        }
        for rule in &self.headers {
            check_header(rule, req.headers, &mut sink);
        }
        check_body(&self.body, req.body, self.unknown_fields, &mut sink);
        sink.finish(self.code)
    }
}

/// One path parameter, from its raw (still percent-encoded) segment.
///
/// Any `%` is refused: a valid id never needs escaping, and decoding before
/// checking would let `%2F`, `%2e%2e` or a double encoding (`%252F`) reach
/// Feishu as something else than what was checked.
fn check_param(param: &Param, raw: Option<&str>, sink: &mut Sink) {
    let problem = match raw {
        None | Some("") => {
            sink.push(|| Violation::new(param.name.clone(), None, "required".into()));
            return;
        }
        Some(raw) => path_problem(raw).or_else(|| text_problem(&param.text, raw)),
    };
    if let (Some(description), Some(raw)) = (problem, raw) {
        sink.push(|| Violation::new(param.name.clone(), Some(cap(raw)), description));
    }
}

/// What makes a raw path segment unsafe to forward, whatever its form.
pub(crate) fn path_problem(raw: &str) -> Option<String> {
    let b = raw.as_bytes();
    // The common case, ids of letters, digits and '_', in one tight loop.
    if b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_') {
        return None;
    }
    let (mut control, mut slash, mut encoded_slash, mut percent, mut dots) =
        (false, false, false, false, false);
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'/' => slash = true,
            b'%' => {
                percent = true;
                let next = (b.get(i + 1), b.get(i + 2).map(u8::to_ascii_lowercase));
                encoded_slash |=
                    matches!(next, (Some(b'2'), Some(b'f')) | (Some(b'5'), Some(b'c')));
            }
            b'.' => dots |= b.get(i + 1) == Some(&b'.'),
            c if c.is_ascii_control() => control = true,
            _ => {}
        }
    }
    // Non-ASCII control characters (U+0080..U+009F) too.
    control |= !raw.is_ascii() && raw.chars().any(char::is_control);
    let why = if control {
        "must not contain control characters"
    } else if slash {
        "must not contain '/'"
    } else if encoded_slash {
        "must not contain an encoded '/' or '\\' (%2F, %5C)"
    } else if percent {
        "must not be percent-encoded (an id never needs escaping)"
    } else if dots {
        "must not contain '..'"
    } else {
        return None;
    };
    Some(why.into())
}

fn check_header(rule: &HeaderRule, headers: &HeaderMap, sink: &mut Sink) {
    let mut values = headers.get_all(&rule.name).iter();
    let (first, second) = (values.next(), values.next());
    let problem = match (first, second) {
        (None, _) => Some((None, required(rule.check))),
        (Some(_), Some(_)) => Some((None, "must appear once".to_string())),
        (Some(v), None) => {
            let text = v.to_str().ok();
            let ok = match rule.check {
                HeaderCheck::JsonMediaType => text.is_some_and(is_json_media_type),
            };
            (!ok).then(|| (text.map(cap), expectation(rule.check)))
        }
    };
    if let Some((value, description)) = problem {
        sink.push(|| Violation::new(rule.display.clone(), value, description));
    }
}

fn required(check: HeaderCheck) -> String {
    match check {
        HeaderCheck::JsonMediaType => "required: application/json; charset=utf-8".into(),
    }
}

fn expectation(check: HeaderCheck) -> String {
    match check {
        HeaderCheck::JsonMediaType => {
            "must be application/json, optionally with \"; charset=utf-8\"".into()
        }
    }
}

/// `application/json`, with at most one `charset=utf-8` parameter (quoted
/// or not), any case, spaces around `;` and `=` allowed.
pub(crate) fn is_json_media_type(value: &str) -> bool {
    // What the SDKs send, without the general parse.
    if value == "application/json; charset=utf-8" || value == "application/json" {
        return true;
    }
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return false;
    }
    let mut charset = false;
    for param in parts {
        let Some((name, val)) = param.split_once('=') else {
            return false;
        };
        let val = val.trim();
        let val = val
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(val);
        if charset
            || !name.trim().eq_ignore_ascii_case("charset")
            || !val.eq_ignore_ascii_case("utf-8")
        {
            return false;
        }
        charset = true;
    }
    true
}

/// The body: empty (or only whitespace) passes unless required; otherwise
/// UTF-8 JSON of the rule's shape. A syntax error replaces whatever the
/// walk found before it: the position of the error is what the caller needs.
fn check_body(rule: &BodyRule, body: &[u8], unknown_fields: UnknownFields, sink: &mut Sink) {
    if body.iter().all(u8::is_ascii_whitespace) {
        if rule.required {
            sink.push(|| Violation::new("body".into(), None, "required: a JSON object".into()));
        }
        return;
    }
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(e) => {
            let at = e.valid_up_to();
            let (line, column) = line_column(&body[..at]);
            sink.push(|| {
                Violation::new(
                    "body".into(),
                    None,
                    format!(
                        "must be UTF-8: invalid byte at offset {at} (line {line}, column {column})"
                    ),
                )
            });
            return;
        }
    };
    let mark = sink.mark();
    let mut de = serde_json::Deserializer::from_str(text);
    let mut walk = Walk {
        sink: &mut *sink,
        unknown_fields,
    };
    let seed = ValueSeed {
        shape: &rule.shape,
        path: &Path::Body,
        walk: &mut walk,
        keep: false,
    };
    if let Err(e) = seed.deserialize(&mut de).and_then(|_| de.end()) {
        sink.reset(mark);
        sink.push(|| Violation::new("body".into(), None, syntax_description(&e)));
    }
}

/// 1-based line and column (in bytes) just after `prefix`.
fn line_column(prefix: &[u8]) -> (usize, usize) {
    let line = 1 + prefix.iter().filter(|&&b| b == b'\n').count();
    let column = 1 + prefix.iter().rev().take_while(|&&b| b != b'\n').count();
    (line, column)
}
