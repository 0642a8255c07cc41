//! Where secrets come from: the process environment and files.
//!
//! Config loading reads them only through [`Environment`], so tests hand in a
//! [`MapEnv`] instead of calling `set_var` (which races between tests). A
//! section names a secret by a pair of keys, `<base>_env` or `<base>_file`
//! ([`secret_source`]).

use std::collections::HashMap;
use std::path::Path;

use super::reader::{Problems, Section};
use crate::secret::Secret;

/// Read access to environment variables and secret files.
pub trait Environment {
    /// The value of an environment variable, if set and valid UTF-8.
    fn var(&self, name: &str) -> Option<String>;
    /// The contents of a file, as UTF-8 text.
    fn read_file(&self, path: &Path) -> std::io::Result<String>;
}

/// The real process environment and file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// An environment held in memory, for tests and the demo. Files are read
/// from the real file system.
#[derive(Debug, Default, Clone)]
pub struct MapEnv {
    vars: HashMap<String, String>,
}

impl MapEnv {
    /// An empty environment.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a variable (builder style).
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }
    /// Adds a variable.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(name.into(), value.into());
    }
}

impl Environment for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// Reads a secret given as `<base>_env` (the name of an environment
/// variable) or `<base>_file` (a path), exactly one, trimmed and non-empty.
/// `others` names further keys that could stand in for the pair, for the
/// message when neither is set.
pub(super) fn secret_source<'a>(
    s: &mut Section<'a>,
    env_key: &'a str,
    file_key: &'a str,
    others: &[&str],
    env: &dyn Environment,
    p: &mut Problems,
) -> Option<Secret> {
    let from_env = s.string(env_key, p);
    let from_file = s.string(file_key, p);
    match (from_env, from_file) {
        (Some(var), None) => match env.var(var) {
            Some(v) if !v.trim().is_empty() => Some(Secret::new(v.trim().to_string())),
            Some(_) => {
                p.push(
                    s.key(env_key),
                    format!("environment variable {var} is empty"),
                );
                None
            }
            None => {
                p.push(
                    s.key(env_key),
                    format!("environment variable {var} is not set"),
                );
                None
            }
        },
        (None, Some(path)) => match env.read_file(Path::new(path)) {
            Ok(v) if !v.trim().is_empty() => Some(Secret::new(v.trim().to_string())),
            Ok(_) => {
                p.push(s.key(file_key), format!("file {path} is empty"));
                None
            }
            Err(e) => {
                p.push(s.key(file_key), format!("cannot read {path}: {e}"));
                None
            }
        },
        (Some(_), Some(_)) => {
            p.push(
                s.key(env_key),
                format!("give only one of `{env_key}` and `{file_key}`"),
            );
            None
        }
        (None, None) => {
            let mut choices = vec![format!("`{env_key}`"), format!("`{file_key}`")];
            choices.extend(others.iter().map(|o| format!("`{o}`")));
            p.push(
                s.key(env_key),
                format!("is required: set one of {}", choices.join(", ")),
            );
            None
        }
    }
}
