//! The body walk: one streaming pass of `serde_json` over the body, steered
//! by the contract's [`Shape`]s, that records violations as it goes.
//!
//! Why streaming: the body is never built into a `serde_json::Value`. Keys
//! and strings are borrowed from the input, fields the contract does not
//! know are skipped, and nothing is allocated unless a violation is found.
//!
//! Why it still agrees with a `Value` parse: every value, even a skipped
//! one, goes through `deserialize_any` on the same deserializer, so number
//! ranges, escapes, surrogates and the recursion limit (128 levels, which
//! is what keeps 100 000 `[` from overflowing the stack) are judged exactly
//! as `serde_json::from_slice::<Value>` judges them.
//!
//! Three things need care in one pass:
//! - a condition can follow the field it governs (`message_id` before
//!   `action_type`): the field is checked when met, and its violations are
//!   discarded at the end of the object if the condition is false;
//! - a length cap can follow its field too (`content` before `msg_type`):
//!   the field's length and the sibling's verdict are kept in a few slots
//!   on the stack and compared at the end of the object;
//! - a key can appear twice: parsers disagree on which one wins, so a
//!   repeated known key is refused as ambiguous.
//!
//! A string holding JSON ([`Shape::JsonText`], Feishu's `content`) is
//! walked where it is met, by a second deserializer over the string's text
//! as `serde_json` hands it over: borrowed from the body when it has no
//! escapes, else from `serde_json`'s own buffer, which grows to the string's
//! length (so the cost is bounded by the body limit). A real `content`
//! always has escapes (`\"`), so such a check allocates that buffer, and
//! the inner deserializer's when the inner JSON has escapes of its own.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::contract::{Object, Presence, Shape, Text, UnknownFields, MAX_CAPS, MAX_CONDITIONAL};
use super::text::{quoted_list, text_problem};
use super::violation::{cap, Sink, Span, Violation};

/// Where a value sits in the body, as a chain on the stack; rendered to a
/// string only when a violation names it.
#[derive(Clone, Copy)]
pub(crate) enum Path<'a> {
    /// The body itself.
    Body,
    /// A field of an object.
    Field(&'a Path<'a>, &'a str),
    /// An item of an array.
    Index(&'a Path<'a>, usize),
    /// The JSON held by the string at this path (named like the string).
    Text(&'a Path<'a>),
}

impl Path<'_> {
    pub(crate) fn render(&self) -> String {
        let mut s = String::new();
        self.write(&mut s);
        if s.is_empty() {
            s.push_str("body");
        }
        s
    }

    fn write(&self, s: &mut String) {
        match self {
            Path::Body => {}
            Path::Field(parent, name) => {
                parent.write(s);
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(&cap(name));
            }
            Path::Index(parent, i) => {
                parent.write(s);
                if s.is_empty() {
                    s.push_str("body");
                }
                s.push_str(&format!("[{i}]"));
            }
            Path::Text(parent) => parent.write(s),
        }
    }
}

/// State shared by the whole walk.
pub(crate) struct Walk<'c> {
    pub(crate) sink: &'c mut Sink,
    pub(crate) unknown_fields: UnknownFields,
}

impl Walk<'_> {
    fn push(&mut self, path: &Path<'_>, value: Option<String>, description: String) {
        self.sink
            .push(|| Violation::new(path.render(), value, description));
    }
}

/// What the walk remembers of a value: of a string, its length in bytes
/// (a cap measures it) and its text when a sibling's condition needs it.
pub(crate) enum Seen<'de> {
    Str {
        text: Option<Cow<'de, str>>,
        len: usize,
    },
    Other,
}

