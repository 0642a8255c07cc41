//! Where secrets come from: the process environment and files.
//!
//! Config loading reads them only through [`Environment`], so tests hand in a
//! [`MapEnv`] instead of calling `set_var` (which races between tests).

use std::collections::HashMap;
use std::path::Path;

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
