//! feishu-gateway: an HTTP gateway in front of the Feishu (Lark) Open Platform.
#![forbid(unsafe_code)]

pub mod config;
pub mod secret;
/// A simulated Feishu Open Platform for the demo, the tests and the benchmark.
pub mod sim;
