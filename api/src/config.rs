//! Configuration: one struct, read from environment variables, with local defaults that
//! match `deploy/postgres.sh` so that `cargo run` works against the local stack.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `LIS_DATABASE_URL` | `postgres://lisledger_app@127.0.0.1:5433/lisledger` | the ledger's own connection (application role: INSERT and SELECT only) |
//! | `LIS_MIGRATION_DATABASE_URL` | `postgres://lisledger_owner@127.0.0.1:5433/lisledger` | the owner role, for `migrate` |
//! | `LIS_ADMIN_DATABASE_URL` | `postgres://postgres@127.0.0.1:5433/postgres` | a superuser, for `db init` only |
//! | `LIS_DB_MAX_CONNECTIONS` | `16` | pool size of `serve` (`project` gives each read model two connections of its own) |
//! | `LIS_SNAPSHOT_EVERY` | `20` | snapshot an aggregate every N events |
//! | `LIS_COMMAND_TIMEOUT_SECS` | `30` | how long a command may wait on the database before it is answered 503 and its connection closed (a network that fell silent mid-statement) |
//! | `LIS_REQUEST_TIMEOUT_SECS` | 5 more than `LIS_COMMAND_TIMEOUT_SECS` | how long any request may run before it is answered 503 (`GET /audit/verification` excepted); must be longer than a command's, so that a command's own timeout answers first |
//! | `LIS_FOUR_EYES` | `true` | the verifier of a result may not authorise it |
//! | `LIS_LAB_TIME_ZONE` | `UTC` | the lab's time zone (an IANA name: `Asia/Kolkata`), whose calendar days count: a patient's age on the day of collection, a date of birth not in the future, the days of `GET /patients/{id}/results?from=&to=` and of the analytics |
//! | `LIS_LOG_FORMAT` | `text` | `text` or `json` (one JSON object per line) |
//! | `LIS_KAFKA_BROKERS` | unset | Kafka bootstrap servers; unset = single-node mode (projections read the event store's feed) |
//! | `LIS_TOPIC_ORDERS`, `LIS_TOPIC_SAMPLES`, `LIS_TOPIC_RESULTS`, `LIS_TOPIC_PATIENTS` | `lis.orders`, `lis.samples`, `lis.results`, `lis.patients` | one topic per aggregate type |
//! | `LIS_TOPIC_SEALS` | `lis.audit-seals` | where signed checkpoints are published |
//! | `LIS_KAFKA_PARTITIONS` | `3` | partitions of topics the relay creates |
//! | `LIS_SEAL_KEY` | unset | base64 Ed25519 seed (32 bytes) that signs checkpoints; else read from `LIS_SEAL_KEY_FILE` |
//! | `LIS_SEAL_KEY_FILE` | `deploy/.local/seal.key` | file holding the seed (`lisledger seal keygen` writes one) |
//! | `LIS_SEAL_PUBLIC_KEY` | derived from the key | base64 public key to verify checkpoints with (auditors need only this) |
//! | `LIS_SEAL_KEY_NAME` | `lisledger` | key name in signed notes |
//! | `LIS_SEAL_ORIGIN` | `lisledger/local` | log origin line in signed notes (name the lab) |
//! | `LIS_SEAL_EVERY_EVENTS` / `LIS_SEAL_EVERY_SECS` | `1000` / `60` | seal after this many events or seconds |
//! | `LIS_KAFKA_GROUP_PREFIX` | `lis-projection` | consumer group of projection NAME: `<prefix>-NAME` |
//! | `LIS_MONGO_DATABASE` | `lis_analytics` | the analytics database |
//! | `LIS_KEK` | unset | key-encryption key of patient data keys: base64 of 32 bytes (`lisledger keys generate`); else read from `LIS_KEK_FILE`. Required by `serve`, `demo` and `patients`; a wrong one is refused at start-up |
//! | `LIS_KEK_FILE` | `deploy/.local/kek` | file holding the key-encryption key (`deploy/run.sh` makes one) |
//! | `LIS_KEK_PREVIOUS` / `LIS_KEK_PREVIOUS_FILE` | unset | during a KEK rotation only: the key-encryption key being retired (or a file holding it); keys still wrapped by it open, new ones are wrapped by `LIS_KEK`. `lisledger keys rotate` needs it |
//! | `LIS_HTTP_ADDR` | `127.0.0.1:8080` | where `lisledger serve` listens |
//! | `LIS_JWT_SECRET` | unset | HMAC key of access tokens (32+ bytes); else read from `LIS_JWT_SECRET_FILE` |
//! | `LIS_JWT_SECRET_FILE` | `deploy/.local/jwt.secret` | file holding the token key (`deploy/run.sh` makes one) |
//! | `LIS_JWT_ISSUER` / `LIS_JWT_AUDIENCE` | `lisledger` / `lisledger-api` | token issuer and audience |
//! | `LIS_TOKEN_TTL_SECS` | `900` | access-token lifetime |
//! | `LIS_MAX_IN_FLIGHT` | `256` | requests `serve` handles at once; beyond, 503 at once with Retry-After (0 = no bound) |
//! | `LIS_CORS_ORIGINS` | unset | comma-separated browser origins allowed to call the API |
//! | `LIS_PUBLIC_URL` | unset | the address clients reach the API at (`https://lis.example.org`, no path): FHIR bundles then carry absolute `fullUrl`s and links; unset, `urn:uuid:` ones and relative links |
//! | `LIS_LOGIN_LOCK_AFTER` / `LIS_LOGIN_LOCK_SECS` | `5` / `900` | failed log-ins within how many seconds (at most a year) that lock an account until the oldest of them is that old, or an administrator resets its password (0 failures = never lock) |
//! | `LIS_RATE_PER_ADDRESS` / `LIS_RATE_PER_USER` | `1200` / `600` | requests a minute per client address / per user (0 = off) |
//! | `LIS_PROJECT_BATCH` | `500` | events a projection worker applies per transaction at most |
//! | `LIS_PROJECT_LINGER_MS` | `10` | how long a projection worker lets the next batch fill after a part-full one (single-node: from that batch's read; 0 = not at all) |
//! | `LIS_WORKER_TIMEOUT_SECS` | `120` | how long the relay or a projection worker may spend on one batch (its reads and writes, Kafka's and MongoDB's included) before it is given up, its connections closed, and tried again (a network that fell silent); the server also ends their sessions left idle in a transaction that long |
//! | `LIS_RELAY_LEASE_SECS` | `30` | how long the leader lock outlives a leading relay that stopped answering (its host froze or lost the network): the server then ends the lock's session and a standby takes the lead; the leader stops leading after half of it unanswered |
//! | `LIS_MONGO_URL` | unset | MongoDB for the analytics projection (e.g. `mongodb://127.0.0.1:27017/?directConnection=true`); unset = no analytics |
//! | `RUST_LOG` | `info` | log filter (tracing-subscriber syntax) |

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A secret from the environment (a key, a token key): its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// `name`'s value as a secret, unless unset or blank.
fn secret(vars: &HashMap<String, String>, name: &str) -> Option<Secret> {
    vars.get(name)
        .filter(|v| !v.trim().is_empty())
        .map(|v| Secret(v.clone()))
}

