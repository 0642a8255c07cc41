//! The contract of one endpoint, as plain data: path parameters, required
//! headers and the shape of the JSON body.
//!
//! A contract is a small tree of [`Shape`]s. It says what a request must look
//! like, not how to check it: the walk over the body lives in `json.rs`,
//! the path and header checks in `request.rs`.

use http::header::{HeaderName, CONTENT_TYPE};

/// Most fields one [`Object`] shape may list (the walk keeps one bit per
/// field).
pub const MAX_FIELDS: usize = 32;

/// Most [`Presence::RequiredWhen`] fields one [`Object`] shape may list (the
/// walk keeps a slot on the stack for each).
pub const MAX_CONDITIONAL: usize = 8;

/// Most [`LengthCap`]s the fields of one [`Object`] shape may carry (the
/// walk keeps a slot on the stack for each).
pub const MAX_CAPS: usize = 8;

/// What the gateway checks before it forwards a request to a catalog route.
#[derive(Debug, Clone)]
pub struct Contract {
    /// Path parameters, by the name they have in the route template.
    pub params: Vec<Param>,
    /// Query parameters.
    pub query: Vec<QueryParam>,
    /// Headers the request must carry.
    pub headers: Vec<HeaderRule>,
    /// The request body.
    pub body: BodyRule,
    /// Whether body fields the contract does not list are let through
    /// (Feishu ignores them) or refused.
    pub unknown_fields: UnknownFields,
    /// The `code` of the 400 answer: the one Feishu itself uses for invalid
    /// parameters on this endpoint (232001 for a chat's top notice, 230001
    /// for messages), unless the first violation has a code of its own
    /// ([`LengthCap::code`]).
    pub code: i64,
}

impl Contract {
    /// The same contract with `unknown_fields` set.
    pub fn with_unknown_fields(mut self, unknown_fields: UnknownFields) -> Contract {
        self.unknown_fields = unknown_fields;
        self
    }
}

/// What to do with a body field the contract does not list, at any depth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnknownFields {
    /// Let it through (Feishu ignores unknown fields).
    #[default]
    Allow,
    /// Refuse it, naming the field.
    Reject,
}

/// A path parameter: its raw (still percent-encoded) segment must be
/// present, non-empty, free of `/`, `..`, `%` escapes and control
/// characters, and of the form `text`.
#[derive(Debug, Clone)]
pub struct Param {
    /// Name in the route template (`chat_id` for `:chat_id`).
    pub name: String,
    /// Form of the value.
    pub text: Text,
}

impl Param {
    /// A parameter `name` holding an id: `prefix` then letters and digits.
    pub fn id(name: &str, prefix: &str) -> Param {
        Param {
            name: name.into(),
            text: Text::Id(prefix.into()),
        }
    }
}

/// A query parameter: its value, percent-decoded, must be of the form
/// `text`; it may appear once at most.
#[derive(Debug, Clone)]
pub struct QueryParam {
    /// Its name (`receive_id_type`), as decoded.
    pub name: String,
    /// Form of the value.
    pub text: Text,
    /// Whether it must be present.
    pub required: bool,
}

impl QueryParam {
    /// A parameter that must be present, of the form `text`.
    pub fn required(name: &str, text: Text) -> QueryParam {
        QueryParam {
            name: name.into(),
            text,
            required: true,
        }
    }

    /// A parameter that may be absent; when present, of the form `text`.
    pub fn optional(name: &str, text: Text) -> QueryParam {
        QueryParam {
            name: name.into(),
            text,
            required: false,
        }
    }
}

/// A header the request must carry, and what its value must be.
#[derive(Debug, Clone)]
pub struct HeaderRule {
    /// The header.
    pub name: HeaderName,
    /// Its name as written in violations (`Content-Type`).
    pub display: String,
    /// What its value must be.
    pub check: HeaderCheck,
}

