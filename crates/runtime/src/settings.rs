//! What the services' settings share.
//!
//! A service declares its settings as a `#[derive(clap::Parser)]` struct
//! whose every field has `#[arg(long, env = "TURNSTILE_...", default_value
//! = ...)]` and a doc comment, so one declaration gives the flag, the
//! variable, the default and the `--help` line. Then:
//!
//! - durations take [`duration`] as their `value_parser`: `250ms`, `5s`;
//! - [`parse`] reads the process's arguments and environment like
//!   `Parser::parse`, except that a malformed value taken from the
//!   environment is reported under its variable's name (clap names only
//!   the flag, which nobody passed), and a variable set to the empty
//!   string counts as unset (a compose file's `${X:-}` keeps the default);
//! - rules between settings, or floors, are checked after parsing by the
//!   service's own `validate()`, which answers [`InvalidSetting`].

use std::{
    ffi::{OsStr, OsString},
    fmt::Display,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{
    Command, Parser,
    error::{ContextKind, ContextValue, ErrorKind},
};

use crate::secret::{ConnectionUrl, SecretPath};

/// Parses a duration written with its unit, in humantime's syntax: `250ms`,
/// `5s`, `1m 30s`, or a bare `0`. For `#[arg(value_parser =
/// turnstile_runtime::settings::duration)]`.
///
/// Any other bare number is refused rather than guessed at: a value kept
/// from the variables that took milliseconds (`5000`) then stops the
/// service with a message instead of meaning something else.
pub fn duration(value: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(value.trim())
}

/// Writes a duration the way [`duration`] reads it (`100ms`, `5s`), for
/// messages about settings.
pub fn show_duration(value: Duration) -> impl Display {
    humantime::format_duration(value)
}

/// A setting that parsed but breaks a rule: below its floor, or at odds
/// with another setting. The message names the variable, so a bad
/// deployment fails at start-up with a clear cause.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value} is invalid: {problem}")]
pub struct InvalidSetting {
    /// The variable.
    pub name: &'static str,
    /// Its value, as it would be written.
    pub value: String,
    /// What is wrong.
    pub problem: String,
}

impl InvalidSetting {
    /// `name` has `value`, which breaks a rule: `problem`.
    pub fn new(name: &'static str, value: impl Display, problem: impl Into<String>) -> Self {
        Self {
            name,
            value: value.to_string(),
            problem: problem.into(),
        }
    }

    /// [`InvalidSetting::new`] for a duration, written with its unit.
    pub fn duration(name: &'static str, value: Duration, problem: impl Into<String>) -> Self {
        Self::new(name, show_duration(value), problem)
    }
}

/// Where the claims database is: one declaration for every service that
/// reads or writes claims (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseSettings {
    /// The claims database (PostgreSQL); the first service to start runs
    /// the migrations.
    #[arg(
        id = "database_url",
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/turnstile",
        hide_env_values = true
    )]
    pub url: ConnectionUrl,
}

/// Where the stock cache is: one declaration for the API, which reads it,
/// and the worker, which writes it (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct CacheSettings {
    /// The stock cache (Redis); with the redis lock backend, the lock store
    /// too unless TURNSTILE_LOCK_REDIS_URL names another.
    #[arg(
        id = "redis_url",
        long = "redis-url",
        env = "TURNSTILE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub url: ConnectionUrl,
}

/// TLS for every Redis connection of a service with `rediss://` URLs (the
/// cache's and the lock's): the CA the servers' certificates chain to, and
/// a client certificate for servers that ask for one.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RedisTlsSettings {
    /// The certificate authority (a PEM file) that Redis servers'
    /// certificates must chain to, for rediss:// URLs [default: the
    /// system's roots]
    #[arg(id = "redis_tls_ca", long = "redis-tls-ca", env = "TURNSTILE_REDIS_TLS_CA")]
    pub ca: Option<PathBuf>,

    /// A client certificate (a PEM file) for Redis servers that ask for
    /// one, with TURNSTILE_REDIS_TLS_KEY
    #[arg(
        id = "redis_tls_cert",
        long = "redis-tls-cert",
        env = "TURNSTILE_REDIS_TLS_CERT",
        requires = "redis_tls_key"
    )]
    pub cert: Option<PathBuf>,

    /// The client certificate's private key (a PEM file)
    #[arg(
        id = "redis_tls_key",
        long = "redis-tls-key",
        env = "TURNSTILE_REDIS_TLS_KEY",
        requires = "redis_tls_cert",
        hide_env_values = true
    )]
    pub key: Option<SecretPath>,
}

