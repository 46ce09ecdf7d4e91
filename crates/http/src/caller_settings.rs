//! The settings of [`crate::auth`] both services share, as one clap group.

use std::time::Duration;

use turnstile_runtime::settings::{InvalidSetting, duration, show_duration};

use crate::auth::{MAX_KEY_REFRESH, RateLimit};

/// How keys are reloaded, and how fast each key and each user may go.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CallerSettings {
    /// How often the API keys in force are reloaded, at most 5s: a revoked
    /// key works at most this long.
    #[arg(long, env = "TURNSTILE_KEY_REFRESH", default_value = "2s", value_parser = duration)]
    pub key_refresh: Duration,

    /// Each API key's requests per second; 0 turns the key's bucket off.
    #[arg(long, env = "TURNSTILE_KEY_RATE", default_value_t = 20_000)]
    pub key_rate: u32,

    /// Requests an API key may send at once, above its rate.
    #[arg(long, env = "TURNSTILE_KEY_BURST", default_value_t = 2_000)]
    pub key_burst: u32,

    /// Each user's claims per second, per tenant; 0 turns the user's
    /// bucket off.
    #[arg(long, env = "TURNSTILE_USER_RATE", default_value_t = 5)]
    pub user_rate: u32,

    /// Claims a user may send at once, above their rate.
    #[arg(long, env = "TURNSTILE_USER_BURST", default_value_t = 10)]
    pub user_burst: u32,
}

impl CallerSettings {
    /// Keys reloaded every `key_refresh`, and no bucket at all: for tests
    /// and benchmarks where one caller stands for many.
    pub fn unlimited(key_refresh: Duration) -> Self {
        Self {
            key_refresh,
            key_rate: 0,
            key_burst: 0,
            user_rate: 0,
            user_burst: 0,
        }
    }

    /// Each API key's bucket.
    pub fn key_limit(&self) -> RateLimit {
        RateLimit {
            per_second: self.key_rate,
            burst: self.key_burst,
        }
    }

    /// Each user's bucket.
    pub fn user_limit(&self) -> RateLimit {
        RateLimit {
            per_second: self.user_rate,
            burst: self.user_burst,
        }
    }

    /// The key refresh lies within its bounds.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.key_refresh.is_zero() || self.key_refresh > MAX_KEY_REFRESH {
            return Err(InvalidSetting::duration(
                "TURNSTILE_KEY_REFRESH",
                self.key_refresh,
                format!("must be above 0 and at most {}", show_duration(MAX_KEY_REFRESH)),
            ));
        }
        Ok(())
    }
}