impl HeaderRule {
    /// `Content-Type: application/json`, optionally `; charset=utf-8`.
    pub fn json_content_type() -> HeaderRule {
        HeaderRule {
            name: CONTENT_TYPE,
            display: "Content-Type".into(),
            check: HeaderCheck::JsonMediaType,
        }
    }
}

/// Checks of a header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderCheck {
    /// `application/json`, with at most a `charset=utf-8` parameter, any case.
    JsonMediaType,
}

/// The request body.
#[derive(Debug, Clone)]
pub struct BodyRule {
    /// Whether an empty body (or one of only whitespace) is refused. When
    /// false an empty body passes and a non-empty one must match `shape`.
    pub required: bool,
    /// The JSON the body holds.
    pub shape: Shape,
}

impl BodyRule {
    /// A body that must be present and match `shape`.
    pub fn required(shape: Shape) -> BodyRule {
        BodyRule {
            required: true,
            shape,
        }
    }

    /// A body that may be empty; when it is not, it must match `shape`.
    pub fn optional(shape: Shape) -> BodyRule {
        BodyRule {
            required: false,
            shape,
        }
    }
}

/// The shape of a JSON value.
#[derive(Debug, Clone)]
pub enum Shape {
    /// Any JSON value.
    Any,
    /// A string of the given form.
    String(Text),
    /// `true` or `false`.
    Bool,
    /// A string whose text is itself JSON of the inner shape (Feishu's
    /// `content`: `"{\"text\":\"hi\"}"`). The inner JSON is judged as
    /// `serde_json` judges a body, with unknown fields always allowed.
    JsonText(Box<Shape>),
    /// An array.
    Array(Box<Array>),
    /// An object.
    Object(Object),
}

impl Shape {
    /// A string equal to one of `values`.
    pub fn one_of(values: &[&str]) -> Shape {
        Shape::String(Text::OneOf(values.iter().map(|v| v.to_string()).collect()))
    }

    /// A string starting with `prefix` (so never empty).
    pub fn prefixed(prefix: &str) -> Shape {
        Shape::String(Text::Prefix(prefix.into()))
    }

    /// A string that is not empty.
    pub fn non_empty() -> Shape {
        Shape::String(Text::NonEmpty)
    }

    /// A string of at most `n` characters (Unicode scalar values).
    pub fn max_chars(n: usize) -> Shape {
        Shape::String(Text::MaxChars(n))
    }

    /// A string holding JSON of shape `inner`.
    pub fn json_text(inner: Shape) -> Shape {
        Shape::JsonText(Box::new(inner))
    }

    /// An array of at least `min_items` items, each of shape `items`.
    pub fn array(min_items: usize, items: Shape) -> Shape {
        Shape::Array(Box::new(Array { items, min_items }))
    }

    /// An object with these fields; see [`Object::new`].
    pub fn object(fields: Vec<Field>) -> Shape {
        Shape::Object(Object::new(fields))
    }
}

/// The form of a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    /// Any string, even empty.
    Any,
    /// Any string but the empty one.
    NonEmpty,
    /// At most this many characters (Unicode scalar values, not bytes),
    /// even empty.
    MaxChars(usize),
    /// Starts with this prefix (`om_`).
    Prefix(String),
    /// This prefix, then one or more ASCII letters or digits (`oc_…`).
    Id(String),
    /// One of these values (`"1"`, `"2"`).
    OneOf(Vec<String>),
}

/// An array shape.
#[derive(Debug, Clone)]
pub struct Array {
    /// Shape of every item.
    pub items: Shape,
    /// Fewest items allowed.
    pub min_items: usize,
}

/// An object shape: the fields it knows. Other fields follow the contract's
/// [`UnknownFields`].
#[derive(Debug, Clone)]
pub struct Object {
    fields: Vec<Field>,
    /// Per field, what the walk needs to know of it beside its shape (one
    /// lookup per field met).
    links: Vec<Links>,
    /// Every field's [`LengthCap`]s, in field order: (the capped field, its
    /// index among the field's caps). Cap `k` is bit `k` in [`Links`].
    caps: Vec<(usize, usize)>,
}

