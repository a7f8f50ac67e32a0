//! Settings from the environment, for containers: a variable `CCM_AGENT__<SECTION>__<KEY>` sets
//! the key `<section>.<key>` of the file as if it were written there (`CCM_AGENT__CLOUD__REGION`,
//! `CCM_AGENT__METRICS__LISTEN`, `CCM_AGENT__AGENT__HOST_ID`, `CCM_AGENT__CLOUD__AUTH__METHOD`).
//! Segments are separated by two underscores and matched in lower case; they lead through tables
//! only (a `[[certificates]]` entry cannot be addressed, but a whole array can be given).
//!
//! The value keeps the type of the key it replaces: where the file has a string, the variable's
//! text is taken as it is. Otherwise the text is read as a TOML value when it is one
//! (`8`, `true`, `["a", "b"]`, `{ type = "DAY", value = 30 }`) and as a string when it is not
//! (`0.0.0.0:9464`, `*/5 * * * *`), so `"1234"` (quoted) is the way to give a string that
//! looks like a number for a key the file leaves out. The result is validated like the file
//! itself; problems name the variable.

use super::Problem;

/// The prefix of the variables.
pub const PREFIX: &str = "CCM_AGENT__";

/// Applies every `CCM_AGENT__*` variable of `vars` to `table`, in name order. Returns the names
/// of the variables applied, or every problem found.
pub fn apply_overrides(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, Vec<Problem>> {
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect();
    vars.sort();
    let mut applied = Vec::new();
    let mut problems = Vec::new();
    for (name, value) in vars {
        match apply_one(table, &name, &value) {
            Ok(()) => applied.push(name),
            Err((key, message)) => problems.push(Problem {
                key,
                message: format!("from the environment variable {name}: {message}"),
                position: None,
            }),
        }
    }
    if problems.is_empty() {
        Ok(applied)
    } else {
        Err(problems)
    }
}

fn apply_one(table: &mut toml::Table, name: &str, value: &str) -> Result<(), (String, String)> {
    let path: Vec<String> = name[PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err((
            String::new(),
            format!("expected {PREFIX}<SECTION>__<KEY>, with two underscores between the parts"),
        ));
    }
    let dotted = path.join(".");
    let Some((last, parents)) = path.split_last() else {
        return Err((dotted, "no key named".into()));
    };
    let mut here = table;
    let mut walked = Vec::new();
    for seg in parents {
        walked.push(seg.as_str());
        let entry = here
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        here = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err((
                    dotted,
                    format!("{} is not a table, so it has no keys", walked.join(".")),
                ));
            }
        };
    }
    let new = match here.get(last) {
        Some(toml::Value::String(_)) => toml::Value::String(value.to_owned()),
        _ => parse_value(value),
    };
    here.insert(last.clone(), new);
    Ok(())
}

/// `value` as a TOML value when it is one, otherwise as a string.
fn parse_value(value: &str) -> toml::Value {
    let doc = format!("v = {value}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(value.to_owned())),
        Err(_) => toml::Value::String(value.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn overrides_set_keys_keep_string_types_and_create_tables() {
        let mut t = table("[agent]\nhost_id = \"a\"\nconcurrency = 4\n");
        let applied = apply_overrides(
            &mut t,
            vars(&[
                ("CCM_AGENT__AGENT__HOST_ID", "1234"),
                ("CCM_AGENT__AGENT__CONCURRENCY", "16"),
                ("CCM_AGENT__METRICS__LISTEN", "0.0.0.0:9464"),
                ("CCM_AGENT__CLOUD__AUTH__METHOD", "aksk"),
                ("CCM_AGENT__AGENT__SCHEDULE", "*/5 * * * *"),
                ("CCM_AGENT__AGENT__CHECK_ON_START", "false"),
                ("CCM_AGENT_CONFIG", "/not/an/override"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(applied.len(), 6);
        assert_eq!(t["agent"]["host_id"].as_str(), Some("1234"));
        assert_eq!(t["agent"]["concurrency"].as_integer(), Some(16));
        assert_eq!(t["agent"]["schedule"].as_str(), Some("*/5 * * * *"));
        assert_eq!(t["agent"]["check_on_start"].as_bool(), Some(false));
        assert_eq!(t["metrics"]["listen"].as_str(), Some("0.0.0.0:9464"));
        assert_eq!(t["cloud"]["auth"]["method"].as_str(), Some("aksk"));
    }

    #[test]
    fn problems_name_the_variable() {
        let mut t = table("[agent]\nhost_id = \"a\"\n");
        let problems = apply_overrides(
            &mut t,
            vars(&[
                ("CCM_AGENT__AGENT__HOST_ID__X", "1"),
                ("CCM_AGENT__", "1"),
                ("CCM_AGENT__CLOUD____REGION", "x"),
            ]),
        )
        .unwrap_err();
        assert_eq!(problems.len(), 3);
        let all: Vec<String> = problems.iter().map(|p| p.message.clone()).collect();
        assert!(
            all.iter()
                .any(|m| m.contains("CCM_AGENT__AGENT__HOST_ID__X")
                    && m.contains("agent.host_id is not a table")),
            "{all:?}"
        );
        assert!(all.iter().all(|m| m.contains("CCM_AGENT__")), "{all:?}");
        assert_eq!(t["agent"]["host_id"].as_str(), Some("a"), "unchanged");
    }
}