/// Everything the `lisledger` binary can be configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub database_url: String,
    pub migration_database_url: String,
    pub admin_database_url: String,
    pub db_max_connections: u32,
    pub snapshot_every: usize,
    pub command_timeout_secs: u64,
    pub request_timeout_secs: u64,
    pub four_eyes: bool,
    pub lab_time_zone: chrono_tz::Tz,
    pub log_format: LogFormat,
    pub kafka_brokers: Option<String>,
    pub topics: Topics,
    pub kafka_partitions: u32,
    pub seal_key: Option<Secret>,
    pub seal_key_file: String,
    pub seal_public_key: Option<String>,
    pub seal_key_name: String,
    pub seal_origin: String,
    pub seal_every_events: u64,
    pub seal_every_secs: u64,
    pub mongo_url: Option<String>,
    pub mongo_database: String,
    pub kafka_group_prefix: String,
    pub project_batch: usize,
    pub project_linger_ms: u64,
    pub worker_timeout_secs: u64,
    pub relay_lease_secs: u64,
    pub http_addr: String,
    pub kek: Option<Secret>,
    pub kek_file: String,
    pub kek_previous: Option<Secret>,
    pub kek_previous_file: Option<String>,
    pub jwt_secret: Option<Secret>,
    pub jwt_secret_file: String,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub token_ttl_secs: u64,
    pub rate_per_address: u32,
    pub rate_per_user: u32,
    pub login_lock_after: u32,
    pub login_lock_secs: u64,
    pub max_in_flight: usize,
    pub cors_origins: Vec<String>,
    pub public_url: Option<String>,
}

