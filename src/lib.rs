//! feishu-gateway: an HTTP gateway in front of the Feishu (Lark) Open
//! Platform API. Internal services point their base URL at it instead of
//! `https://open.feishu.cn`; it authenticates them with gateway keys, injects
//! a tenant_access_token it manages itself, and forwards to Feishu.
//!
//! # Layout
//!
//! Where each concern lives:
//!
//! | module        | concern                                                        |
//! |---------------|----------------------------------------------------------------|
//! | [`config`]    | the TOML file, checked in one pass that reports every problem  |
//! | [`runtime`]   | building the gateway from a config, start and graceful stop     |
//! | [`stack`]     | the tower layers of the main listener, in one place            |
//! | [`proxy`]     | the request lifecycle as named phases                          |
//! | [`auth`]      | client keys → client → app                                     |
//! | [`catalog`]   | the Feishu endpoints the gateway knows, as data                |
//! | [`validate`]  | request contracts per route, checked before any quota is spent |
//! | [`token`]     | tenant_access_token: single-flight fetch, proactive refresh    |
//! | [`upstream`]  | the pooled HTTPS client to Feishu, failure classes, `code` peek |
//! | [`error`]     | every gateway-made answer and its status, reason and code      |
//! | [`body`]      | the response body type (held bytes or streamed upstream body)  |
//! | [`metrics`]   | Prometheus families and cached per-(app, route) handles        |
//! | [`admin`]     | `/healthz`, `/readyz`, `/metrics` on the admin listener        |
//! | [`server`]    | accept loop, title-cased HTTP/1 headers, graceful drain        |
//! | [`secret`]    | values that are never printed                                  |
//! | [`sim`]       | a simulated Feishu for the demo, the tests and the benchmarks  |
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
/// A simulated Feishu Open Platform for the demo, the tests and the benchmark.
pub mod sim;
pub mod stack;
pub mod token;
pub mod upstream;
pub mod validate;
