//! Events from Feishu. On this branch only the long connection
//! ([`long_connection`]); the events pipeline (intake, dedupe, fan-out)
//! comes with the `events` branch, which owns this file.

pub mod long_connection;
