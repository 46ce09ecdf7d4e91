//! Turnstile's load generator and benchmarks.
//!
//! Everything here runs against real services on loopback and stops by
//! itself: `lock-bench` measures the lock library alone (and the `rslock`
//! crate beside it, for comparison); `lock-compare` runs every backend in
//! one process; `flash-sale` drives a whole flash sale through the claim
//! pipeline or, with `--mode sql-for-update`, through the
//! `SELECT ... FOR UPDATE` baseline; `compare` runs the same sale through
//! both and sets them side by side, and with `--sweep` does so at several
//! offered rates; `seed` fills the claims table with decided claims, to
//! measure a sale against a large table. Numbers go to the terminal or, with
//! `--json`, as one JSON object on the last line for scripts to collect;
//! `--report FILE.html` also writes a self-contained HTML report with
//! per-second charts (`report` renders one from saved JSON). `chaos` runs a
//! sale on private services, injects a fault and checks the same invariants.
//!
//! Every request to the API carries an API key of one tenant
//! ([`credentials`]): given with `--api-key` and `--admin-key`, or minted
//! for the run in the database it audits.

pub mod chaos;
pub mod connections;
pub mod credentials;
pub mod flash_sale;
pub mod generator_cpu;
pub mod html_report;
pub mod latency;
pub mod lock_bench;
pub mod lock_compare;
pub mod progress;
pub mod refusals;
pub mod sale_compare;
pub mod sale_sweep;
pub mod sale_table;
pub mod seed;
pub mod svg_chart;
pub mod sweep_chart;
pub mod timeline;
