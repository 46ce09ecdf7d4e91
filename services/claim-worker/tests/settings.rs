//! The command line as an operator meets it: `claim-worker --help` lists
//! every setting README.md's configuration table gives the worker (and
//! nothing it leaves out), and a bad value stops the worker at start-up with
//! an error naming the variable. No stack needed: every run here stops
//! before connecting to anything.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use turnstile_testkit::readme::assert_help_matches_readme;

fn claim_worker(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_claim-worker"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn help_lists_every_documented_setting_with_its_default_and_no_other() {
    // `-h` keeps each setting's variable and default on one line.
    let out = claim_worker(&[], &["-h"]);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    assert_help_matches_readme(&help, "worker");
}

#[test]
fn a_malformed_value_is_named_by_its_variable() {
    let out = claim_worker(&[("TURNSTILE_LOCK_TTL", "5000")], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("'TURNSTILE_LOCK_TTL'"), "{stderr}");
    assert!(stderr.contains("5000ms"), "the unit is suggested: {stderr}");

    let out = claim_worker(&[("TURNSTILE_LOCK_BACKEND", "etcd")], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("'TURNSTILE_LOCK_BACKEND'"), "{stderr}");
}

#[test]
fn a_value_against_the_rules_is_named_by_its_variable() {
    let out = claim_worker(
        &[
            ("TURNSTILE_LOCK_BACKEND", "zookeeper"),
            ("TURNSTILE_ZOOKEEPER_SESSION_TIMEOUT", "4s"),
            ("TURNSTILE_LOCK_TTL", "5s"),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("TURNSTILE_LOCK_TTL=5s is invalid"), "{stderr}");
    assert!(stderr.contains("TURNSTILE_ZOOKEEPER_SESSION_TIMEOUT (4s)"), "{stderr}");
}

#[test]
fn a_kafka_property_librdkafka_does_not_know_is_named_by_its_variable() {
    let out = claim_worker(&[("TURNSTILE_KAFKA_NO_SUCH_PROPERTY", "1")], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("TURNSTILE_KAFKA_NO_SUCH_PROPERTY"), "{stderr}");
}
