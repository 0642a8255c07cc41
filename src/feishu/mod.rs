//! The Feishu Open Platform's vocabulary, with no I/O: the codes its answers
//! carry (and which of them are transient), the paths and headers the gateway
//! treats specially, the endpoints' idempotency keys, and the shape of its
//! answers. Every code and path is written here once; the rest of the
//! gateway names them.
//!
//! (The simulated Feishu in `crates/feishu-sim` keeps its own copy on
//! purpose: a fake that imported the gateway's table would agree with it by
//! construction.)

pub mod answer;
pub mod codes;
pub mod idempotency;
pub mod paths;
pub mod throttle;

pub use answer::{read_code, scan_code, FeishuError};