/// Kafka topic names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub orders: String,
    pub samples: String,
    pub results: String,
    pub patients: String,
    pub seals: String,
}

#[derive(Debug, thiserror::Error)]
#[error("configuration variable {variable}: {message}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

/// `LIS_PUBLIC_URL`: an http(s) origin, nothing after it (a trailing `/` dropped).
fn public_url(raw: Option<&str>) -> Result<Option<String>, ConfigError> {
    let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let url = raw.trim_end_matches('/');
    let host = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match host {
        Some(h) if !h.is_empty() && !h.contains(['/', '?', '#', ' ']) => Ok(Some(url.to_string())),
        _ => Err(ConfigError {
            variable: "LIS_PUBLIC_URL",
            message: format!(
                "`{raw}` is not an http(s) address without a path, such as https://lis.example.org"
            ),
        }),
    }
}

/// A whole number setting, 0 allowed (0 = off, for the limits).
fn whole<T: TryFrom<u64>>(
    vars: &HashMap<String, String>,
    variable: &'static str,
    default: &str,
) -> Result<T, ConfigError> {
    at_least(vars, variable, default, 0)
}

/// A whole number setting above 0.
fn number<T: TryFrom<u64>>(
    vars: &HashMap<String, String>,
    variable: &'static str,
    default: &str,
) -> Result<T, ConfigError> {
    at_least(vars, variable, default, 1)
}

