//! The command line as an operator meets it: `claim-worker --help` lists
//! every setting README.md's configuration table gives the worker (and
//! nothing it leaves out), and a bad value stops the worker at start-up with
//! an error naming the variable. No stack needed: every run here stops
//! before connecting to anything.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn claim_worker(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_claim-worker"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The variables README.md's configuration table says `reader` (`api` or
/// `worker`) reads.
fn documented(reader: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let section = readme.split("\n## Configuration").nth(1).unwrap();
    let table = section.split("\n## ").next().unwrap();
    table
        .lines()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| {
            // | variable | default | reads | what it does |
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            (cells[3] == "both" || cells[3] == reader).then(|| cells[1].to_owned())
        })
        .flat_map(|names| {
            names
                .split(", ")
                .map(|name| name.trim_matches('`').to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The defaults README.md's configuration table gives `reader`'s
/// variables, where the cell is one literal value.
fn documented_defaults(reader: &str) -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let section = readme.split("\n## Configuration").nth(1).unwrap();
    let table = section.split("\n## ").next().unwrap();
    table
        .lines()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (name, default) = (cells[1].strip_prefix('`')?.strip_suffix('`')?, cells[2]);
            let default = default.strip_prefix('`')?.strip_suffix('`')?;
            // Abbreviated defaults (…) are for reading, not comparing.
            let literal = !name.contains('`') && !default.contains(['`', '…']);
            (literal && (cells[3] == "both" || cells[3] == reader)).then(|| (name.to_owned(), default.to_owned()))
        })
        .collect()
}

/// The variables `--help` shows as `[env: NAME...]`.
fn listed(help: &str) -> Vec<String> {
    help.split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap().to_owned())
        .collect()
}

#[test]
fn help_lists_every_documented_setting_and_no_other() {
    let out = claim_worker(&[], &["--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    let documented = documented("worker");
    let listed = listed(&help);
    for name in &documented {
        let shown = listed.contains(name) || help.contains(&format!("\n  {name} "));
        assert!(shown, "{name} is in README.md but not in --help:\n{help}");
    }
    for name in &listed {
        assert!(documented.contains(name), "{name} is in --help but not in README.md");
    }
}

#[test]
fn help_shows_the_documented_defaults() {
    let out = claim_worker(&[], &["-h"]);
    let help = String::from_utf8(out.stdout).unwrap();
    let defaults = documented_defaults("worker");
    assert!(defaults.len() > 10, "{defaults:?}");
    for (name, default) in defaults {
        let Some(line) = help.lines().find(|line| line.contains(&format!("[env: {name}"))) else {
            continue; // not a setting of clap's, such as RUST_LOG
        };
        assert!(
            line.contains(&format!("[default: {default}]")),
            "README.md says {name} defaults to {default}: {line}"
        );
    }
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
