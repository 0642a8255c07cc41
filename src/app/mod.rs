//! The composition root: the only code that turns a [`Config`](crate::config::Config)
//! into running parts, starts them and stops them.

mod build;
#[cfg(feature = "demo")]
pub mod demo;
mod reload;
mod runtime;

pub use build::{load_config, tls_acceptor};
pub use reload::{effective, kept_apps, restart_only, Live, ReloadError, Reloaded};
pub use runtime::{Runtime, StartError};