/// Checks one value against `shape`.
pub(crate) struct ValueSeed<'s, 'p, 'w, 'c> {
    pub(crate) shape: &'s Shape,
    pub(crate) path: &'p Path<'p>,
    pub(crate) walk: &'w mut Walk<'c>,
    /// Keep the text of a string (a condition reads it).
    pub(crate) keep: bool,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_, '_, '_> {
    type Value = Seen<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Seen<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

/// Records that the value at `seed.path` has the wrong JSON type (`got`,
/// as named in descriptions); `text` is a scalar's text, echoed capped.
fn mismatch(seed: &mut ValueSeed<'_, '_, '_, '_>, got: &str, text: Option<String>) {
    // The body itself, and the JSON inside a string, are "a JSON object";
    // the JSON inside a string is what the string "must hold".
    let (verb, at_root) = match seed.path {
        Path::Body => ("be", true),
        Path::Text(_) => ("hold", true),
        _ => ("be", false),
    };
    let expected = expected(seed.shape, at_root);
    let description = match (seed.shape, &text) {
        // The number 1 where the string "1" is expected: say how to send it.
        (Shape::String(Text::OneOf(values)), Some(t))
            if got == "a number" && values.contains(t) =>
        {
            format!("must be a string: send \"{t}\", not the number {t}")
        }
        // The string "true" where a boolean is expected.
        (Shape::Bool, Some(t)) if got == "a string" && (t == "true" || t == "false") => {
            format!("must be a boolean: send {t}, not the string \"{t}\"")
        }
        // The object itself where its serialization is expected.
        (Shape::JsonText(_), None) => format!(
            "must be a string holding JSON, got {got}: send it serialized, e.g. \"{{\\\"text\\\":\\\"hi\\\"}}\""
        ),
        _ => format!("must {verb} {expected}, got {got}"),
    };
    seed.walk
        .push(seed.path, text.as_deref().map(cap), description);
}

fn expected(shape: &Shape, at_root: bool) -> String {
    match shape {
        Shape::Any => "any value".into(),
        Shape::String(Text::OneOf(values)) => format!("the string {}", quoted_list(values)),
        Shape::String(_) => "a string".into(),
        Shape::Bool => "a boolean".into(),
        Shape::JsonText(_) => "a string holding JSON".into(),
        Shape::Array(_) => "an array".into(),
        Shape::Object(_) if at_root => "a JSON object".into(),
        Shape::Object(_) => "an object".into(),
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_, '_, '_> {
    type Value = Seen<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Seen<'de>, E> {
        let keep = self.keep;
        self.string(s);
        Ok(Seen::Str {
            text: keep.then_some(Cow::Borrowed(s)),
            len: s.len(),
        })
    }

    fn visit_str<E>(self, s: &str) -> Result<Seen<'de>, E> {
        let keep = self.keep;
        self.string(s);
        Ok(Seen::Str {
            text: keep.then(|| Cow::Owned(s.to_string())),
            len: s.len(),
        })
    }

    fn visit_bool<E>(self, b: bool) -> Result<Seen<'de>, E> {
        if !matches!(self.shape, Shape::Bool) {
            self.scalar("a boolean", || b.to_string());
        }
        Ok(Seen::Other)
    }

    fn visit_i64<E>(self, n: i64) -> Result<Seen<'de>, E> {
        self.scalar("a number", || n.to_string());
        Ok(Seen::Other)
    }

    fn visit_u64<E>(self, n: u64) -> Result<Seen<'de>, E> {
        self.scalar("a number", || n.to_string());
        Ok(Seen::Other)
    }

    fn visit_f64<E>(self, n: f64) -> Result<Seen<'de>, E> {
        self.scalar("a number", || format!("{n:?}"));
        Ok(Seen::Other)
    }

    fn visit_unit<E>(self) -> Result<Seen<'de>, E> {
        self.scalar("null", || "null".to_string());
        Ok(Seen::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Seen<'de>, A::Error> {
        let array = match self.shape {
            Shape::Any => None,
            Shape::Array(a) => Some(a),
            _ => {
                mismatch(&mut self, "an array", None);
                None
            }
        };
        let Some(array) = array else {
            while seq.next_element::<Skip>()?.is_some() {}
            return Ok(Seen::Other);
        };
        let mut n = 0;
        loop {
            let path = Path::Index(self.path, n);
            let item = ValueSeed {
                shape: &array.items,
                path: &path,
                walk: &mut *self.walk,
                keep: false,
            };
            if seq.next_element_seed(item)?.is_none() {
                break;
            }
            n += 1;
        }
        if n < array.min_items {
            let s = if array.min_items == 1 { "" } else { "s" };
            self.walk.push(
                self.path,
                None,
                format!("must have at least {} item{s}", array.min_items),
            );
        }
        Ok(Seen::Other)
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Seen<'de>, A::Error> {
        let object = match self.shape {
            Shape::Any => None,
            Shape::Object(o) => Some(o),
            _ => {
                mismatch(&mut self, "an object", None);
                None
            }
        };
        match object {
            Some(object) => walk_object(object, self.path, self.walk, &mut map)?,
            None => while map.next_entry::<Skip, Skip>()?.is_some() {},
        }
        Ok(Seen::Other)
    }
}