impl RedisTlsSettings {
    /// The variables with no default: unset, the system's roots and no
    /// client certificate.
    pub const WITHOUT_DEFAULT: [&'static str; 3] = [
        "TURNSTILE_REDIS_TLS_CA",
        "TURNSTILE_REDIS_TLS_CERT",
        "TURNSTILE_REDIS_TLS_KEY",
    ];

    /// Whether any is set.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some()
    }

    /// The client certificate and its key, when set.
    pub fn client(&self) -> Option<(&Path, &Path)> {
        Some((self.cert.as_deref()?, self.key.as_ref()?.expose()))
    }
}

/// Parses `P` from the process's arguments and environment, or prints the
/// error (or the help) and exits, as `P::parse()` does; see [`try_parse_from`].
pub fn parse<P: Parser>() -> P {
    try_parse_from(std::env::args_os()).unwrap_or_else(|error| error.exit())
}

/// Parses `P` from `args` (the first is the program's name) and the
/// process's environment, as `P::try_parse_from` does, except that:
///
/// - a variable set to the empty string counts as unset, so the default
///   applies;
/// - when a value from the environment is malformed, the error names the
///   variable instead of the flag.
pub fn try_parse_from<P, I, T>(args: I) -> Result<P, clap::Error>
where
    P: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut command = P::command().mut_args(|arg| match arg.get_env() {
        Some(name) if std::env::var_os(name).is_some_and(|value| value.is_empty()) => arg.env(None),
        _ => arg,
    });
    let mut matches = command
        .try_get_matches_from_mut(args)
        .map_err(|error| name_the_variable(error, &command))?;
    P::from_arg_matches_mut(&mut matches).map_err(|error| error.format(&mut command))
}

/// The settings of `command` that break the convention: every argument
/// (but help and version) is read from a `TURNSTILE_` variable, or from
/// `DATABASE_URL`, and has a default unless its variable is in
/// `no_default`. Empty when all is well; for each service's unit tests.
pub fn convention_breaches(command: &Command, no_default: &[&str]) -> Vec<String> {
    command
        .get_arguments()
        .filter(|arg| !matches!(arg.get_id().as_str(), "help" | "version"))
        .filter_map(|arg| {
            let Some(variable) = arg.get_env().and_then(OsStr::to_str) else {
                return Some(format!("--{} has no variable", arg.get_id()));
            };
            if !variable.starts_with("TURNSTILE_") && variable != "DATABASE_URL" {
                return Some(format!("{variable} is not a TURNSTILE_ variable"));
            }
            (arg.get_default_values().is_empty() && !no_default.contains(&variable))
                .then(|| format!("{variable} has no default"))
        })
        .collect()
}

/// Rewrites a malformed-value error whose value came from an environment
/// variable to name that variable.
fn name_the_variable(mut error: clap::Error, command: &Command) -> clap::Error {
    if !matches!(error.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation) {
        return error;
    }
    let (Some(ContextValue::String(flag)), Some(ContextValue::String(value))) =
        (error.get(ContextKind::InvalidArg), error.get(ContextKind::InvalidValue))
    else {
        return error;
    };
    // The error names the argument as `Arg`'s Display writes it.
    let Some(variable) = variable_of(command, flag) else {
        return error;
    };
    // A value given on the command line is the flag's, even with the
    // variable set too: only a value equal to the variable's came from it.
    if std::env::var_os(variable).as_deref() != Some(OsStr::new(value)) {
        return error;
    }
    let variable = variable.to_string_lossy().into_owned();
    error.insert(ContextKind::InvalidArg, ContextValue::String(variable));
    error
}