/// A whole number setting of at least `least`, in the type the configuration keeps it
/// in: refused when it does not fit, where a cast would wrap (a rate limit of 2^32 to
/// 0, "off").
fn at_least<T: TryFrom<u64>>(
    vars: &HashMap<String, String>,
    variable: &'static str,
    default: &str,
    least: u64,
) -> Result<T, ConfigError> {
    let raw = vars.get(variable).map(String::as_str).unwrap_or(default);
    let refuse = |message: String| ConfigError { variable, message };
    let n = raw.trim().parse::<u64>().ok().filter(|n| *n >= least);
    let n = n.ok_or_else(|| match least {
        0 => refuse(format!("`{raw}` is not a whole number")),
        _ => refuse(format!("`{raw}` is not a whole number of at least {least}")),
    })?;
    T::try_from(n).map_err(|_| refuse(format!("`{raw}` is too large for this setting")))
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
        let zone = get("LIS_LAB_TIME_ZONE", "UTC");
        let lab_time_zone = zone
            .trim()
            .parse::<chrono_tz::Tz>()
            .map_err(|_| ConfigError {
                variable: "LIS_LAB_TIME_ZONE",
                message: format!("`{zone}` is not an IANA time zone (such as Asia/Kolkata)"),
            })?;
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
        let command_timeout_secs: u64 = number(vars, "LIS_COMMAND_TIMEOUT_SECS", "30")?;
        let request_timeout_secs: u64 = number(
            vars,
            "LIS_REQUEST_TIMEOUT_SECS",
            &command_timeout_secs.saturating_add(5).to_string(),
        )?;
        if request_timeout_secs <= command_timeout_secs {
            return Err(ConfigError {
                variable: "LIS_REQUEST_TIMEOUT_SECS",
                message: format!(
                    "{request_timeout_secs} s is not longer than LIS_COMMAND_TIMEOUT_SECS ({command_timeout_secs} s): a command would be cut short by its request before its own timeout"
                ),
            });
        }
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
            db_max_connections: number(vars, "LIS_DB_MAX_CONNECTIONS", "16")?,
            snapshot_every: number(vars, "LIS_SNAPSHOT_EVERY", "20")?,
            command_timeout_secs,
            request_timeout_secs,
            four_eyes,
            lab_time_zone,
            log_format,
            kafka_brokers: vars
                .get("LIS_KAFKA_BROKERS")
                .filter(|b| !b.trim().is_empty())
                .cloned(),
            topics: Topics {
                orders: get("LIS_TOPIC_ORDERS", "lis.orders"),
                samples: get("LIS_TOPIC_SAMPLES", "lis.samples"),
                results: get("LIS_TOPIC_RESULTS", "lis.results"),
                patients: get("LIS_TOPIC_PATIENTS", "lis.patients"),
                seals: get("LIS_TOPIC_SEALS", "lis.audit-seals"),
            },
            kafka_partitions: number(vars, "LIS_KAFKA_PARTITIONS", "3")?,
            seal_key: secret(vars, "LIS_SEAL_KEY"),
            seal_key_file: get("LIS_SEAL_KEY_FILE", "deploy/.local/seal.key"),
            seal_public_key: vars
                .get("LIS_SEAL_PUBLIC_KEY")
                .filter(|k| !k.trim().is_empty())
                .cloned(),
            seal_key_name: get("LIS_SEAL_KEY_NAME", "lisledger"),
            seal_origin: get("LIS_SEAL_ORIGIN", "lisledger/local"),
            seal_every_events: number(vars, "LIS_SEAL_EVERY_EVENTS", "1000")?,
            seal_every_secs: number(vars, "LIS_SEAL_EVERY_SECS", "60")?,
            mongo_url: vars
                .get("LIS_MONGO_URL")
                .filter(|u| !u.trim().is_empty())
                .cloned(),
            mongo_database: get("LIS_MONGO_DATABASE", "lis_analytics"),
            kafka_group_prefix: get("LIS_KAFKA_GROUP_PREFIX", "lis-projection"),
            project_batch: number(vars, "LIS_PROJECT_BATCH", "500")?,
            project_linger_ms: whole(vars, "LIS_PROJECT_LINGER_MS", "10")?,
            worker_timeout_secs: number(vars, "LIS_WORKER_TIMEOUT_SECS", "120")?,
            relay_lease_secs: number(vars, "LIS_RELAY_LEASE_SECS", "30")?,
            http_addr: get("LIS_HTTP_ADDR", "127.0.0.1:8080"),
            kek: secret(vars, "LIS_KEK"),
            kek_file: get("LIS_KEK_FILE", "deploy/.local/kek"),
            kek_previous: secret(vars, "LIS_KEK_PREVIOUS"),
            kek_previous_file: vars
                .get("LIS_KEK_PREVIOUS_FILE")
                .filter(|f| !f.trim().is_empty())
                .cloned(),
            jwt_secret: secret(vars, "LIS_JWT_SECRET"),
            jwt_secret_file: get("LIS_JWT_SECRET_FILE", "deploy/.local/jwt.secret"),
            jwt_issuer: get("LIS_JWT_ISSUER", "lisledger"),
            jwt_audience: get("LIS_JWT_AUDIENCE", "lisledger-api"),
            token_ttl_secs: number(vars, "LIS_TOKEN_TTL_SECS", "900")?,
            rate_per_address: whole(vars, "LIS_RATE_PER_ADDRESS", "1200")?,
            cors_origins: get("LIS_CORS_ORIGINS", "")
                .split(',')
                .map(|o| o.trim().to_string())
                .filter(|o| !o.is_empty())
                .collect(),
            rate_per_user: whole(vars, "LIS_RATE_PER_USER", "600")?,
            login_lock_after: whole(vars, "LIS_LOGIN_LOCK_AFTER", "5")?,
            login_lock_secs: match number(vars, "LIS_LOGIN_LOCK_SECS", "900")? {
                n if n > 366 * 24 * 3600 => {
                    return Err(ConfigError {
                        variable: "LIS_LOGIN_LOCK_SECS",
                        message: format!("{n} is more than a year"),
                    })
                }
                n => n,
            },
            public_url: public_url(vars.get("LIS_PUBLIC_URL").map(String::as_str))?,
            max_in_flight: match whole(vars, "LIS_MAX_IN_FLIGHT", "256")? {
                n if n > tokio::sync::Semaphore::MAX_PERMITS => {
                    return Err(ConfigError {
                        variable: "LIS_MAX_IN_FLIGHT",
                        message: format!("{n} is too large for this setting"),
                    })
                }
                n => n,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_public_url_is_an_origin() {
        use super::public_url;
        assert_eq!(public_url(None).unwrap(), None);
        assert_eq!(public_url(Some(" ")).unwrap(), None);
        assert_eq!(
            public_url(Some("https://lis.example.org/"))
                .unwrap()
                .as_deref(),
            Some("https://lis.example.org")
        );
        assert_eq!(
            public_url(Some("http://127.0.0.1:8080"))
                .unwrap()
                .as_deref(),
            Some("http://127.0.0.1:8080")
        );
        for bad in [
            "lis.example.org",
            "https://",
            "https://lis.example.org/fhir",
            "ftp://x",
            "https://a b",
        ] {
            let e = public_url(Some(bad)).unwrap_err();
            assert_eq!(e.variable, "LIS_PUBLIC_URL", "{bad}");
        }
    }

    use super::*;

    #[test]
    fn secrets_never_show_in_debug_output() {
        let vars: HashMap<String, String> = [
            "LIS_KEK",
            "LIS_KEK_PREVIOUS",
            "LIS_JWT_SECRET",
            "LIS_SEAL_KEY",
        ]
        .iter()
        .map(|v| (v.to_string(), format!("{v}-value-0123456789")))
        .collect();
        let c = Config::from_vars(&vars).unwrap();
        assert_eq!(
            c.kek.as_ref().map(Secret::expose),
            Some("LIS_KEK-value-0123456789")
        );
        let shown = format!("{c:?}");
        assert!(!shown.contains("-value-"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
    }

    #[test]
    fn the_lab_s_time_zone_is_an_iana_name() {
        let vars =
            |zone: &str| HashMap::from([("LIS_LAB_TIME_ZONE".to_string(), zone.to_string())]);
        let c = Config::from_vars(&vars(" Asia/Kolkata ")).unwrap();
        assert_eq!(c.lab_time_zone, chrono_tz::Asia::Kolkata);
        let e = Config::from_vars(&vars("IST")).unwrap_err();
        assert_eq!(e.variable, "LIS_LAB_TIME_ZONE");
        assert!(e.message.contains("IANA"), "{}", e.message);
    }

    #[test]
    fn defaults_match_the_local_stack() {
        let c = Config::from_vars(&HashMap::new()).unwrap();
        assert_eq!(
            c.database_url,
            "postgres://lisledger_app@127.0.0.1:5433/lisledger"
        );
        assert!(c.four_eyes);
        assert_eq!(c.lab_time_zone, chrono_tz::UTC);
        assert_eq!(c.snapshot_every, 20);
        assert_eq!(c.command_timeout_secs, 30);
        assert_eq!(c.request_timeout_secs, 35);
        assert_eq!(c.worker_timeout_secs, 120);
        assert_eq!(c.relay_lease_secs, 30);
    }

    #[test]
    fn the_request_deadline_follows_the_command_timeout_and_outlasts_it() {
        let vars = HashMap::from([("LIS_COMMAND_TIMEOUT_SECS".to_string(), "60".to_string())]);
        assert_eq!(Config::from_vars(&vars).unwrap().request_timeout_secs, 65);
        let vars = HashMap::from([
            ("LIS_COMMAND_TIMEOUT_SECS".to_string(), "30".to_string()),
            ("LIS_REQUEST_TIMEOUT_SECS".to_string(), "30".to_string()),
        ]);
        let err = Config::from_vars(&vars).unwrap_err();
        assert_eq!(err.variable, "LIS_REQUEST_TIMEOUT_SECS");
        assert!(
            err.message.contains("LIS_COMMAND_TIMEOUT_SECS"),
            "{}",
            err.message
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let vars = HashMap::from([("LIS_SNAPSHOT_EVERY".to_string(), "zero".to_string())]);
        let err = Config::from_vars(&vars).unwrap_err();
        assert_eq!(err.variable, "LIS_SNAPSHOT_EVERY");
        // Too large for the setting's type: refused, not wrapped (2^32 would be 0, "off").
        let vars = HashMap::from([("LIS_RATE_PER_ADDRESS".to_string(), "4294967296".to_string())]);
        let err = Config::from_vars(&vars).unwrap_err();
        assert_eq!(err.variable, "LIS_RATE_PER_ADDRESS");
        assert!(err.message.contains("too large"), "{}", err.message);
        let vars = HashMap::from([("LIS_MAX_IN_FLIGHT".to_string(), (u64::MAX / 2).to_string())]);
        assert_eq!(
            Config::from_vars(&vars).unwrap_err().variable,
            "LIS_MAX_IN_FLIGHT"
        );
        let vars = HashMap::from([("LIS_PROJECT_BATCH".to_string(), "0".to_string())]);
        assert_eq!(
            Config::from_vars(&vars).unwrap_err().variable,
            "LIS_PROJECT_BATCH"
        );
        // A lock-out window the database could not add to a time.
        let vars = HashMap::from([("LIS_LOGIN_LOCK_SECS".to_string(), "31708800".to_string())]);
        assert_eq!(
            Config::from_vars(&vars).unwrap_err().variable,
            "LIS_LOGIN_LOCK_SECS"
        );
        let vars = HashMap::from([("LIS_FOUR_EYES".to_string(), "maybe".to_string())]);
        assert_eq!(
            Config::from_vars(&vars).unwrap_err().variable,
            "LIS_FOUR_EYES"
        );
    }
}
