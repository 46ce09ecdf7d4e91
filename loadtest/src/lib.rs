//! Turnstile's load generator and benchmarks.
//!
//! Everything here runs against real services on loopback and stops by
//! itself: `lock-bench` measures the lock library alone (and the `rslock`
//! crate beside it, for comparison); later subcommands drive the whole claim
//! pipeline. Numbers go to the terminal or, with `--json`, as one JSON object
//! on the last line for scripts to collect.

pub mod flash_sale;
pub mod latency;
pub mod lock_bench;
