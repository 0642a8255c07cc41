//! feishu-gateway: an HTTP gateway in front of the Feishu (Lark) Open Platform.
#![forbid(unsafe_code)]

pub mod config;
pub mod secret;
