//! The optional TOML configuration file (`--config FILE` or `FANOUT_CONFIG`).
//!
//! Its keys are the long flag names (`listen = "0.0.0.0:8080"`, `alert-rule = ["cpu>90"]`).
//! Precedence is flags > environment > file > defaults: each file value is handed to clap through
//! the flag's environment variable, and only when that variable is not set already, so clap's own
//! flags-over-environment rule does the rest.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;

use crate::Cli;

/// The configuration file named on the command line or in `FANOUT_CONFIG`, if any.
pub fn path_from(args: &[String]) -> Option<PathBuf> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("FANOUT_CONFIG").map(PathBuf::from)
}

/// The environment variables the file's values become, for those not already set.
pub fn environment_from(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    let command = Cli::command();
    let mut assignments = Vec::new();
    for (key, value) in table {
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(key.as_str()))
            .with_context(|| {
                format!(
                    "{}: unknown setting {key:?} (settings are the long flag names, e.g. listen)",
                    path.display()
                )
            })?;
        let env = arg
            .get_env()
            .and_then(|env| env.to_str())
            .with_context(|| format!("{}: {key} cannot be set from a file", path.display()))?;
        if std::env::var_os(env).is_some() {
            continue;
        }
        let delimiter = arg.get_value_delimiter().unwrap_or(',').to_string();
        let text = match value {
            toml::Value::String(text) => text,
            toml::Value::Array(items) => items
                .iter()
                .map(scalar)
                .collect::<Option<Vec<_>>>()
                .with_context(|| {
                    format!("{}: {key} must be a list of plain values", path.display())
                })?
                .join(&delimiter),
            other => scalar(&other)
                .with_context(|| format!("{}: {key} has an unsupported value", path.display()))?,
        };
        assignments.push((env.to_owned(), text));
    }
    Ok(assignments)
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(n) => Some(n.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_become_the_flags_environment_variables() {
        let dir = std::env::temp_dir().join(format!("fanout-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("fanout.toml");
        std::fs::write(&path, "listen = \"0.0.0.0:9000\"\nworkers = 3\nalert-rule = [\"a>1\", \"b<2\"]\nreuse-port = true\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut env = environment_from(&path).unwrap_or_else(|e| panic!("{e:#}"));
        env.sort();
        assert_eq!(
            env,
            [
                ("FANOUT_ALERT_RULES".to_owned(), "a>1;b<2".to_owned()),
                ("FANOUT_LISTEN".to_owned(), "0.0.0.0:9000".to_owned()),
                ("FANOUT_REUSE_PORT".to_owned(), "true".to_owned()),
                ("FANOUT_WORKERS".to_owned(), "3".to_owned()),
            ]
        );
        std::fs::write(&path, "lissen = \"x\"\n").unwrap_or_else(|e| panic!("{e}"));
        let error = environment_from(&path).err().map(|e| format!("{e:#}"));
        assert!(error.is_some_and(|e| e.contains("unknown setting \"lissen\"")));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_config_flag_or_variable_names_the_file() {
        let args: Vec<String> = ["fanout", "--config", "a.toml"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(path_from(&args), Some(PathBuf::from("a.toml")));
        let args: Vec<String> = ["fanout", "--config=b.toml"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(path_from(&args), Some(PathBuf::from("b.toml")));
    }
}
