//! What a refused request is told: every problem found, each naming its
//! field, in Feishu's `field_violations` shape.

use std::fmt;

use serde_json::json;

/// Longest `value` echoed back, in characters; longer ones end in `…`.
pub const MAX_VALUE_CHARS: usize = 64;

/// Most violations kept; further ones are only counted.
pub const MAX_VIOLATIONS: usize = 50;

/// One problem with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Where: a path parameter (`chat_id`), a header (`Content-Type`), the
    /// body as a whole (`body`) or a body field (`chat_top_notice[0].message_id`).
    pub field: String,
    /// The offending value, capped at [`MAX_VALUE_CHARS`]; `None` when there
    /// is nothing worth echoing (a missing field, an object or array).
    pub value: Option<String>,
    /// What is wrong, as a phrase that follows the field name.
    pub description: String,
    /// Feishu's own code for this kind of problem (230025 "content too
    /// long"), if it has one; otherwise the contract's code applies.
    pub code: Option<i64>,
}

impl Violation {
    pub(crate) fn new(field: String, value: Option<String>, description: String) -> Violation {
        Violation {
            field,
            value,
            description,
            code: None,
        }
    }

    pub(crate) fn with_code(mut self, code: Option<i64>) -> Violation {
        self.code = code;
        self
    }
}

/// Every problem found with a request (at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violations {
    list: Vec<Violation>,
    omitted: usize,
    /// The `code` of the answer: 232001, or Feishu's own code for the
    /// problem where it has one (an upload too large: 234006).
    code: i64,
}

impl Violations {
    pub(crate) fn new(list: Vec<Violation>, omitted: usize, code: i64) -> Violations {
        debug_assert!(!list.is_empty() || omitted > 0);
        Violations {
            list,
            omitted,
            code,
        }
    }

    /// The same violations, answered with `code` instead of the contract's.
    pub fn with_code(mut self, code: i64) -> Violations {
        self.code = code;
        self
    }

    /// The `code` of the answer: the first violation's own code if it has
    /// one (so `code` and `msg` speak of the same problem), else the
    /// contract's (Feishu's invalid-parameter code for the endpoint).
    pub fn code(&self) -> i64 {
        self.list.first().and_then(|v| v.code).unwrap_or(self.code)
    }

    /// The violations kept, in the order found: path, headers, body.
    pub fn list(&self) -> &[Violation] {
        &self.list
    }

    /// How many more were found but not kept (beyond [`MAX_VIOLATIONS`]).
    pub fn omitted(&self) -> usize {
        self.omitted
    }

    /// The `msg` of the answer: one sentence naming the first problem.
    pub fn msg(&self) -> String {
        let mut msg = match self.list.first() {
            Some(v) => format!(
                "feishu-gateway: invalid request: {}: {}",
                v.field, v.description
            ),
            None => "feishu-gateway: invalid request".to_string(),
        };
        let more = self.list.len().saturating_sub(1) + self.omitted;
        if more > 0 {
            let s = if more == 1 { "" } else { "s" };
            msg.push_str(&format!(
                " (and {more} more problem{s}, see error.field_violations)"
            ));
        }
        msg
    }

    /// The JSON body of the answer (400, `X-Gateway-Error: invalid-request`):
    /// Feishu's shape with [`Violations::code`] and every violation kept.
    pub fn to_json(&self) -> serde_json::Value {
        let violations: Vec<serde_json::Value> = self
            .list
            .iter()
            .map(|v| match &v.value {
                Some(value) => json!({
                    "field": v.field, "value": value, "description": v.description
                }),
                None => json!({ "field": v.field, "description": v.description }),
            })
            .collect();
        json!({
            "code": self.code(),
            "msg": self.msg(),
            "error": { "field_violations": violations },
        })
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg())
    }
}

impl std::error::Error for Violations {}

/// `s`, cut to [`MAX_VALUE_CHARS`] characters with a trailing `…`.
pub(crate) fn cap(s: &str) -> String {
    match s.char_indices().nth(MAX_VALUE_CHARS) {
        None => s.to_string(),
        Some((end, _)) => format!("{}…", &s[..end]),
    }
}

/// Collects violations while a request is checked. Keeps at most
/// [`MAX_VIOLATIONS`] and counts the rest, so a hostile body of a million
/// wrong items costs a counter, not a million strings.
///
/// Violations found inside a field whose condition turns out false (a
/// `message_id` before its `action_type`) are taken back with
/// [`Sink::discard`]; `alive` counts kept and unkept ones alike so the
/// verdict stays exact either way.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    list: Vec<Violation>,
    alive: usize,
}

/// A point in a [`Sink`]'s history.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    stored: usize,
    alive: usize,
}

/// The violations added between a [`Mark`] and a later point.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    start: u32,
    end: u32,
    alive: u32,
}

impl Span {
    pub(crate) fn start(&self) -> usize {
        self.start as usize
    }
}

impl Sink {
    /// Adds a violation; `make` runs only when it is kept.
    pub(crate) fn push(&mut self, make: impl FnOnce() -> Violation) {
        self.alive += 1;
        if self.list.len() < MAX_VIOLATIONS {
            self.list.push(make());
        }
    }

    pub(crate) fn mark(&self) -> Mark {
        Mark {
            stored: self.list.len(),
            alive: self.alive,
        }
    }

    pub(crate) fn since(&self, from: Mark) -> Span {
        // Bodies are at most a few MiB, so counts fit in u32; saturate
        // rather than wrap if they ever do not.
        let narrow = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Span {
            start: narrow(from.stored),
            end: narrow(self.list.len()),
            alive: narrow(self.alive - from.alive),
        }
    }

    /// Takes back the violations of `span`. Spans of one object must be
    /// discarded from the last to the first.
    pub(crate) fn discard(&mut self, span: Span) {
        self.list.drain(span.start as usize..span.end as usize);
        self.alive -= span.alive as usize;
    }

    /// Forgets everything added since `to`.
    pub(crate) fn reset(&mut self, to: Mark) {
        self.list.truncate(to.stored);
        self.alive = to.alive;
    }

    /// What was found so far, if anything, without ending the check.
    pub(crate) fn snapshot(&self) -> Option<Violations> {
        (self.alive > 0).then(|| {
            Violations::new(
                self.list.clone(),
                self.alive - self.list.len(),
                crate::feishu::codes::INVALID_PARAM,
            )
        })
    }

    /// The verdict; `code` is the contract's, for the answer.
    pub(crate) fn finish(self, code: i64) -> Result<(), Violations> {
        if self.alive == 0 {
            Ok(())
        } else {
            let omitted = self.alive - self.list.len();
            Err(Violations::new(self.list, omitted, code))
        }
    }
}
