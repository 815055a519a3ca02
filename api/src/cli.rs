//! The subcommands of `lisledger` and what each prints for its operator.

use crate::demo::DaySize;
use crate::ops::{self, UserChange};
use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use lis_api::config::{Config, LogFormat};
use lis_api::http::users::ChangedBy;
use lis_commands::{audit, catalogue};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "lisledger",
    version,
    about = "LIS Ledger: the laboratory's audit trail"
)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Database set-up (needs LIS_ADMIN_DATABASE_URL, a superuser).
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Apply pending migrations (as the owner role, LIS_MIGRATION_DATABASE_URL).
    Migrate,
    /// The versioned test catalogue.
    Catalogue {
        #[command(subcommand)]
        command: CatalogueCommand,
    },
    /// Audit-trail checks.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Publish the event store to Kafka in order, and seal it (one leader; others stand by).
    Relay,
    /// Run projection workers (all if none named): from Kafka if LIS_KAFKA_BROKERS is set,
    /// else straight from the event store's ordered feed.
    Project { names: Vec<String> },
    /// Read-model maintenance.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Serve the HTTP API (LIS_HTTP_ADDR).
    Serve,
    /// Load a synthetic lab day through the real command path (and demo users).
    Demo {
        /// How many orders.
        #[arg(long, default_value_t = 200, conflicts_with = "tests")]
        orders: usize,
        /// Instead of a number of orders: orders until this many tests are ordered (a lab
        /// day of 2 million tests is `--tests 2000000`).
        #[arg(long)]
        tests: Option<usize>,
        /// Random seed, for a reproducible day.
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        /// Only if the ledger holds no events yet (first run).
        #[arg(long)]
        if_empty: bool,
        /// Concurrent clients (for large days; 1 = the reproducible sequential day).
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// The order mix: a CSV of test profiles and weights (default: the compiled-in
        /// deploy/seed/order-mix.csv), or `uniform` (1–4 tests, each alike).
        #[arg(long)]
        mix: Option<String>,
    },
    /// API users.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Benchmarks against their baselines (docs/benchmarks.md).
    Bench {
        #[command(subcommand)]
        command: crate::bench::BenchCommand,
    },
    /// Audit-seal keys.
    Seal {
        #[command(subcommand)]
        command: SealCommand,
    },
    /// The key-encryption key of patient data keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Patients' personal data.
    Patients {
        #[command(subcommand)]
        command: PatientsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a new key-encryption key (LIS_KEK); keep it apart from the database's backups.
    Generate {
        /// Write it to this file (mode 600, never overwritten) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Re-wrap every stored key (the ledger's own and each patient's data key) from the
    /// previous key-encryption key (LIS_KEK_PREVIOUS) to the current one (LIS_KEK), as the
    /// owner role (LIS_MIGRATION_DATABASE_URL). Restartable; recorded in `kek_rotations`.
    Rotate {
        /// Why (recorded in `kek_rotations`).
        #[arg(long)]
        reason: String,
        /// Who is rotating (recorded in `kek_rotations`; default: $USER).
        #[arg(long, env = "USER")]
        actor: String,
    },
}

#[derive(Debug, Subcommand)]
enum PatientsCommand {
    /// Erase a patient (right to erasure): destroy their data key, record the erasure as an
    /// audited event, and let the read models and analytics purge their rows.
    Erase {
        /// The pseudonymous patient id.
        patient_id: String,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: String,
        /// Who is erasing (recorded as the actor, role admin; default: $USER).
        #[arg(long, env = "USER")]
        actor: String,
    },
}

#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// Replay the event store into a fresh copy of a read model (or `all` of them, from
    /// one read of the store) and swap it in live; `analytics` empties the MongoDB
    /// analytics database (LIS_MONGO_DATABASE) and replays into it (stop `project
    /// analytics` first; dashboards are partial until it ends).
    Rebuild { name: String },
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Add a user; the password (12+ characters) is read from standard input. It stands
    /// unless --temporary (then the user must change it at their first log-in).
    Add {
        username: String,
        #[arg(long)]
        role: String,
        /// The user must change the password at their first log-in.
        #[arg(long)]
        temporary: bool,
        /// Why they are given access (recorded in `user_changes`).
        #[arg(long)]
        reason: String,
        /// Who is adding them (recorded in `user_changes`; default: $USER).
        #[arg(long, env = "USER")]
        actor: String,
    },
    /// Every user: name, role, whether disabled, last log-in, whether a password change is due.
    List,
    /// Disable a user: no log-in, and their tokens refused.
    Disable(AccountChange),
    /// Enable a disabled user again.
    Enable(AccountChange),
    /// Give a user another role; their tokens in the old one are refused.
    Role {
        #[command(flatten)]
        change: AccountChange,
        #[arg(long)]
        role: String,
    },
    /// Reset a user's password, read from standard input; their tokens are refused. It
    /// stands unless --temporary (then they must change it at their next log-in).
    Password {
        #[command(flatten)]
        change: AccountChange,
        /// The user must change the password at their next log-in.
        #[arg(long)]
        temporary: bool,
    },
}

