//! What the gateway tells its operators: Prometheus metrics and log lines.

pub mod logging;
pub mod metrics;
