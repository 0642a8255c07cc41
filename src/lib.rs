//! feishu-gateway: an HTTP gateway in front of the Feishu (Lark) Open
//! Platform API. Internal services point their base URL at it instead of
//! `https://open.feishu.cn`; it authenticates them with gateway keys,
//! validates their requests, keeps every app under Feishu's quotas, injects
//! a tenant_access_token it manages itself, and forwards to Feishu.
//!
//! # Layout
//!
//! The modules, in the order a request meets them. Arrows point down only:
//! a module imports the ones below it in this table, never one above (the
//! test `tests/layout.rs` checks there is no import loop).
//!
//! | module                | concern                                                     |
//! |-----------------------|-------------------------------------------------------------|
//! | [`app`]               | the composition root: `Config` → parts; start, serve, drain, live reload (generations swapped whole); `demo` |
//! | [`config`]            | the TOML file, read in one pass that reports every problem  |
//! | [`server`]            | downstream: listen backlog and connection limits, accept loop, TLS, the tower stack, request ids, admin listener (readiness, status page) |
//! | [`proxy`]             | THE REQUEST PATH: the named phases, one file per group; gateway answers |
//! | [`events`]            | events in: webhook intake and the long connection per app (WebSocket, frames, acks, reconnects, a Redis lease); de-duplicated, fanned out to subscribers, signed; card callbacks |
//! | [`auth`]              | who is calling: client keys (several while rotating), allow lists, signed SDK tokens |
//! | [`store_apps`]        | store apps (ISV): tenants, their quota scopes, event callbacks |
//! | [`tokens`]            | credentials toward Feishu: token slots, their sources, app_tickets |
//! | [`endpoints`]         | what the gateway knows per endpoint: catalog, limits, contracts |
//! | [`validate`]          | the contract engine: a request checked, every violation named |
//! | [`quota`]             | admission: the GCRA planner, local and Redis backends       |
//! | [`budget`]            | the monthly call budget: counted calls per app or budget group, Asia/Shanghai months |
//! | [`upstream`]          | the transport to Feishu: pool (hyper HTTP/1.1 and HTTP/2), connector, failures |
//! | [`redis_connection`]  | the replica's one Redis connection (quotas, tickets)        |
//! | [`observe`]           | Prometheus metrics, the log lines, distributed tracing (OTLP) |
//! | [`workers`]           | thread-per-core connection workers (server and upstream pools) |
//! | [`feishu`]            | the platform's vocabulary: codes, paths, headers, answers, idempotency keys |
//! | [`secret`]            | values that are never printed                               |
//!
//! The simulated Feishu used by `demo`, the tests and the load harness is the
//! workspace crate `feishu-sim` (`crates/feishu-sim`), outside this API.
//! Design notes: `docs/phases.md` (the request path with its early answers,
//! replay and failure edges) and `docs/quota.md` (the quota proofs).
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod budget;
pub mod config;
pub mod endpoints;
pub mod events;
pub mod feishu;
pub mod observe;
pub mod proxy;
pub mod quota;
pub mod redis_connection;
pub mod secret;
pub mod server;
pub mod store_apps;
pub mod tokens;
pub mod upstream;
pub mod validate;
pub mod workers;
