//! What every Turnstile service does around its work, apart from telemetry
//! (which is `turnstile-telemetry`'s): read its settings and stop on a
//! signal.
//!
//! - [`settings`]: each service declares its settings as one clap struct
//!   whose every field is both a `--flag` and an environment variable
//!   (`TURNSTILE_...`, or the conventional `DATABASE_URL`), so
//!   `--help` lists them all with their defaults. This module holds what
//!   the services share: durations written with their unit (`250ms`,
//!   `5s`), the error of a setting that breaks a rule, and parsing that
//!   names the variable a bad value came from.
//! - [`stop_on_signal`]: SIGTERM or Ctrl-C cancels the service's shutdown
//!   token, so it finishes in-flight work and leaves cleanly;
//!   [`run_until_signal`] is the last step of every `main`.
//! - [`secret`]: a connection URL that shows where it points and never
//!   its password, so settings derive `Debug` safely.
//! - [`failpoints`]: fault injection in the builds that have it, refused
//!   in the others.

pub mod failpoints;
pub mod secret;
pub mod settings;
mod signal;

pub use signal::{run_until_signal, stop_on_signal};
