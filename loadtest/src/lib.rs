//! Turnstile's load generator and benchmarks.
//!
//! Everything here runs against real services on loopback and stops by
//! itself: `lock-bench` measures the lock library alone (and the `rslock`
//! crate beside it, for comparison); `lock-compare` runs every backend in
//! one process; `flash-sale` drives the whole claim pipeline. Numbers go to the terminal or, with `--json`, as one JSON object
//! on the last line for scripts to collect.

pub mod flash_sale;
pub mod latency;
pub mod lock_bench;
pub mod lock_compare;
