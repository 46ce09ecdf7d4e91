//! Whether a refusal told the truth, key by key.
//!
//! The API's contract for a refusal is about the request, not the key: a
//! `429` or `503` means *this request* recorded nothing, and an earlier
//! accepted request with the same `Idempotency-Key` stands. A `504
//! outcome-unknown` (or a `408`, a `500`, an answer that never came) means
//! the request may or may not have recorded the claim. A `2xx` means the
//! claim is recorded, by this request or an earlier one with the key (a
//! replay is answered like a first acceptance).
//!
//! So a key's claim row breaks the contract when no request that could have
//! recorded it was under way when it was recorded: the row was written by a
//! request that was refused. Every answer the key got counts, not only the
//! last: a key refused with `503`, whose row that request wrote anyway, and
//! then answered `202` on a retry (a replay of that row) broke it too.
//!
//! The row's `accepted_at` is Postgres' `now()` in the statement that wrote
//! it, which runs between the request's send and its answer. A request that
//! may have recorded the row accounts for it when the row was written
//! - after its send and before its answer, for a `2xx`;
//! - after its send, for an unknown outcome (a commit whose answer was lost
//!   may land after the client gave up).
//!
//! Client and Postgres share this machine's clock; [`CLOCK_SLACK`] allows
//! for reading it two ways. A shopper waits at least half a second before a
//! retry, so the slack cannot attribute a refused request's row to the
//! retry that followed it: the check is exact for this generator.

use std::time::Duration;

use hyper::StatusCode;

/// What an answer says about whether its request recorded the claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promise {
    /// `2xx`: the claim is recorded, by this request or an earlier one.
    Recorded,
    /// `429`, `503` or another refusal before recording (`4xx` but `408`):
    /// this request recorded nothing.
    Nothing,
    /// `504`, `408`, another `5xx`, or no answer: it may have recorded it.
    Unknown,
}

impl Promise {
    /// The promise of an answer with `status`, or of no answer (`None`).
    pub fn of(status: Option<StatusCode>) -> Self {
        match status {
            Some(s) if s.is_success() => Self::Recorded,
            Some(StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT) => Self::Unknown,
            Some(s) if s.is_client_error() || s == StatusCode::SERVICE_UNAVAILABLE => Self::Nothing,
            _ => Self::Unknown,
        }
    }
}

/// Whether `status` is one of the refusals the contract speaks of (`429`,
/// `503`): the keys that got one are the keys checked.
pub fn is_refusal(status: StatusCode) -> bool {
    matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE)
}

/// How far apart the client's clock and Postgres' may read; below the
/// shortest wait before a retry (half a second).
pub const CLOCK_SLACK: Duration = Duration::from_millis(200);

/// One request of a key and its answer, on the load's clock (from its start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAnswer {
    /// When the request was due to be sent (it left then or later).
    pub sent: Duration,
    /// When its answer came (or the client gave up).
    pub answered: Duration,
    pub promise: Promise,
}

/// The requests one arrival sent under its key, in order, when at least one
/// of them was refused.
#[derive(Debug, Clone, Default)]
pub struct RefusedKey {
    /// The arrival's number: its key is `{run_id}-{arrival}`.
    pub arrival: u64,
    pub answers: Vec<KeyAnswer>,
}

impl RefusedKey {
    /// Whether a claim row recorded at `recorded` (on the load's clock) was
    /// recorded by a refused request: no request that may have recorded it
    /// was under way then. See the module's documentation.
    pub fn taken_by_refusal(&self, recorded: Duration) -> bool {
        let after = |sent: Duration| recorded + CLOCK_SLACK >= sent;
        !self.answers.iter().any(|a| match a.promise {
            Promise::Recorded => after(a.sent) && recorded <= a.answered + CLOCK_SLACK,
            Promise::Unknown => after(a.sent),
            Promise::Nothing => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn key(answers: &[(u64, u64, Promise)]) -> RefusedKey {
        RefusedKey {
            arrival: 7,
            answers: answers
                .iter()
                .map(|&(sent, answered, promise)| KeyAnswer {
                    sent: ms(sent),
                    answered: ms(answered),
                    promise,
                })
                .collect(),
        }
    }

    #[test]
    fn statuses_promise_what_the_contract_says() {
        for (status, promise) in [
            (200, Promise::Recorded),
            (202, Promise::Recorded),
            (429, Promise::Nothing),
            (503, Promise::Nothing),
            (422, Promise::Nothing),
            (401, Promise::Nothing),
            (408, Promise::Unknown),
            (504, Promise::Unknown),
            (500, Promise::Unknown),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(Promise::of(Some(status)), promise, "{status}");
        }
        assert_eq!(Promise::of(None), Promise::Unknown);
        assert!(is_refusal(StatusCode::TOO_MANY_REQUESTS) && is_refusal(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!is_refusal(StatusCode::GATEWAY_TIMEOUT));
    }

    #[test]
    fn a_row_under_a_key_only_ever_refused_was_taken_by_a_refusal() {
        let refused = key(&[(0, 20, Promise::Nothing), (1_000, 1_010, Promise::Nothing)]);
        assert!(refused.taken_by_refusal(ms(10)));
        assert!(refused.taken_by_refusal(ms(5_000)));
    }

    #[test]
    fn a_row_written_by_the_accepted_retry_is_fine() {
        let retried = key(&[(0, 20, Promise::Nothing), (1_000, 1_030, Promise::Recorded)]);
        assert!(!retried.taken_by_refusal(ms(1_015)));
    }

    #[test]
    fn a_retry_answered_202_does_not_excuse_the_refusal_that_wrote_the_row() {
        // Refused with 503, but that request's row was written (during it,
        // or just after its answer); the retry was a replay of it.
        let replayed = key(&[(0, 20, Promise::Nothing), (1_000, 1_030, Promise::Recorded)]);
        assert!(replayed.taken_by_refusal(ms(10)));
        assert!(replayed.taken_by_refusal(ms(400)));
    }

    #[test]
    fn an_unknown_outcome_may_account_for_a_row_written_after_its_answer() {
        let unknown = key(&[(0, 20, Promise::Nothing), (1_000, 11_000, Promise::Unknown)]);
        assert!(!unknown.taken_by_refusal(ms(1_500)));
        assert!(!unknown.taken_by_refusal(ms(12_000)));
        assert!(unknown.taken_by_refusal(ms(10)));
    }

    #[test]
    fn a_refused_retry_of_an_accepted_key_leaves_it_standing() {
        let accepted_first = key(&[(0, 20, Promise::Recorded), (1_000, 1_010, Promise::Nothing)]);
        assert!(!accepted_first.taken_by_refusal(ms(10)));
    }

    #[test]
    fn the_clocks_may_disagree_by_the_slack() {
        let accepted = key(&[(0, 20, Promise::Nothing), (1_000, 1_030, Promise::Recorded)]);
        assert!(!accepted.taken_by_refusal(ms(1_000) - CLOCK_SLACK));
        assert!(!accepted.taken_by_refusal(ms(1_030) + CLOCK_SLACK));
        assert!(accepted.taken_by_refusal(ms(1_031) + CLOCK_SLACK));
    }
}