/// The environment variable of the argument written `flag`, in `command`
/// or its subcommands.
fn variable_of<'c>(command: &'c Command, flag: &str) -> Option<&'c OsStr> {
    command
        .get_arguments()
        .find(|arg| arg.to_string() == flag)
        .and_then(clap::Arg::get_env)
        .or_else(|| command.get_subcommands().find_map(|sub| variable_of(sub, flag)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn settings_off_the_convention_are_named() {
        let command = Command::new("svc")
            .arg(
                clap::Arg::new("fine")
                    .long("fine")
                    .env("TURNSTILE_FINE")
                    .default_value("1"),
            )
            .arg(clap::Arg::new("bare").long("bare"))
            .arg(
                clap::Arg::new("foreign")
                    .long("foreign")
                    .env("REDIS_URL")
                    .default_value("x"),
            )
            .arg(
                clap::Arg::new("nodefault")
                    .long("nodefault")
                    .env("TURNSTILE_NO_DEFAULT"),
            )
            .arg(clap::Arg::new("excused").long("excused").env("TURNSTILE_EXCUSED"));
        assert_eq!(
            convention_breaches(&command, &["TURNSTILE_EXCUSED"]),
            [
                "--bare has no variable",
                "REDIS_URL is not a TURNSTILE_ variable",
                "TURNSTILE_NO_DEFAULT has no default"
            ]
        );
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration(" 10ms ").unwrap(), Duration::from_millis(10));
        assert_eq!(duration("0").unwrap(), Duration::ZERO);
        let bare = duration("5000").unwrap_err().to_string();
        assert!(bare.contains("5000ms"), "{bare}");
        assert!(duration("").is_err());
    }

    #[test]
    fn durations_are_shown_as_they_are_written() {
        for written in ["100ms", "5s", "0s", "1m 30s"] {
            assert_eq!(show_duration(duration(written).unwrap()).to_string(), written);
        }
        let error = InvalidSetting::duration(
            "TURNSTILE_LOCK_TTL",
            Duration::from_millis(50),
            "must be at least 100ms",
        );
        assert_eq!(
            error.to_string(),
            "TURNSTILE_LOCK_TTL=50ms is invalid: must be at least 100ms"
        );
    }

    /// Settings read from variables cargo sets for every test process.
    #[derive(Debug, Parser)]
    struct FromCargo {
        /// The package's name, which is no number.
        #[arg(long, env = "CARGO_PKG_NAME", default_value_t = 1)]
        number: u32,
    }

    #[derive(Debug, Parser)]
    struct Unset {
        /// A duration from a variable nobody sets.
        #[arg(long, env = "TURNSTILE_RUNTIME_TEST_UNSET", default_value = "250ms", value_parser = duration)]
        wait: Duration,
    }

    #[test]
    fn a_bad_value_from_the_environment_is_named_by_its_variable() {
        let error = try_parse_from::<FromCargo, _, _>(["test"]).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("'CARGO_PKG_NAME'"), "{message}");
        assert!(message.contains("turnstile-runtime"), "{message}");
    }

    #[test]
    fn a_bad_value_on_the_command_line_is_named_by_its_flag() {
        let message = try_parse_from::<FromCargo, _, _>(["test", "--number", "x"])
            .unwrap_err()
            .to_string();
        assert!(message.contains("--number"), "{message}");
        assert!(!message.contains("CARGO_PKG_NAME"), "{message}");
    }

    #[test]
    fn defaults_and_flags_parse() {
        assert_eq!(
            try_parse_from::<Unset, _, _>(["test"]).unwrap().wait,
            Duration::from_millis(250)
        );
        let given = try_parse_from::<Unset, _, _>(["test", "--wait", "2s"]).unwrap();
        assert_eq!(given.wait, Duration::from_secs(2));
        let message = try_parse_from::<Unset, _, _>(["test", "--wait", "2"])
            .unwrap_err()
            .to_string();
        assert!(message.contains("2ms"), "{message}");
    }
}
