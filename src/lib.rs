//! feishu-gateway: an HTTP gateway in front of the Feishu (Lark) Open Platform.
#![forbid(unsafe_code)]

/// Per-(app, route) quotas: one governor GCRA per key, planned so Feishu never throttles us.
pub mod quota;