/// Whose account changes, why, and who changes it (recorded in `user_changes`).
#[derive(Debug, clap::Args)]
struct AccountChange {
    username: String,
    /// Why (recorded in `user_changes`).
    #[arg(long)]
    reason: String,
    /// Who is making the change (recorded in `user_changes`; default: $USER).
    #[arg(long, env = "USER")]
    actor: String,
}

impl AccountChange {
    async fn run(self, pool: &PgPool, change: UserChange) -> anyhow::Result<ExitCode> {
        let by = ChangedBy::operator(&self.actor, &self.reason)?;
        ops::change_user(pool, &self.username, change, &by).await
    }
}

#[derive(Debug, Subcommand)]
enum SealCommand {
    /// Make a new Ed25519 seal key; prints the public key for auditors.
    Keygen {
        /// Write the private seed to this file (mode 600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Create the owner and application roles and the ledger's database, if missing; set
    /// their passwords from LIS_OWNER_PASSWORD / LIS_APP_PASSWORD when given.
    Init,
}

#[derive(Debug, Subcommand)]
enum CatalogueCommand {
    /// Import a catalogue CSV as a new version (nothing is imported if any row is bad).
    Import {
        file: PathBuf,
        /// Import only if no catalogue has been imported yet (first set-up).
        #[arg(long)]
        if_empty: bool,
        /// Who authorised this catalogue change (recorded with the version).
        #[arg(long, env = "USER", default_value = "operator")]
        imported_by: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute every hash chain and check the audit seals; exit 1 and name the first
    /// broken link of each damaged aggregate and every unsound seal.
    Verify {
        /// Also show that the log extends this signed checkpoint (kept outside the database).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Print and check the inclusion proof of the event at a global position.
    Prove {
        #[arg(long)]
        position: i64,
    },
}

/// Logs to standard error: colour only when it is a terminal, so that a log file or a
/// journal gets plain text, not escape codes, and never when `NO_COLOR` is set
/// (no-color.org: the terminal user's own setting, not this service's configuration).
pub fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// How long a pooled connection may sit idle before it is tested when taken.
const IDLE_BEFORE_TEST: std::time::Duration = std::time::Duration::from_secs(1);

async fn pool(url: &str, max: u32) -> anyhow::Result<PgPool> {
    pool_ending_idle_transactions(url, max, None).await
}

/// [`pool`], whose sessions the server ends when one sits idle in a transaction for
/// longer than `after`. When the network falls silent mid-transaction, the client gives
/// the connection up (a request's deadline, a worker's timeout), but its session lives
/// on at the server, holding the transaction's locks (a relay's Merkle leaves, a
/// worker's rows and offsets, an idempotency claim), until the server sees the
/// connection is dead: with the operating system's defaults, two hours.
async fn pool_ending_idle_transactions(
    url: &str,
    max: u32,
    after: Option<std::time::Duration>,
) -> anyhow::Result<PgPool> {
    let mut options = PgConnectOptions::from_str(url).context("invalid database URL")?;
    if let Some(after) = after {
        options = options.options([(
            "idle_in_transaction_session_timeout",
            format!("{}ms", after.as_millis()),
        )]);
    }
    PgPoolOptions::new()
        .max_connections(max)
        // While PostgreSQL is down, a request waits this long for a connection before
        // it is answered 503 (sqlx's default, 30 s, outlasts most clients' patience).
        .acquire_timeout(std::time::Duration::from_secs(5))
        // sqlx tests a connection by a round trip when it is returned to the pool, and by
        // default again when it is taken: a third round trip for every statement. Off,
        // commands through the API ran up to a third faster at 64 clients
        // (docs/benchmarks.md, benchmark 1, step 6). Only a connection that sat idle
        // for more than a second is tested when taken: under load none has, and one
        // that went silently dead while idle (the network dropped it without a reset)
        // fails its test within the acquire timeout, a 503, where its first statement
        // would have waited for TCP to give up, a quarter of an hour. Tested in
        // `api/tests/faults_postgres.rs`.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > IDLE_BEFORE_TEST {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to {}", redact(url)))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..s + 3], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

pub async fn run(args: Args, config: Config) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Db {
            command: DbCommand::Init,
        } => {
            let options = PgConnectOptions::from_str(&config.database_url)
                .context("invalid LIS_DATABASE_URL")?;
            let database = options
                .get_database()
                .context("LIS_DATABASE_URL names no database")?
                .to_string();
            lis_eventstore_migrations::bootstrap(&config.admin_database_url, &database).await?;
            let owner = std::env::var("LIS_OWNER_PASSWORD").ok();
            let app = std::env::var("LIS_APP_PASSWORD").ok();
            if owner.is_some() || app.is_some() {
                lis_eventstore_migrations::set_passwords(
                    &config.admin_database_url,
                    owner.as_deref(),
                    app.as_deref(),
                )
                .await?;
                say!("role passwords set from LIS_OWNER_PASSWORD / LIS_APP_PASSWORD");
            }
            say!("roles and database `{database}` are ready");
        }
        Command::Migrate => {
            let pool = pool(&config.migration_database_url, 2).await?;
            lis_eventstore_migrations::migrate(&pool).await?;
            say!("migrations applied");
        }
        Command::Catalogue {
            command:
                CatalogueCommand::Import {
                    file,
                    if_empty,
                    imported_by,
                },
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let pool = pool(&config.database_url, 2).await?;
            if if_empty {
                if let Some(version) = catalogue::current_version(&pool).await? {
                    say!("catalogue {version} is already imported; nothing to do");
                    return Ok(ExitCode::SUCCESS);
                }
            }
            match catalogue::import(&pool, &text, &file.display().to_string(), &imported_by).await {
                Ok(report) => say!(
                    "imported {} tests as catalogue {}",
                    report.tests,
                    report.version
                ),
                Err(catalogue::CatalogueError::File(errors)) => {
                    eprintln!(
                        "{}: nothing imported; {} problem(s):",
                        file.display(),
                        errors.0.len()
                    );
                    for e in &errors.0 {
                        eprintln!("  {e}");
                    }
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Command::Audit {
            command: AuditCommand::Verify { checkpoint },
        } => return verify(&config, checkpoint.as_deref()).await,
        Command::Audit {
            command: AuditCommand::Prove { position },
        } => {
            let pool = pool(&config.database_url, 2).await?;
            return ops::prove(&config, &pool, position).await;
        }
        Command::Relay => {
            let pool = pool_ending_idle_transactions(
                &config.database_url,
                4,
                Some(Duration::from_secs(config.worker_timeout_secs)),
            )
            .await?;
            return ops::relay(&config, pool).await;
        }
        Command::Project { names } => {
            // Start-up checks only: each read model opens two connections of its own
            // (with these options).
            let pool = pool_ending_idle_transactions(
                &config.database_url,
                2,
                Some(Duration::from_secs(config.worker_timeout_secs)),
            )
            .await?;
            return ops::project(&config, pool, names).await;
        }
        Command::Projections {
            command: ProjectionsCommand::Rebuild { name },
        } => {
            // A connection per model rebuilt, one to read the store, one to spare.
            let pool = pool(
                &config.database_url,
                lis_projections::models::all().len() as u32 + 2,
            )
            .await?;
            return ops::rebuild(&config, pool, &name).await;
        }
        Command::Seal {
            command: SealCommand::Keygen { out },
        } => return ops::keygen(&config, out.as_deref()),
        Command::Demo {
            orders,
            tests,
            seed,
            if_empty,
            concurrency,
            mix,
        } => {
            let pool = pool(&config.database_url, 4.max(concurrency as u32 + 2)).await?;
            let size = tests.map_or(DaySize::Orders(orders), DaySize::Tests);
            let mix = mix.as_deref();
            return ops::demo(&config, &pool, size, seed, if_empty, concurrency, mix).await;
        }
        Command::Serve => {
            // No transaction of a request outlives its deadline; one left by a request
            // cut short on a silent network is ended by the server soon after.
            let pool = pool_ending_idle_transactions(
                &config.database_url,
                config.db_max_connections,
                Some(Duration::from_secs(config.request_timeout_secs + 5)),
            )
            .await?;
            return ops::serve(&config, pool).await;
        }
        Command::Keys {
            command: KeysCommand::Generate { out },
        } => return ops::generate_kek(out.as_deref()),
        Command::Keys {
            command: KeysCommand::Rotate { reason, actor },
        } => {
            let owner = pool(&config.migration_database_url, 2).await?;
            return ops::rotate_kek(&config, owner, &actor, &reason).await;
        }
        Command::Patients {
            command:
                PatientsCommand::Erase {
                    patient_id,
                    reason,
                    actor,
                },
        } => {
            let pool = pool(&config.database_url, 2).await?;
            return ops::erase_patient(&config, pool, &patient_id, &reason, &actor).await;
        }
        Command::Bench { command } => {
            let app = pool(&config.database_url, 8).await?;
            let owner = pool(&config.migration_database_url, 2).await?;
            // On Ctrl-C or SIGTERM the bench returns, so the roles it started are stopped.
            return tokio::select! {
                r = crate::bench::run(&config, app, owner, command) => r,
                _ = ops::shutdown_signal() => Ok(ExitCode::FAILURE),
            };
        }
        Command::Users { command } => {
            let pool = pool(&config.database_url, 2).await?;
            return match command {
                UsersCommand::Add {
                    username,
                    role,
                    temporary,
                    reason,
                    actor,
                } => {
                    let by = ChangedBy::operator(&actor, &reason)?;
                    ops::add_user(&pool, &username, &role, temporary, &by).await
                }
                UsersCommand::List => ops::list_users(&config, &pool).await,
                UsersCommand::Disable(a) => a.run(&pool, UserChange::Disable).await,
                UsersCommand::Enable(a) => a.run(&pool, UserChange::Enable).await,
                UsersCommand::Role { change, role } => {
                    change.run(&pool, UserChange::Role(role)).await
                }
                UsersCommand::Password { change, temporary } => {
                    change.run(&pool, UserChange::Password { temporary }).await
                }
            };
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify(config: &Config, checkpoint: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let pool = pool(&config.database_url, 2).await?;
    let total = audit::count_events(&pool).await?;
    let bar = ProgressBar::new(total.max(0) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events ({per_sec}, eta {eta})")
            .expect("static progress template"),
    );
    let started = Instant::now();
    let report = audit::verify_chains(&pool, &mut |n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let rate = if secs > 0.0 {
        report.events as f64 / secs
    } else {
        0.0
    };
    say!(
        "checked {} events in {} aggregates in {:.2} s ({:.0} events/s)",
        report.events,
        report.aggregates,
        secs,
        rate
    );
    if report.is_intact() {
        say!("every hash chain is intact");
    } else {
        say!("{} damaged chain(s):", report.broken.len());
        for b in &report.broken {
            say!("  {b}");
        }
    }
    let snapshots = lis_commands::snapshot_audit::verify_snapshots(&pool, &mut |_| {}).await?;
    if snapshots.is_intact() {
        say!(
            "{} snapshot(s) are the state of their events ({} of an older shape, unused)",
            snapshots.checked,
            snapshots.unused
        );
    } else {
        say!(
            "{} snapshot(s) differ from the state of their events:",
            snapshots.differing.len()
        );
        for d in &snapshots.differing {
            say!("  {d}");
        }
    }
    let seals = ops::verify_seals(config, &pool, checkpoint).await?;
    Ok(if report.is_intact() && snapshots.is_intact() && seals {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/lis"),
            "postgres://app@db:5432/lis"
        );
        assert_eq!(redact("postgres://app@db/lis"), "postgres://app@db/lis");
    }
}
