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

/// What the gateway checks before it forwards a request to a catalog route.
#[derive(Debug, Clone)]
pub struct Contract {
    /// Path parameters, by the name they have in the route template.
    pub params: Vec<Param>,
    /// Headers the request must carry.
    pub headers: Vec<HeaderRule>,
    /// The request body.
    pub body: BodyRule,
    /// Whether body fields the contract does not list are let through
    /// (Feishu ignores them) or refused.
    pub unknown_fields: UnknownFields,
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
    /// Per field: the sibling its [`Presence::RequiredWhen`] reads, and its
    /// slot among the conditional fields.
    sources: Vec<Option<(usize, usize)>>,
    /// Per field: bit `j` set when sibling `j`'s condition reads this field.
    dependents: Vec<u32>,
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
    /// [`MAX_FIELDS`], a name appears twice, or a condition names a field
    /// that is not a sibling.
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
        let mut dependents = vec![0u32; fields.len()];
        for (j, source) in sources.iter().enumerate() {
            if let Some((i, _)) = source {
                dependents[*i] |= 1 << j;
            }
        }
        Ok(Object {
            fields,
            sources,
            dependents,
        })
    }

    /// The fields, in contract order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    /// For a conditional field `i`: the sibling whose value decides whether
    /// it is required, and its slot (below [`MAX_CONDITIONAL`]).
    pub(crate) fn source(&self, i: usize) -> Option<(usize, usize)> {
        self.sources[i]
    }

    /// The fields (as bits) whose condition reads field `i`.
    pub(crate) fn dependents(&self, i: usize) -> u32 {
        self.dependents[i]
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
}

impl Field {
    /// A field that must be present.
    pub fn required(name: &str, shape: Shape) -> Field {
        Field {
            name: name.into(),
            shape,
            presence: Presence::Required,
            default: None,
        }
    }

    /// A field that may be absent.
    pub fn optional(name: &str, shape: Shape) -> Field {
        Field {
            name: name.into(),
            shape,
            presence: Presence::Optional,
            default: None,
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
        }
    }

    /// The same field, with the value assumed when it is absent.
    pub fn with_default(mut self, value: &str) -> Field {
        self.default = Some(value.into());
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
