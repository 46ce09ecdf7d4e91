//! The error answers of the `/v1` operations, as an OpenAPI document states
//! them: every one `application/problem+json` with the [`Problem`] schema,
//! and the headers that come with it (`Retry-After` on 429, 503 and 504,
//! `WWW-Authenticate` on 401).
//!
//! Each kind of operation names one set in its `#[utoipa::path]`
//! (`responses(..., ReadErrors)`), so which statuses a route can answer is
//! written once, here, beside the errors that produce them, for every
//! service that serves this contract:
//! - every `/v1` operation passes [`crate::auth::authenticate`] (401, 403,
//!   429), may outlive the request deadline (408), may find a dependency
//!   failing (503), and answers 500 for a bug;
//! - a JSON body adds what [`crate::extract::JsonBody`] refuses (400, 408,
//!   413, 415, 422);
//! - a read by path adds 404, a create 409, and a claim its headers (400),
//!   admission's load shedding (429) and a commit whose outcome could not
//!   be known in time (504).

use std::collections::BTreeMap;

use utoipa::{
    IntoResponses, ToSchema,
    openapi::{
        ContentBuilder, Ref, RefOr, Response, ResponseBuilder, Type,
        header::HeaderBuilder,
        schema::{ObjectBuilder, Schema},
    },
};

use crate::problem::Problem;

/// The media type of every error answer (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error answer: the problem body, and `headers` (name, description).
fn problem(description: &str, headers: &[(&str, &str, Type)]) -> RefOr<Response> {
    let mut response = ResponseBuilder::new().description(description).content(
        PROBLEM_JSON,
        ContentBuilder::new()
            // A document that uses these sets lists the schema in its components.
            .schema(Some(Ref::from_schema_name(Problem::name())))
            .build(),
    );
    for (name, about, kind) in headers {
        let schema = Schema::Object(ObjectBuilder::new().schema_type(kind.clone()).build());
        response = response.header(
            *name,
            HeaderBuilder::new().schema(schema).description(Some(*about)).build(),
        );
    }
    RefOr::T(response.build())
}

const RETRY_AFTER: (&str, &str, Type) = ("Retry-After", "Seconds to wait before trying again", Type::Integer);

/// The ticket of a claim refused for load.
const TICKET: (&str, &str, Type) = (
    "Turnstile-Ticket",
    "On a refusal for load (`/problems/overloaded`) of a request with an `Idempotency-Key`: the claim's \
     place in line, signed over the tenant, the key and the first attempt's time. Send it back unchanged with \
     the retry (same key, same body): the claim then waits for a slot ahead of every claim first sent later. \
     `Retry-After` is the expected wait for the claims ahead. A forged, expired (2 minutes by default) or \
     another key's ticket is ignored",
    Type::String,
);

/// Which operation a set describes, for the answers whose causes differ.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Create,
    Claim,
}

