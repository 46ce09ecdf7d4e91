//! README.md's configuration table, as the settings tests compare it with
//! each service's `--help`.

/// One row of the table: a variable, its default cell, and who reads it.
#[derive(Debug, Clone)]
pub struct DocumentedSetting {
    /// The variable.
    pub name: String,
    /// Its default, when the cell is one literal value (`` `5s` ``).
    pub literal_default: Option<String>,
}

/// The settings README.md's configuration table says `reader` (`api` or
/// `worker`) reads; a row of `both` counts for each. A row naming two
/// variables (`` `A`, `B` ``) gives both, without a literal default.
pub fn documented_settings(reader: &str) -> Vec<DocumentedSetting> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let section = readme.split("\n## Configuration").nth(1).unwrap();
    let table = section.split("\n## ").next().unwrap();
    table
        .lines()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| {
            // | variable | default | reads | what it does |
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            (cells[3] == "both" || cells[3] == reader).then(|| (cells[1], cells[2]))
        })
        .flat_map(|(names, default)| {
            let names: Vec<String> = names
                .split(", ")
                .map(|name| name.trim_matches('`').to_owned())
                .collect();
            // Abbreviated defaults (…) and references to another variable
            // are for reading, not comparing.
            let literal = (names.len() == 1)
                .then(|| default.strip_prefix('`')?.strip_suffix('`'))
                .flatten()
                .filter(|d| !d.contains(['`', '…']))
                .map(str::to_owned);
            names.into_iter().map(move |name| DocumentedSetting {
                name,
                literal_default: literal.clone(),
            })
        })
        .collect()
}

/// The variables a `--help` text shows as `[env: NAME...]`.
pub fn variables_in_help(help: &str) -> Vec<String> {
    help.split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap().to_owned())
        .collect()
}

/// Asserts that `help` lists every setting README.md gives `reader`, and no
/// other, each with README's literal default.
pub fn assert_help_matches_readme(help: &str, reader: &str) {
    let documented = documented_settings(reader);
    let listed = variables_in_help(help);
    for setting in &documented {
        let name = &setting.name;
        let shown = listed.contains(name) || help.contains(&format!("\n  {name} "));
        assert!(shown, "{name} is in README.md but not in --help:\n{help}");
    }
    for name in &listed {
        assert!(
            documented.iter().any(|s| &s.name == name),
            "{name} is in --help but not in README.md"
        );
    }
    let mut compared = 0;
    for setting in &documented {
        let (name, Some(default)) = (&setting.name, &setting.literal_default) else {
            continue;
        };
        let Some(line) = help.lines().find(|line| line.contains(&format!("[env: {name}"))) else {
            continue; // not a setting of clap's, such as RUST_LOG
        };
        assert!(
            line.contains(&format!("[default: {default}]")),
            "README.md says {name} defaults to {default}: {line}"
        );
        compared += 1;
    }
    assert!(compared > 10, "only {compared} defaults compared for {reader}");
}
