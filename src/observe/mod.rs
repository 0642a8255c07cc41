//! What the gateway tells its operators: Prometheus metrics, the log lines,
//! and (with `[tracing]`) its part of the callers' traces.

pub mod logging;
pub mod metrics;
pub mod trace;
