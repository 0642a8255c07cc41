//! The items of the crate under test that the tests use, in one place: a
//! module moved inside the crate is mended here, not in every test file.
//! (Each test binary uses some of them, hence the allowance.)
#![allow(unused_imports)]

pub use feishu_gateway::app::Runtime;
pub use feishu_gateway::budget::{unix_now, Month, BUDGET_KEY_TTL};
pub use feishu_gateway::config::{Config, MapEnv, Problems};
pub use feishu_gateway::events::{Accepted, EventHub, Transport};
pub use feishu_gateway::quota::{
    BackendKind, Cause, FailMode, KeySpec, Limit, Overflow, Plan, PlanPolicy, QuotaKey,
    RedisConnection, RedisQuota, RedisSettings, Window,
};
pub use feishu_gateway::secret::Secret;
pub use feishu_gateway::server::serve_with_tls;
pub use feishu_gateway::server::tls::ReloadingAcceptor;
pub use feishu_gateway::tokens::ticket_store::{
    RedisTicketStore, StoredTicket, TicketStore, TicketStoreError, MAX_TICKET_AGE,
};
pub use feishu_sim::ca::{IssuedCert, TestCa};
pub use feishu_sim::{
    callback, webhook, QuotaMode, SimApp, SimConfig, SimFeishu, SimStoreApp, StoreCallKind,
    TokenKind,
};
