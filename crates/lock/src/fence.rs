//! Fencing tokens and the storage-side check that makes them matter.
//!
//! A lease alone cannot protect a write: its holder may pause (GC, SIGSTOP, a
//! slow disk) past its expiry and then write as if it still held the lock.
//! Every lease therefore carries a [`FencingToken`] that is strictly greater
//! than every token issued before it for the same resource, and the storage
//! that receives the write refuses any token that is not newer than the last
//! one it accepted ([`FenceCheck`]). Correctness then rests on the storage's
//! own atomic compare, not on clocks or on the lock service.

use std::fmt;

/// A token issued with a lease; greater tokens were issued later.
///
/// The value is opaque apart from its order. For the Redis backend it starts
/// from the server clock in microseconds so that it keeps increasing even when
/// Redis loses its data (see the crate docs for the exact guarantee).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a raw token value, as read back from storage.
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The raw value, for storing next to the data it guards.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The raw value as a signed 64-bit integer, for SQL `BIGINT` columns.
    ///
    /// Tokens are below `i64::MAX` for the next 290 000 years of server clock
    /// microseconds; a larger value saturates instead of wrapping negative,
    /// so a corrupted token can never sort before a valid one.
    pub fn as_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a write was refused by [`FenceCheck::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stale fencing token {presented}: storage already accepted {last_accepted}")]
pub struct StaleFence {
    /// The token that came with the refused write.
    pub presented: FencingToken,
    /// The newest token the storage had accepted before.
    pub last_accepted: FencingToken,
}

/// The rule a storage applies to fenced writes: only strictly newer tokens.
///
/// This is the pure form of the SQL predicate `WHERE fence < $token` that the
/// claim worker uses; it exists so the rule can be property-tested and reused
/// by stores that are not SQL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FenceCheck {
    last_accepted: Option<FencingToken>,
}

impl FenceCheck {
    /// A check that has accepted nothing yet.
    pub const fn new() -> Self {
        Self { last_accepted: None }
    }

    /// The newest token accepted so far.
    pub const fn last_accepted(&self) -> Option<FencingToken> {
        self.last_accepted
    }

    /// Accepts `token` if it is strictly newer than every token accepted
    /// before, and remembers it.
    pub fn admit(&mut self, token: FencingToken) -> Result<(), StaleFence> {
        match self.last_accepted {
            Some(last) if token <= last => Err(StaleFence {
                presented: token,
                last_accepted: last,
            }),
            _ => {
                self.last_accepted = Some(token);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn equal_token_is_stale() {
        let mut check = FenceCheck::new();
        check.admit(FencingToken::new(7)).unwrap();
        let err = check.admit(FencingToken::new(7)).unwrap_err();
        assert_eq!(err.last_accepted, FencingToken::new(7));
    }

    #[test]
    fn oversized_token_saturates_in_sql() {
        assert_eq!(FencingToken::new(u64::MAX).as_i64(), i64::MAX);
        assert_eq!(FencingToken::new(42).as_i64(), 42);
    }

    proptest! {
        /// Whatever order tokens arrive in, the accepted ones strictly increase
        /// and every refusal names a token that was not newer.
        #[test]
        fn accepted_tokens_strictly_increase(tokens in proptest::collection::vec(any::<u64>(), 0..200)) {
            let mut check = FenceCheck::new();
            let mut accepted = Vec::new();
            for t in tokens {
                let t = FencingToken::new(t);
                match check.admit(t) {
                    Ok(()) => accepted.push(t),
                    Err(stale) => prop_assert!(stale.presented <= stale.last_accepted),
                }
            }
            prop_assert!(accepted.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(check.last_accepted(), accepted.last().copied());
        }
    }
}