impl ValueSeed<'_, '_, '_, '_> {
    fn string(mut self, s: &str) {
        match self.shape {
            Shape::Any => {}
            Shape::String(text) => {
                if let Some(problem) = text_problem(text, s) {
                    self.walk.push(self.path, Some(cap(s)), problem);
                }
            }
            Shape::JsonText(inner) => json_text(inner, s, self.path, self.walk),
            _ => mismatch(&mut self, "a string", Some(s.to_string())),
        }
    }

    fn scalar(mut self, got: &str, text: impl FnOnce() -> String) {
        if !matches!(self.shape, Shape::Any) {
            mismatch(&mut self, got, Some(text()));
        }
    }
}

/// The JSON inside the string `s` (at `path`), walked against `inner` by a
/// deserializer of its own: unknown fields are always allowed there (the
/// contract's setting speaks of the body's fields), and a syntax error
/// replaces whatever the inner walk found before it.
///
/// Never inlined: the walk recurses through here, and keeping this call out
/// of line leaves the rest of the walk inlined much as it was before.
#[inline(never)]
fn json_text(inner: &Shape, s: &str, path: &Path<'_>, walk: &mut Walk<'_>) {
    let mark = walk.sink.mark();
    let mut de = serde_json::Deserializer::from_str(s);
    let mut inside = Walk {
        sink: &mut *walk.sink,
        unknown_fields: UnknownFields::Allow,
    };
    let seed = ValueSeed {
        shape: inner,
        path: &Path::Text(path),
        walk: &mut inside,
        keep: false,
    };
    if let Err(e) = seed.deserialize(&mut de).and_then(|_| de.end()) {
        walk.sink.reset(mark);
        let description = format!("must hold JSON: {}", syntax_description(&e));
        walk.push(path, Some(cap(s)), description);
    }
}

/// `invalid JSON at line 1, column 40: EOF while parsing an object`.
pub(crate) fn syntax_description(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let what = match full.rsplit_once(" at line ") {
        Some((what, _)) => what,
        None => &full,
    };
    format!(
        "invalid JSON at line {}, column {}: {what}",
        e.line(),
        e.column()
    )
}