fn errors(kind: Kind) -> BTreeMap<String, RefOr<Response>> {
    let mut answers = BTreeMap::new();
    let mut add = |status: u16, response: RefOr<Response>| {
        answers.insert(status.to_string(), response);
    };
    add(
        401,
        problem(
            "No API key, or one that is malformed, unknown or revoked (`/problems/unauthenticated`)",
            &[(
                "WWW-Authenticate",
                "`Bearer realm=\"turnstile\"`, with `error=\"invalid_token\"` when a key was sent",
                Type::String,
            )],
        ),
    );
    add(
        403,
        problem(
            match kind {
                Kind::Read => "`X-Tenant-Id` names a tenant the key does not belong to (`/problems/forbidden`)",
                Kind::Create => {
                    "Not an admin key, or `X-Tenant-Id` names a tenant the key does not belong to \
                     (`/problems/forbidden`)"
                }
                Kind::Claim => {
                    "Not a claim key, or `X-Tenant-Id` names a tenant the key does not belong to \
                     (`/problems/forbidden`)"
                }
            },
            &[],
        ),
    );
    add(
        408,
        problem(
            match kind {
                Kind::Read => "The request took longer than the server allows (`/problems/request-timeout`)",
                Kind::Create => {
                    "The body did not arrive within 2 s (`/problems/body-timeout`), or the request took \
                     longer than the server allows (`/problems/request-timeout`) and may have taken effect"
                }
                Kind::Claim => {
                    "The body did not arrive within 2 s (`/problems/body-timeout`), or the request took \
                     longer than the server allows (`/problems/request-timeout`) and the claim may have been \
                     recorded: a retry with the same `Idempotency-Key` tells"
                }
            },
            &[],
        ),
    );
    add(
        429,
        problem(
            if kind == Kind::Claim {
                "Overloaded (`/problems/overloaded`), or the key's or the user's rate is exceeded \
                 (`/problems/rate-limited`). This request recorded nothing, and an earlier accepted request \
                 with the same `Idempotency-Key` stands"
            } else {
                "The key's rate is exceeded (`/problems/rate-limited`); nothing was done"
            },
            if kind == Kind::Claim {
                &[RETRY_AFTER, TICKET]
            } else {
                &[RETRY_AFTER]
            },
        ),
    );
    add(500, problem("A bug (`/problems/internal`)", &[]));
    add(
        503,
        problem(
            if kind == Kind::Claim {
                "A dependency is failing or its circuit is open (`/problems/unavailable`). This request \
                 recorded nothing, and an earlier accepted request with the same `Idempotency-Key` stands"
            } else {
                "A dependency is failing or its circuit is open (`/problems/unavailable`)"
            },
            &[RETRY_AFTER],
        ),
    );
    if kind == Kind::Read {
        add(
            404,
            problem(
                "It does not exist in the key's tenant, or its id cannot exist (`/problems/not-found`)",
                &[],
            ),
        );
        return answers;
    }
    add(
        400,
        problem(
            if kind == Kind::Claim {
                "The body is not JSON (`/problems/malformed-json`), or `Idempotency-Key` is missing \
                 (`/problems/missing-idempotency-key`) or malformed (`/problems/invalid-header`)"
            } else {
                "The body is not JSON (`/problems/malformed-json`)"
            },
            &[],
        ),
    );
    add(
        413,
        problem(
            "The body is larger than the server allows (`/problems/payload-too-large`)",
            &[],
        ),
    );
    add(
        415,
        problem(
            "The body is not `application/json` (`/problems/unsupported-media-type`)",
            &[],
        ),
    );
    add(
        422,
        problem(
            if kind == Kind::Claim {
                "The body breaks the schema or a rule (`/problems/invalid-request`), names a coupon or SKU \
                 that does not exist (`/problems/unknown-resource`), or the `Idempotency-Key` was used \
                 with another request (`/problems/idempotency-key-reused`)"
            } else {
                "The body breaks the schema or a rule (`/problems/invalid-request`)"
            },
            &[],
        ),
    );
    if kind == Kind::Create {
        add(409, problem("It exists already (`/problems/already-exists`)", &[]));
    }
    if kind == Kind::Claim {
        add(
            504,
            problem(
                "Outcome unknown (`/problems/outcome-unknown`): the claim's commit was sent but its answer \
                 was lost, and it could not be read back in time. The claim may or may not be recorded; \
                 retry with the same `Idempotency-Key`, which tells",
                &[RETRY_AFTER],
            ),
        );
    }
    answers
}

/// The errors of a read by path (`GET /v1/claims/{claim_id}`,
/// `GET /v1/coupons/{code}`, `GET /v1/skus/{sku}`).
#[derive(Debug)]
pub struct ReadErrors;

impl IntoResponses for ReadErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors(Kind::Read)
    }
}

/// The errors of creating a coupon or SKU (`POST /v1/coupons`,
/// `POST /v1/skus`).
#[derive(Debug)]
pub struct CreateErrors;

impl IntoResponses for CreateErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors(Kind::Create)
    }
}

/// The errors of `POST /v1/claims`.
#[derive(Debug)]
pub struct ClaimErrors;

impl IntoResponses for ClaimErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors(Kind::Claim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses<T: IntoResponses>() -> Vec<String> {
        T::responses().into_keys().collect()
    }

    #[test]
    fn each_set_lists_the_statuses_its_operations_answer() {
        assert_eq!(
            statuses::<ReadErrors>(),
            ["401", "403", "404", "408", "429", "500", "503"]
        );
        assert_eq!(
            statuses::<CreateErrors>(),
            [
                "400", "401", "403", "408", "409", "413", "415", "422", "429", "500", "503"
            ]
        );
        assert_eq!(
            statuses::<ClaimErrors>(),
            [
                "400", "401", "403", "408", "413", "415", "422", "429", "500", "503", "504"
            ]
        );
    }

    #[test]
    fn every_error_is_a_problem_and_the_waits_say_how_long() {
        for (status, response) in ClaimErrors::responses().into_iter().chain(ReadErrors::responses()) {
            let RefOr::T(response) = response else {
                panic!("{status}: a reference")
            };
            assert_eq!(response.content.keys().collect::<Vec<_>>(), [PROBLEM_JSON], "{status}");
            let retry_after = response.headers.contains_key("Retry-After");
            assert_eq!(
                retry_after,
                ["429", "503", "504"].contains(&status.as_str()),
                "{status}"
            );
        }
    }
}