/// How a field is tied to its siblings.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Links {
    /// The sibling its [`Presence::RequiredWhen`] reads, and its slot among
    /// the conditional fields.
    pub(crate) source: Option<(usize, usize)>,
    /// Bit `j` set when sibling `j`'s condition reads this field.
    pub(crate) dependents: u32,
    /// Bit `k` set when cap `k` measures this field.
    pub(crate) measured_by: u8,
    /// Bit `k` set when cap `k`'s condition reads this field.
    pub(crate) read_by: u8,
}

impl Object {
    /// An object with `fields`.
    ///
    /// # Panics
    /// When [`Object::try_new`] refuses them: contracts are built at start-up,
    /// and the built-in ones are covered by tests.
    pub fn new(fields: Vec<Field>) -> Object {
        match Object::try_new(fields) {
            Ok(o) => o,
            Err(e) => panic!("invalid contract: {e}"),
        }
    }

    /// An object with `fields`, refused when there are more than
    /// [`MAX_FIELDS`] or [`MAX_CAPS`], a name appears twice, a condition
    /// names a field that is not a sibling, or a [`LengthCap`] sits on a
    /// field that is not a string.
    pub fn try_new(fields: Vec<Field>) -> Result<Object, String> {
        if fields.len() > MAX_FIELDS {
            return Err(format!(
                "an object lists {} fields; at most {MAX_FIELDS}",
                fields.len()
            ));
        }
        let conditional = fields
            .iter()
            .filter(|f| matches!(f.presence, Presence::RequiredWhen { .. }))
            .count();
        if conditional > MAX_CONDITIONAL {
            return Err(format!(
                "an object lists {conditional} conditional fields; at most {MAX_CONDITIONAL}"
            ));
        }
        for (i, f) in fields.iter().enumerate() {
            if fields[..i].iter().any(|g| g.name == f.name) {
                return Err(format!("field {:?} is listed twice", f.name));
            }
            if let Presence::RequiredWhen { field, .. } = &f.presence {
                if field == &f.name || !fields.iter().any(|g| &g.name == field) {
                    return Err(format!(
                        "field {:?} depends on {field:?}, which is not a sibling",
                        f.name
                    ));
                }
            }
        }
        let index = |name: &str| fields.iter().position(|g| g.name == name);
        let mut caps = Vec::new();
        for (i, f) in fields.iter().enumerate() {
            if !f.caps.is_empty() && !matches!(f.shape, Shape::String(_) | Shape::JsonText(_)) {
                return Err(format!(
                    "field {:?} has a length cap but is not a string",
                    f.name
                ));
            }
            for (n, cap) in f.caps.iter().enumerate() {
                match index(&cap.when) {
                    Some(j) if j != i => caps.push((i, j, n)),
                    _ => {
                        return Err(format!(
                            "field {:?} is capped by {:?}, which is not a sibling",
                            f.name, cap.when
                        ))
                    }
                }
            }
        }
        if caps.len() > MAX_CAPS {
            return Err(format!(
                "an object carries {} length caps; at most {MAX_CAPS}",
                caps.len()
            ));
        }
        let mut links = vec![Links::default(); fields.len()];
        for (k, &(i, j, _)) in caps.iter().enumerate() {
            links[i].measured_by |= 1 << k;
            links[j].read_by |= 1 << k;
        }
        let mut slot = 0;
        let sources: Vec<Option<(usize, usize)>> = fields
            .iter()
            .map(|f| match &f.presence {
                Presence::RequiredWhen { field, .. } => {
                    slot += 1;
                    index(field).map(|i| (i, slot - 1))
                }
                _ => None,
            })
            .collect();
        for (j, source) in sources.iter().enumerate() {
            links[j].source = *source;
            if let Some((i, _)) = source {
                links[*i].dependents |= 1 << j;
            }
        }
        Ok(Object {
            fields,
            links,
            caps: caps.into_iter().map(|(i, _, n)| (i, n)).collect(),
        })
    }