/// The fields of one object, in one pass; presence, conditions and length
/// caps are settled at its end. Per-object state is a few bit sets (which
/// fields were seen, which conditions and caps their source's value made
/// true) and the lengths of capped strings.
fn walk_object<'de, A: MapAccess<'de>>(
    object: &Object,
    path: &Path<'_>,
    walk: &mut Walk<'_>,
    map: &mut A,
) -> Result<(), A::Error> {
    const NO_SPAN: Option<Span> = None;
    let fields = object.fields();
    let mut seen = 0u32;
    let mut active = 0u32;
    let mut spans = [NO_SPAN; MAX_CONDITIONAL];
    // Length caps: per cap, whether its sibling holds one of its values, and
    // the length of the field it measures (when that is a string).
    let mut capped = 0u8;
    let mut lens = [None::<usize>; MAX_CAPS];

    loop {
        let key = KeySeed {
            object,
            path,
            walk: &mut *walk,
        };
        let i = match map.next_key_seed(key)? {
            None => break,
            Some(Key::Unknown) => {
                map.next_value::<Skip>()?;
                continue;
            }
            Some(Key::Known(i)) => i,
        };
        let field = &fields[i];
        let fpath = Path::Field(path, &field.name);
        if seen & (1 << i) != 0 {
            walk.push(&fpath, None, "appears more than once; send it once".into());
        }
        seen |= 1 << i;
        let links = object.links(i);
        let mark = walk.sink.mark();
        let value = map.next_value_seed(ValueSeed {
            shape: &field.shape,
            path: &fpath,
            walk: &mut *walk,
            keep: links.dependents != 0 || links.read_by != 0,
        })?;
        let text = match &value {
            Seen::Str { text, .. } => text.as_deref(),
            Seen::Other => None,
        };
        for j in bits(links.dependents) {
            let holds = match (text, &fields[j].presence) {
                (Some(s), Presence::RequiredWhen { equals, .. }) => s == equals,
                // Not a string: the source has its own violation, and the
                // condition cannot be judged.
                _ => false,
            };
            active = (active & !(1 << j)) | (u32::from(holds) << j);
        }
        for k in bits(links.read_by.into()) {
            let holds = text.is_some_and(|s| object.cap(k).1.values.iter().any(|v| v == s));
            capped = (capped & !(1 << k)) | (u8::from(holds) << k);
        }
        for k in bits(links.measured_by.into()) {
            lens[k] = match &value {
                Seen::Str { len, .. } => Some(*len),
                Seen::Other => None,
            };
        }
        if let Some((_, slot)) = links.source {
            spans[slot] = Some(walk.sink.since(mark));
        }
    }

    // A condition whose source is absent reads the source's default. The
    // violations of a field whose condition is false are taken back,
    // latest span first so that the earlier ranges stay valid.
    let mut required = 0u32;
    for (j, field) in fields.iter().enumerate() {
        let holds = match (&field.presence, object.links(j).source) {
            (Presence::Optional, _) => false,
            (Presence::Required, _) => true,
            (Presence::RequiredWhen { equals, .. }, Some((src, _))) if seen & (1 << src) == 0 => {
                fields[src].default.as_deref() == Some(equals.as_str())
            }
            (Presence::RequiredWhen { .. }, _) => active & (1 << j) != 0,
        };
        if holds {
            required |= 1 << j;
            if let Some((_, slot)) = object.links(j).source {
                spans[slot] = None;
            }
        }
    }
    while let Some(last) = spans
        .iter_mut()
        .filter(|s| s.is_some())
        .max_by_key(|s| s.as_ref().map(Span::start))
    {
        if let Some(span) = last.take() {
            walk.sink.discard(span);
        }
    }
    for j in bits(required & !seen) {
        let field = &fields[j];
        let description = match &field.presence {
            Presence::RequiredWhen { field: dep, equals } => {
                format!("required when {dep} is {equals:?}")
            }
            _ => "required".to_string(),
        };
        walk.push(&Path::Field(path, &field.name), None, description);
    }
    for k in bits(capped.into()) {
        let (i, cap) = object.cap(k);
        let Some(len) = lens[k].filter(|&len| len > cap.max_bytes) else {
            continue;
        };
        let fpath = Path::Field(path, &fields[i].name);
        walk.sink.push(|| {
            let description = format!(
                "is {len} bytes; Feishu takes at most {} when {} is {}",
                size(cap.max_bytes),
                cap.when,
                quoted_list(&cap.values)
            );
            Violation::new(fpath.render(), None, description).with_code(cap.code)
        });
    }
    Ok(())
}

/// `30720 bytes (30 KB)`, or `100 bytes` below a KB or off the KB grid.
fn size(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{bytes} bytes ({} KB)", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

/// The indices of the bits set in `mask`, lowest first.
fn bits(mut mask: u32) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let i = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            i
        })
    })
}

enum Key {
    Known(usize),
    Unknown,
}

/// Reads a key, matches it against the object's fields without allocating,
/// and reports it when unknown fields are refused.
struct KeySeed<'s, 'p, 'w, 'c> {
    object: &'s Object,
    path: &'p Path<'p>,
    walk: &'w mut Walk<'c>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_, '_, '_, '_> {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_, '_, '_, '_> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E>(self, k: &str) -> Result<Key, E> {
        if let Some(i) = self.object.index_of(k) {
            return Ok(Key::Known(i));
        }
        if self.walk.unknown_fields == UnknownFields::Reject {
            self.walk
                .push(&Path::Field(self.path, k), None, "unknown field".into());
        }
        Ok(Key::Unknown)
    }
}

/// Skips any value, through `deserialize_any` so that it is judged exactly
/// as a `Value` parse would judge it (unlike `serde::de::IgnoredAny`, which serde_json
/// skims without checking number ranges, surrogates or depth).
pub(crate) struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
        d.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
}
