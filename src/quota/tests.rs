//! Property tests and wait-mode tests of the quota engine.