    /// The fields, in contract order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    /// How field `i` is tied to its siblings: for a conditional field, the
    /// sibling whose value decides whether it is required and its slot
    /// (below [`MAX_CONDITIONAL`]); the conditions and caps that read it.
    pub(crate) fn links(&self, i: usize) -> Links {
        self.links[i]
    }

    /// Cap `k`: the field it measures and the cap itself.
    pub(crate) fn cap(&self, k: usize) -> (usize, &LengthCap) {
        let (i, n) = self.caps[k];
        (i, &self.fields[i].caps[n])
    }
}

/// A field of an object shape.
#[derive(Debug, Clone)]
pub struct Field {
    /// The JSON key.
    pub name: String,
    /// Shape of its value.
    pub shape: Shape,
    /// When it must be present.
    pub presence: Presence,
    /// The value Feishu assumes when the field is absent, as seen by
    /// [`Presence::RequiredWhen`] conditions on siblings.
    pub default: Option<String>,
    /// Most bytes its (string) value may have, by a sibling's value.
    pub caps: Vec<LengthCap>,
}

impl Field {
    /// A field that must be present.
    pub fn required(name: &str, shape: Shape) -> Field {
        Field {
            name: name.into(),
            shape,
            presence: Presence::Required,
            default: None,
            caps: Vec::new(),
        }
    }

    /// A field that may be absent.
    pub fn optional(name: &str, shape: Shape) -> Field {
        Field {
            name: name.into(),
            shape,
            presence: Presence::Optional,
            default: None,
            caps: Vec::new(),
        }
    }

    /// A field that is required, and checked, only when the sibling `field`
    /// is the string `equals`; otherwise it is ignored.
    pub fn required_when(name: &str, shape: Shape, field: &str, equals: &str) -> Field {
        Field {
            name: name.into(),
            shape,
            presence: Presence::RequiredWhen {
                field: field.into(),
                equals: equals.into(),
            },
            default: None,
            caps: Vec::new(),
        }
    }

    /// The same field, with the value assumed when it is absent.
    pub fn with_default(mut self, value: &str) -> Field {
        self.default = Some(value.into());
        self
    }

    /// The same field, with one more length cap.
    pub fn with_cap(mut self, cap: LengthCap) -> Field {
        self.caps.push(cap);
        self
    }
}

/// The most bytes a string field may have when a sibling has one of some
/// values (Feishu: `content` at most 30 KB when `msg_type` is `"post"` or
/// `"interactive"`). The length is that of the string's text as decoded
/// (escapes resolved), in UTF-8 bytes; whatever the order of the two fields.
/// When the sibling is absent or is not one of the values, the cap does not
/// apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LengthCap {
    /// The sibling whose value selects the cap (`msg_type`).
    pub when: String,
    /// The values of that sibling for which the cap holds.
    pub values: Vec<String>,
    /// The most bytes allowed.
    pub max_bytes: usize,
    /// Feishu's own code for this problem (230025 "content too long"), for
    /// the answer when it is the first violation; `None`: the contract's.
    pub code: Option<i64>,
}

impl LengthCap {
    /// At most `max_bytes` when the sibling `when` is one of `values`.
    pub fn when(when: &str, values: &[&str], max_bytes: usize) -> LengthCap {
        LengthCap {
            when: when.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
            max_bytes,
            code: None,
        }
    }

    /// The same cap, answered with Feishu's `code` when it comes first.
    pub fn with_code(mut self, code: i64) -> LengthCap {
        self.code = Some(code);
        self
    }
}

/// When a field must be present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// May be absent; checked when present.
    Optional,
    /// Must be present.
    Required,
    /// Must be present, and is checked, only when the sibling `field` is the
    /// string `equals` (or is absent and defaults to it). When the sibling
    /// has another value, or is itself invalid, the field is ignored.
    RequiredWhen {
        /// The sibling field.
        field: String,
        /// The value that makes this field required.
        equals: String,
    },
}
