//! The command line as an operator meets it: `claim-api --help` lists every
//! setting README.md's configuration table gives the API (and nothing it
//! leaves out), and a bad value stops the API at start-up with an error
//! naming the variable. No stack needed: every run here stops before
//! connecting to anything.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use turnstile_testkit::readme::assert_help_matches_readme;

fn claim_api(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_claim-api"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn help_lists_every_documented_setting_with_its_default_and_no_other() {
    // `-h` keeps each setting's variable and default on one line.
    let out = claim_api(&[], &["-h"]);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    assert_help_matches_readme(&help, "api");
}

#[test]
fn a_malformed_value_is_named_by_its_variable() {
    let out = claim_api(&[("TURNSTILE_HEADER_READ_TIMEOUT", "5000")], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("'TURNSTILE_HEADER_READ_TIMEOUT'"), "{stderr}");
    assert!(stderr.contains("5000ms"), "the unit is suggested: {stderr}");

    let out = claim_api(&[("TURNSTILE_LOG_FORMAT", "pretty")], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("'TURNSTILE_LOG_FORMAT'"), "{stderr}");
}

#[test]
fn a_value_against_the_rules_is_named_by_its_variable() {
    let out = claim_api(
        &[("TURNSTILE_PG_WRITE_POOL", "8"), ("TURNSTILE_ACCEPT_BATCHES", "8")],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "TURNSTILE_ACCEPT_BATCHES=8 is invalid: must be at least 1 and below TURNSTILE_PG_WRITE_POOL (8)"
        ),
        "{stderr}"
    );
}

#[test]
fn a_kafka_property_librdkafka_does_not_know_is_named_by_its_variable() {
    let out = claim_api(&[("TURNSTILE_KAFKA_NO_SUCH_PROPERTY", "1")], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("TURNSTILE_KAFKA_NO_SUCH_PROPERTY"), "{stderr}");
}
