//! feishu-gateway: an HTTP gateway in front of the Feishu (Lark) Open Platform.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod body;
pub mod catalog;
pub mod config;
pub mod error;
pub mod metrics;
pub mod proxy;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod stack;
pub mod token;
pub mod upstream;
