//! The contract of a `multipart/form-data` upload, and its check as the
//! form streams by.
//!
//! A [`FormContract`] names the text fields an upload must or may carry
//! (each with the form of its value) and its one file part (with its size
//! limit). A [`FormCheck`] is fed the parts in the order they arrive (a text
//! field's whole value, which the caller reads bounded by
//! [`MAX_TEXT_BYTES`]; the file part's byte count chunk by chunk) and says
//! as early as it can what is wrong:
//!
//! - a text field with a wrong value, a known field given twice, or the
//!   file part over its limit: at once;
//! - an empty file part: when the part ends;
//! - a missing field or file part: only at the end of the form (a field may
//!   follow the file part; curl `-F` keeps the order it is given).
//!
//! The parsing of the multipart body itself (boundaries, part headers) is
//! not here: the proxy drives a well-kept parser (`multer`) and reports what
//! it yields. This file knows nothing of bytes on the wire, only of parts.

use super::violation::{cap, Sink, Violation, Violations};
use crate::feishu::codes;

/// Longest text field value read (bytes). A longer value of a known field is
/// a violation; an unknown field's value is skipped unread.
pub const MAX_TEXT_BYTES: usize = 4096;

/// The form of an upload: its text fields and its file part.
#[derive(Debug, Clone)]
pub struct FormContract {
    /// The text fields the contract knows, in no particular order. Others
    /// pass unread (Feishu ignores them).
    pub fields: Vec<FormField>,
    /// The file part.
    pub file: FilePart,
}

/// A text field of a form.
#[derive(Debug, Clone)]
pub struct FormField {
    /// The part's name (`Content-Disposition: form-data; name="…"`).
    pub name: &'static str,
    /// Whether the form must carry it.
    pub required: bool,
    /// The form of its value.
    pub value: FieldValue,
}

impl FormField {
    /// A field the form must carry.
    pub fn required(name: &'static str, value: FieldValue) -> FormField {
        FormField {
            name,
            required: true,
            value,
        }
    }

    /// A field the form may carry.
    pub fn optional(name: &'static str, value: FieldValue) -> FormField {
        FormField {
            name,
            required: false,
            value,
        }
    }
}

/// The form of a text field's value (UTF-8 in every case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValue {
    /// Any text that is not empty.
    NonEmpty,
    /// One of these values, exactly.
    OneOf(&'static [&'static str]),
    /// A whole number, zero or more, in ASCII digits (`size`, `seq`,
    /// `duration`).
    Count,
}

/// The file part of a form.
#[derive(Debug, Clone)]
pub struct FilePart {
    /// The part's name (`image`, `file`).
    pub name: &'static str,
    /// Most bytes the file may have (Feishu's limit for the endpoint).
    pub max_bytes: u64,
}

/// A form checked as it streams: feed it the parts in order, ask
/// [`FormCheck::failed`] after each, and [`FormCheck::finish`] at the end.
#[derive(Debug)]
pub struct FormCheck<'c> {
    contract: &'c FormContract,
    sink: Sink,
    /// The code of the answer: that of the first violation found.
    code: Option<i64>,
    /// Bit `i` set once field `i` of the contract was seen.
    seen: u64,
    /// The file part's bytes so far, while it is open.
    file: Option<u64>,
    /// The file part was seen (opened).
    file_seen: bool,
}

