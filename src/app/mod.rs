//! The composition root: the only code that turns a [`Config`](crate::config::Config)
//! into running parts, starts them and stops them.

pub mod demo;
mod runtime;

pub use runtime::{Runtime, StartError};
