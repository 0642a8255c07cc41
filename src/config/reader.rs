//! A small reader over a parsed TOML table that collects EVERY problem.
//!
//! serde stops at the first error; a config checker must list them all, each
//! with the key it concerns. Each section is read key by key; what is left
//! unread at [`Section::finish`] is reported as an unknown key.

use std::fmt;
use std::time::Duration;

use toml::{Table, Value};

/// One problem in a config file: the key it concerns and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the key, e.g. `apps[0].app_secret_env`.
    pub key: String,
    /// What is wrong, in one sentence. Never contains a secret.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    /// Records a problem with `key`.
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }
    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} problem{} in the configuration:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// A table being read. Keys read through it are marked as known.
pub struct Section<'a> {
    path: String,
    table: &'a Table,
    seen: Vec<&'a str>,
}

impl<'a> Section<'a> {
    /// Starts reading `table`, whose own key is `path` (empty for the root).
    pub fn new(path: impl Into<String>, table: &'a Table) -> Self {
        Section {
            path: path.into(),
            table,
            seen: Vec::new(),
        }
    }

    /// The dotted key of `name` in this section.
    pub fn key(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.path, name)
        }
    }

    /// The raw value of `name`, marking it as known.
    pub fn value(&mut self, name: &'a str) -> Option<&'a Value> {
        self.seen.push(name);
        self.table.get(name)
    }

    /// An optional string.
    pub fn string(&mut self, name: &'a str, problems: &mut Problems) -> Option<&'a str> {
        match self.value(name)? {
            Value::String(s) => Some(s.as_str()),
            other => {
                problems.push(
                    self.key(name),
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// A required string.
    pub fn required_string(&mut self, name: &'a str, problems: &mut Problems) -> Option<&'a str> {
        let found = self.table.contains_key(name);
        let v = self.string(name, problems);
        if !found {
            problems.push(self.key(name), "is required");
        }
        v
    }

    /// An optional boolean.
    pub fn boolean(&mut self, name: &'a str, problems: &mut Problems) -> Option<bool> {
        match self.value(name)? {
            Value::Boolean(b) => Some(*b),
            other => {
                problems.push(
                    self.key(name),
                    format!("expected true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// An optional non-negative integer no larger than `max`.
    pub fn integer(&mut self, name: &'a str, max: u64, problems: &mut Problems) -> Option<u64> {
        match self.value(name)? {
            Value::Integer(i) if *i >= 0 && (*i as u64) <= max => Some(*i as u64),
            Value::Integer(i) => {
                problems.push(self.key(name), format!("{i} is out of range (0 to {max})"));
                None
            }
            other => {
                problems.push(
                    self.key(name),
                    format!("expected an integer, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// An optional duration written like `"3s"`, `"500ms"` or `"2m"`.
    pub fn duration(&mut self, name: &'a str, problems: &mut Problems) -> Option<Duration> {
        let s = self.string(name, problems)?;
        match parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(self.key(name), e);
                None
            }
        }
    }

    /// An optional sub-table, read as its own section.
    pub fn table(&mut self, name: &'a str, problems: &mut Problems) -> Option<Section<'a>> {
        let key = self.key(name);
        match self.value(name)? {
            Value::Table(t) => Some(Section::new(key, t)),
            other => {
                problems.push(key, format!("expected a table, found {}", other.type_str()));
                None
            }
        }
    }

    /// An optional array of tables (`[[name]]`), each read as its own section.
    pub fn tables(&mut self, name: &'a str, problems: &mut Problems) -> Vec<Section<'a>> {
        let key = self.key(name);
        match self.value(name) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::Table(t) => out.push(Section::new(format!("{key}[{i}]"), t)),
                        other => problems.push(
                            format!("{key}[{i}]"),
                            format!("expected a table, found {}", other.type_str()),
                        ),
                    }
                }
                out
            }
            Some(other) => {
                problems.push(
                    key,
                    format!("expected an array of tables, found {}", other.type_str()),
                );
                Vec::new()
            }
        }
    }

    /// An optional array of strings.
    pub fn strings(&mut self, name: &'a str, problems: &mut Problems) -> Option<Vec<&'a str>> {
        let key = self.key(name);
        match self.value(name)? {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.as_str()),
                        other => problems.push(
                            format!("{key}[{i}]"),
                            format!("expected a string, found {}", other.type_str()),
                        ),
                    }
                }
                Some(out)
            }
            other => {
                problems.push(
                    key,
                    format!("expected an array of strings, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// Reports every key of this section that nobody read.
    pub fn finish(self, problems: &mut Problems) {
        for name in self.table.keys() {
            if !self.seen.contains(&name.as_str()) {
                problems.push(self.key(name), "unknown key");
            }
        }
    }
}

/// Parses config text into its root table, or names where the TOML syntax
/// breaks (as `line L, column C`).
pub(super) fn toml_table(text: &str) -> Result<Table, Problems> {
    toml::from_str(text).map_err(|e| {
        let key = match e.span().map(|s| line_col(text, s.start)) {
            Some((l, c)) => format!("line {l}, column {c}"),
            None => "file".to_string(),
        };
        let mut problems = Problems::default();
        problems.push(key, format!("TOML syntax: {}", e.message()));
        problems
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// Parses `"3s"`, `"500ms"`, `"2m"`, `"1h 30m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like \"3s\" or \"500ms\" ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_type_errors_and_unknown_keys() {
        let t: Table = toml::from_str("a = 1\nb = \"x\"\nc = true\n").unwrap();
        let mut p = Problems::default();
        let mut s = Section::new("", &t);
        assert_eq!(s.string("a", &mut p), None);
        assert_eq!(s.integer("b", 10, &mut p), None);
        s.finish(&mut p);
        let keys: Vec<_> = p.0.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(p.0[2].message, "unknown key");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
    }
}
