//! What every quota backend shares: its kind, what it does while its store
//! is away, and what `/readyz` shows of it.

use serde::Serialize;

/// Where quota state lives (`[quota] backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// In this process (the default): right for one replica.
    #[default]
    Local,
    /// In Redis, shared by every replica.
    Redis,
}

impl BackendKind {
    /// The config and metrics spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Redis => "redis",
        }
    }
}

/// What a replica does while Redis is unreachable or slow (`[quota] fail`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailMode {
    /// Limit locally to 1/replicas of every quota (the default).
    #[default]
    Local,
    /// Refuse limited requests: 503 `quota-backend-unavailable`.
    Closed,
    /// Forward limited requests without a limit.
    Open,
}

impl FailMode {
    /// The config and metrics spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Local => "local",
            FailMode::Closed => "closed",
            FailMode::Open => "open",
        }
    }
}

/// What `/readyz` shows of the quota backend.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BackendStatus {
    /// `local` or `redis`.
    pub backend: &'static str,
    /// `local` (the local backend), or `shared`, `degraded` or `healing`.
    pub state: &'static str,
    /// The fail mode (`local`, `closed`, `open`), for `redis`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail: Option<&'static str>,
    /// Where Redis is, without credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Seconds in the current state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_secs: Option<u64>,
    /// The last failure, while not shared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl BackendStatus {
    /// The in-process backend's status: always `local`.
    pub fn local() -> BackendStatus {
        BackendStatus {
            backend: "local",
            state: "local",
            fail: None,
            target: None,
            since_secs: None,
            last_error: None,
        }
    }
}