impl<'c> FormCheck<'c> {
    /// A check of a form against `contract`.
    ///
    /// # Panics
    ///
    /// When the contract lists more than 64 fields.
    pub fn new(contract: &'c FormContract) -> FormCheck<'c> {
        assert!(
            contract.fields.len() <= 64,
            "a form lists at most 64 fields"
        );
        FormCheck {
            contract,
            sink: Sink::default(),
            code: None,
            seen: 0,
            file: None,
            file_seen: false,
        }
    }

    fn push(&mut self, code: i64, field: &str, value: Option<String>, description: String) {
        self.code.get_or_insert(code);
        let field = cap(field);
        self.sink.push(|| Violation::new(field, value, description));
    }

    /// True when the part named `name` is the file part.
    pub fn is_file(&self, name: &str) -> bool {
        name == self.contract.file.name
    }

    /// True when `name` is a text field the contract knows (its value is
    /// worth reading).
    pub fn knows(&self, name: &str) -> bool {
        self.contract.fields.iter().any(|f| f.name == name)
    }

    /// A text field and its whole value; `truncated` when the value was
    /// longer than [`MAX_TEXT_BYTES`] and only that much was read. Unknown
    /// fields pass.
    pub fn text(&mut self, name: &str, value: &[u8], truncated: bool) {
        let Some(i) = self.contract.fields.iter().position(|f| f.name == name) else {
            return;
        };
        let field = &self.contract.fields[i];
        if self.seen & (1 << i) != 0 {
            self.push(codes::INVALID_PARAM, name, None, "must appear once".into());
            return;
        }
        self.seen |= 1 << i;
        let rule = field.value;
        if truncated {
            self.push(
                codes::INVALID_PARAM,
                name,
                None,
                format!("must be at most {MAX_TEXT_BYTES} bytes"),
            );
            return;
        }
        let Ok(text) = std::str::from_utf8(value) else {
            self.push(
                codes::INVALID_PARAM,
                name,
                None,
                "must be UTF-8 text".into(),
            );
            return;
        };
        let problem = match rule {
            FieldValue::NonEmpty => text.is_empty().then(|| "must not be empty".to_string()),
            FieldValue::OneOf(values) => (!values.contains(&text)).then(|| {
                let list: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
                format!("must be one of {}", list.join(", "))
            }),
            FieldValue::Count => {
                (text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| "must be a whole number of at most 19 digits".to_string())
            }
        };
        if let Some(description) = problem {
            self.push(codes::INVALID_PARAM, name, Some(cap(text)), description);
        }
    }

    /// The file part opens.
    pub fn file_start(&mut self) {
        if self.file_seen {
            let name = self.contract.file.name;
            self.push(codes::INVALID_PARAM, name, None, "must appear once".into());
            return;
        }
        self.file_seen = true;
        self.file = Some(0);
    }

    /// `n` more bytes of the file part. Over the limit is a violation at
    /// once (Feishu's 234006), reported once.
    pub fn file_bytes(&mut self, n: usize) {
        let Some(so_far) = self.file.as_mut() else {
            return;
        };
        let before = *so_far;
        *so_far = so_far.saturating_add(n as u64);
        let max = self.contract.file.max_bytes;
        if before <= max && *so_far > max {
            let name = self.contract.file.name;
            self.push(
                codes::UPLOAD_TOO_LARGE,
                name,
                None,
                format!("must be at most {max} bytes"),
            );
        }
    }

    /// The file part ends: an empty file is a violation (Feishu's 234010).
    pub fn file_end(&mut self) {
        if self.file.take() == Some(0) {
            let name = self.contract.file.name;
            self.push(codes::UPLOAD_EMPTY, name, None, "must not be empty".into());
        }
    }

    /// A violation of the form as a whole (`body`), e.g. from the parser.
    pub fn broken(&mut self, description: String) {
        self.push(codes::INVALID_PARAM, "body", None, description);
    }

    /// The violation of a form that cannot be read as one (`body`: what is
    /// wrong with it).
    pub fn broken_form(description: &str) -> Violations {
        Violations::new(
            vec![Violation::new(
                "body".into(),
                None,
                format!("is not a complete multipart/form-data body: {description}"),
            )],
            0,
            codes::INVALID_PARAM,
        )
    }

    /// The violation of an upload whose `Content-Type` is not
    /// `multipart/form-data` with a boundary (`value`: what it was).
    pub fn bad_content_type(value: Option<&str>) -> Violations {
        let description = match value {
            None => "required: multipart/form-data with a boundary",
            Some(_) => "must be multipart/form-data with a boundary",
        };
        Violations::new(
            vec![Violation::new(
                "Content-Type".into(),
                value.map(cap),
                description.into(),
            )],
            0,
            codes::INVALID_PARAM,
        )
    }

    /// True once anything is wrong: the upload cannot succeed any more.
    pub fn failed(&self) -> bool {
        self.code.is_some()
    }

    /// The violations so far, if any (the form goes on).
    pub fn violations(&self) -> Option<Violations> {
        let code = self.code?;
        self.sink.snapshot().map(|v| v.with_code(code))
    }

    /// The form ended (its closing boundary was read): what is missing is
    /// known now. Every violation found, or `Ok`.
    pub fn finish(mut self) -> Result<(), Violations> {
        for (i, f) in self.contract.fields.iter().enumerate() {
            if f.required && self.seen & (1 << i) == 0 {
                self.code.get_or_insert(codes::INVALID_PARAM);
                let name = f.name.to_string();
                self.sink
                    .push(|| Violation::new(name, None, "required".into()));
            }
        }
        if !self.file_seen {
            let name = self.contract.file.name.to_string();
            self.code.get_or_insert(codes::INVALID_PARAM);
            self.sink
                .push(|| Violation::new(name, None, "required (a file part)".into()));
        }
        let code = self.code.unwrap_or(codes::INVALID_PARAM);
        self.sink.finish(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> FormContract {
        FormContract {
            fields: vec![FormField::required(
                "image_type",
                FieldValue::OneOf(&["message", "avatar"]),
            )],
            file: FilePart {
                name: "image",
                max_bytes: 10,
            },
        }
    }

    #[test]
    fn a_complete_form_passes() {
        let c = image();
        let mut f = FormCheck::new(&c);
        f.text("image_type", b"message", false);
        f.text("unknown", b"whatever", false);
        f.file_start();
        f.file_bytes(10);
        f.file_end();
        assert!(!f.failed());
        assert_eq!(f.finish(), Ok(()));
    }

    #[test]
    fn a_field_after_the_file_counts() {
        let c = image();
        let mut f = FormCheck::new(&c);
        f.file_start();
        f.file_bytes(3);
        f.file_end();
        f.text("image_type", b"avatar", false);
        assert_eq!(f.finish(), Ok(()));
    }

    #[test]
    fn a_wrong_value_fails_at_once_and_names_the_field() {
        let c = image();
        let mut f = FormCheck::new(&c);
        f.text("image_type", b"photo", false);
        assert!(f.failed());
        let v = f.violations().unwrap();
        assert_eq!(v.code(), codes::INVALID_PARAM);
        assert_eq!(v.list()[0].field, "image_type");
        assert_eq!(v.list()[0].value.as_deref(), Some("photo"));
        assert_eq!(
            v.list()[0].description,
            r#"must be one of "message", "avatar""#
        );
    }

    #[test]
    fn missing_parts_are_known_at_the_end() {
        let c = image();
        let f = FormCheck::new(&c);
        let v = f.finish().unwrap_err();
        let fields: Vec<&str> = v.list().iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["image_type", "image"]);
        assert_eq!(v.code(), codes::INVALID_PARAM);
    }

    #[test]
    fn file_size_and_emptiness_use_feishus_upload_codes() {
        let c = image();
        let mut f = FormCheck::new(&c);
        f.text("image_type", b"message", false);
        f.file_start();
        f.file_bytes(6);
        assert!(!f.failed());
        f.file_bytes(5);
        assert!(f.failed(), "over the limit at once, before the part ends");
        f.file_bytes(5);
        let v = f.violations().unwrap();
        assert_eq!(v.code(), codes::UPLOAD_TOO_LARGE);
        assert_eq!(v.list().len(), 1, "reported once");
        assert_eq!(v.list()[0].description, "must be at most 10 bytes");

        let mut f = FormCheck::new(&c);
        f.text("image_type", b"message", false);
        f.file_start();
        f.file_end();
        let v = f.finish().unwrap_err();
        assert_eq!(v.code(), codes::UPLOAD_EMPTY);
        assert_eq!(v.list()[0].field, "image");
    }

    #[test]
    fn repeated_long_or_malformed_values_are_refused() {
        let c = FormContract {
            fields: vec![
                FormField::required("size", FieldValue::Count),
                FormField::optional("file_name", FieldValue::NonEmpty),
            ],
            file: FilePart {
                name: "file",
                max_bytes: 100,
            },
        };
        let mut f = FormCheck::new(&c);
        f.text("size", b"12a", false);
        f.text("size", b"12", false);
        f.text("file_name", b"", false);
        let v = f.violations().unwrap();
        let got: Vec<(&str, &str)> = v
            .list()
            .iter()
            .map(|v| (v.field.as_str(), v.description.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("size", "must be a whole number of at most 19 digits"),
                ("size", "must appear once"),
                ("file_name", "must not be empty"),
            ]
        );
        let mut f = FormCheck::new(&c);
        f.text("file_name", &[0xff, 0xfe], false);
        f.text("size", b"1", true);
        let v = f.violations().unwrap();
        assert_eq!(v.list()[0].description, "must be UTF-8 text");
        assert_eq!(v.list()[1].description, "must be at most 4096 bytes");
    }
}
