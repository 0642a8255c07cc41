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
//! | [`request_id`] | an id on every request and its answer (`X-Request-Id`)       |
//! | [`proxy`]     | the request lifecycle as named phases                          |
//! | [`auth`]      | client keys → client → app                                     |
//! | [`catalog`]   | the Feishu endpoints the gateway knows, as data                |
//! | [`quota`]     | per-(app[, tenant], route) quotas: GCRA planner, limiters      |
//! | [`sdk_token`] | signed gateway tokens handed to the official SDKs              |
//! | [`store`]     | store apps: app_ticket, tenants, the event endpoint             |
//! | [`validate`]  | request contracts per route, checked before any quota is spent |
//! | [`token`]     | tenant_access_token: single-flight fetch, proactive refresh    |
//! | [`events`]    | Feishu event callbacks: signature, decryption, app_ticket      |
//! | [`ticket_store`] | the latest app_ticket per store app: a file, or Redis      |
//! | [`upstream`]  | the pooled HTTPS client to Feishu, failure classes, `code` peek |
//! | [`pool`]      | upstream connections per worker, and their HTTP/1.1 client     |
//! | [`error`]     | every gateway-made answer and its status, reason and code      |
//! | [`body`]      | the response body type (held bytes or streamed upstream body)  |
//! | [`metrics`]   | Prometheus families and cached per-(app, route) handles        |
//! | [`logging`]   | the batched stdout writer and the fast access-log line         |
//! | [`admin`]     | `/healthz`, `/readyz`, `/metrics` on the admin listener        |
//! | [`server`]    | accept loop, title-cased HTTP/1 headers, graceful drain        |
//! | [`workers`]   | thread-per-core connection workers, each with its own pool     |
//! | [`tls`]       | HTTPS on the listener: rustls, ALPN, certificate reload        |
//! | [`secret`]    | values that are never printed                                  |
//! | `demo`        | `feishu-gateway demo`: simulated Feishu + gateway, offline (feature `demo`) |
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod config;
pub mod endpoints;
pub mod feishu;
pub mod observe;
pub mod proxy;
/// Per-app quotas: one GCRA per (app, route), or (app, tenant, route) for store
/// apps, derived from all of Feishu's windows.
pub mod quota;
pub mod redis_connection;
pub mod secret;
pub mod server;
pub mod store_apps;
pub mod tokens;
pub mod upstream;
pub mod validate;
pub mod workers;
