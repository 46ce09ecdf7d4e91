//! `dup-keys`: many clients resend the same idempotency keys at once, some
//! with altered bodies: one claim per key, altered copies refused with 422.

use std::sync::Arc;

use anyhow::{Result, bail};
use futures::future::BoxFuture;
use hyper::header::AUTHORIZATION;
use serde_json::json;

use super::{Fault, Findings, Run};
use crate::credentials::Credentials;

#[derive(Debug)]
pub(in crate::chaos) struct DupKeys;

impl Fault for DupKeys {
    fn inject<'a>(&'a mut self, run: &'a mut Run, findings: &'a mut Findings) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let dup = dup_keys(&run.rig.api_url, &run.postgres.url(), &run.credentials).await?;
            findings.check(
                "one_claim_per_key",
                dup.claim_rows == i64::try_from(dup.keys_accepted).unwrap_or(-1),
            );
            findings.check("never_two_bodies_per_key", dup.both_bodies_accepted == 0);
            findings.check("only_422_or_429_refusals", dup.unexpected_refusals == 0);
            findings.check("dup_keys_no_5xx", dup.errors_5xx == 0);
            Ok(format!(
                "{} keys sent {} times each at once (one copy in five with an altered body): {} keys accepted, {} claim rows",
                dup.keys, dup.copies, dup.keys_accepted, dup.claim_rows
            ))
        })
    }
}

/// What the dup-keys clients were answered, and the claims they made.
struct Outcome {
    keys: usize,
    copies: usize,
    /// Keys for which two different bodies were both accepted (must be 0).
    both_bodies_accepted: usize,
    /// Refusals other than 422 (altered body) or 429 (shed).
    unexpected_refusals: usize,
    errors_5xx: usize,
    /// Keys that got at least one 2xx, and the claim rows the database has
    /// for the coupon: equal when every key made exactly one claim.
    keys_accepted: usize,
    claim_rows: i64,
}

/// 100 keys, each sent 10 times at once; every fifth copy carries another
/// user (an altered body). Whichever body arrives first wins its key: the
/// copies with the same body get the same claim, the others 422.
async fn dup_keys(api: &str, database_url: &str, credentials: &Credentials) -> Result<Outcome> {
    const KEYS: usize = 100;
    const COPIES: usize = 10;
    let http = Arc::new(reqwest::Client::new());
    let code = format!("DUP-{:08X}", rand::random::<u32>());
    let created = http
        .post(format!("{api}/v1/coupons"))
        .header(AUTHORIZATION, credentials.admin_authorization().clone())
        .json(&json!({"code": code, "total": KEYS * 2, "per_user_limit": 1}))
        .send()
        .await?;
    if !created.status().is_success() {
        bail!("creating the dup-keys coupon: {}", created.status());
    }
    let mut sends = Vec::with_capacity(KEYS * COPIES);
    for k in 0..KEYS {
        for c in 0..COPIES {
            let altered = c % 5 == 4;
            let user = if altered { format!("x{k}") } else { format!("u{k}") };
            let (http, api, code) = (Arc::clone(&http), api.to_owned(), code.clone());
            let authorization = credentials.claim_authorization().clone();
            sends.push(tokio::spawn(async move {
                let status = http
                    .post(format!("{api}/v1/claims"))
                    .header(AUTHORIZATION, authorization)
                    .header("idempotency-key", format!("dup-{code}-{k}"))
                    .json(&json!({"coupon": code, "user_id": user}))
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                (k, altered, status)
            }));
        }
    }
    let mut accepted_bodies = [[false; 2]; KEYS];
    let (mut unexpected_refusals, mut errors_5xx) = (0, 0);
    for send in sends {
        let (k, altered, status) = send.await?;
        match status {
            200..=299 => accepted_bodies[k][usize::from(altered)] = true,
            422 | 429 => {}
            0 | 500.. => errors_5xx += 1,
            _ => unexpected_refusals += 1,
        }
    }
    let pool = sqlx::PgPool::connect(database_url).await?;
    let claim_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM claims WHERE tenant_id = $1 AND kind = 'coupon' AND resource_id = $2")
            .bind(credentials.tenant().as_str())
            .bind(&code)
            .fetch_one(&pool)
            .await?;
    pool.close().await;
    Ok(Outcome {
        keys: KEYS,
        copies: COPIES,
        both_bodies_accepted: accepted_bodies.iter().filter(|b| b[0] && b[1]).count(),
        unexpected_refusals,
        errors_5xx,
        keys_accepted: accepted_bodies.iter().filter(|b| b[0] || b[1]).count(),
        claim_rows,
    })
}
