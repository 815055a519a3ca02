//! Configuration: one struct, read from environment variables, with local defaults that
//! match `deploy/postgres.sh` so that `cargo run` works against the local stack.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `LIS_DATABASE_URL` | `postgres://lisledger_app@127.0.0.1:5433/lisledger` | the ledger's own connection (application role: INSERT and SELECT only) |
//! | `LIS_MIGRATION_DATABASE_URL` | `postgres://lisledger_owner@127.0.0.1:5433/lisledger` | the owner role, for `migrate` |
//! | `LIS_ADMIN_DATABASE_URL` | `postgres://postgres@127.0.0.1:5433/postgres` | a superuser, for `db init` only |
//! | `LIS_DB_MAX_CONNECTIONS` | `16` | pool size |
//! | `LIS_SNAPSHOT_EVERY` | `20` | snapshot an aggregate every N events |
//! | `LIS_FOUR_EYES` | `true` | the verifier of a result may not authorise it |
//! | `LIS_LOG_FORMAT` | `text` | `text` or `json` (one JSON object per line) |
//! | `RUST_LOG` | `info` | log filter (tracing-subscriber syntax) |

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything the `lisledger` binary can be configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub database_url: String,
    pub migration_database_url: String,
    pub admin_database_url: String,
    pub db_max_connections: u32,
    pub snapshot_every: usize,
    pub four_eyes: bool,
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
#[error("configuration variable {variable}: {message}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::from_vars(&vars)
    }

    /// Reads configuration from a map of variables (the environment, or a test's map).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |name: &str, default: &str| {
            vars.get(name)
                .cloned()
                .unwrap_or_else(|| default.to_string())
        };
        let number = |name: &'static str, default: &str| -> Result<u64, ConfigError> {
            let raw = get(name, default);
            raw.trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or(ConfigError {
                    variable: name,
                    message: format!("`{raw}` is not a whole number above 0"),
                })
        };
        let four_eyes = match get("LIS_FOUR_EYES", "true")
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            other => {
                return Err(ConfigError {
                    variable: "LIS_FOUR_EYES",
                    message: format!("`{other}` is not true or false"),
                })
            }
        };
        let log_format = match get("LIS_LOG_FORMAT", "text").trim() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError {
                    variable: "LIS_LOG_FORMAT",
                    message: format!("`{other}` is not text or json"),
                })
            }
        };
        Ok(Self {
            database_url: get(
                "LIS_DATABASE_URL",
                "postgres://lisledger_app@127.0.0.1:5433/lisledger",
            ),
            migration_database_url: get(
                "LIS_MIGRATION_DATABASE_URL",
                "postgres://lisledger_owner@127.0.0.1:5433/lisledger",
            ),
            admin_database_url: get(
                "LIS_ADMIN_DATABASE_URL",
                "postgres://postgres@127.0.0.1:5433/postgres",
            ),
            db_max_connections: number("LIS_DB_MAX_CONNECTIONS", "16")? as u32,
            snapshot_every: number("LIS_SNAPSHOT_EVERY", "20")? as usize,
            four_eyes,
            log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_local_stack() {
        let c = Config::from_vars(&HashMap::new()).unwrap();
        assert_eq!(
            c.database_url,
            "postgres://lisledger_app@127.0.0.1:5433/lisledger"
        );
        assert!(c.four_eyes);
        assert_eq!(c.snapshot_every, 20);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let vars = HashMap::from([("LIS_SNAPSHOT_EVERY".to_string(), "zero".to_string())]);
        let err = Config::from_vars(&vars).unwrap_err();
        assert_eq!(err.variable, "LIS_SNAPSHOT_EVERY");
        let vars = HashMap::from([("LIS_FOUR_EYES".to_string(), "maybe".to_string())]);
        assert_eq!(
            Config::from_vars(&vars).unwrap_err().variable,
            "LIS_FOUR_EYES"
        );
    }
}
