//! The long-running roles and the audit-seal commands: `relay`, `project`,
//! `projections rebuild`, `seal keygen`, `audit prove`, and the seal half of
//! `audit verify`.

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use indicatif::{ProgressBar, ProgressStyle};
use lis_api::config::Config;
use lis_api::http::users::{self, ChangedBy, Password, PersonRole};
use lis_projections::models;
use lis_projections::models::analytics::Analytics;
use lis_projections::projection::Projection;
use lis_projections::relay::{KafkaConfig, Relay, RelayConfig, Topics};
use lis_projections::seal::{NoteVerifier, Sealer};
use lis_projections::seal_audit;
use lis_projections::worker::{self, Batching, WorkerError};
use sqlx::PgPool;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn topics(config: &Config) -> Topics {
    Topics {
        orders: config.topics.orders.clone(),
        samples: config.topics.samples.clone(),
        results: config.topics.results.clone(),
        patients: config.topics.patients.clone(),
        seals: config.topics.seals.clone(),
    }
}

/// The signing seed: `LIS_SEAL_KEY`, else the key file.
fn seal_seed(config: &Config) -> anyhow::Result<String> {
    if let Some(k) = &config.seal_key {
        return Ok(k.expose().to_string());
    }
    std::fs::read_to_string(&config.seal_key_file).with_context(|| {
        format!(
            "no seal key: set LIS_SEAL_KEY or create {} with `lisledger seal keygen --out {}`",
            config.seal_key_file, config.seal_key_file
        )
    })
}

pub fn sealer(config: &Config) -> anyhow::Result<Sealer> {
    Ok(Sealer::from_base64_seed(
        &config.seal_key_name,
        &seal_seed(config)?,
    )?)
}

/// The key checkpoints are verified with: the public key if given, else the signing key's.
pub fn verifier(config: &Config) -> anyhow::Result<NoteVerifier> {
    match &config.seal_public_key {
        Some(p) => Ok(NoteVerifier::from_base64(&config.seal_key_name, p)?),
        None => Ok(sealer(config)?.verifier()),
    }
}

/// Resolves when the process is asked to stop (SIGTERM or Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

pub async fn relay(config: &Config, pool: PgPool) -> anyhow::Result<ExitCode> {
    let relay_config = RelayConfig {
        kafka: config.kafka_brokers.as_ref().map(|b| KafkaConfig {
            brokers: b.clone(),
            topics: topics(config),
            partitions: config.kafka_partitions as i32,
        }),
        origin: config.seal_origin.clone(),
        seal_every_events: config.seal_every_events,
        seal_every: Duration::from_secs(config.seal_every_secs),
        timeout: Duration::from_secs(config.worker_timeout_secs),
        lease: Duration::from_secs(config.relay_lease_secs),
        ..RelayConfig::default()
    };
    if relay_config.kafka.is_none() {
        tracing::info!("LIS_KAFKA_BROKERS is not set: the relay only seals (single-node mode)");
    }
    lis_projections::feed::check_transaction_counter(&pool).await?;
    lis_projections::relay::check_server(&pool).await?;
    let relay = Relay::new(pool, relay_config, sealer(config)?)?;
    relay.run(shutdown_signal()).await;
    Ok(ExitCode::SUCCESS)
}

/// The analytics projection on LIS_MONGO_URL's LIS_MONGO_DATABASE.
async fn connect_analytics(config: &Config) -> anyhow::Result<Analytics> {
    let url = config
        .mongo_url
        .as_deref()
        .context("the analytics projection needs LIS_MONGO_URL")?;
    Ok(Analytics::connect(url, &config.mongo_database)
        .await
        .context("cannot reach MongoDB")?
        .in_time_zone(config.lab_time_zone))
}

pub async fn project(
    config: &Config,
    pool: PgPool,
    names: Vec<String>,
) -> anyhow::Result<ExitCode> {
    lis_projections::feed::check_transaction_counter(&pool).await?;
    let wants_analytics =
        names.is_empty() && config.mongo_url.is_some() || names.iter().any(|n| n == "analytics");
    let mut projections = if names.is_empty() {
        models::all()
    } else {
        names
            .iter()
            .filter(|n| *n != "analytics")
            .map(|n| models::by_name(n))
            .collect::<Result<Vec<_>, _>>()?
    };
    if wants_analytics {
        let analytics = connect_analytics(config).await?;
        projections.push(std::sync::Arc::new(analytics));
    }
    let batching = Batching {
        max: config.project_batch,
        linger: Duration::from_millis(config.project_linger_ms),
        timeout: Duration::from_secs(config.worker_timeout_secs),
        ..Batching::default()
    };
    let mut tasks = tokio::task::JoinSet::new();
    for p in projections {
        // Each model gets connections of its own: a connection's prepared statements
        // are planned for one model's search_path, and PostgreSQL plans them all again
        // whenever a shared connection moves to another model's schema.
        let pool = pool
            .options()
            .clone()
            .max_connections(2)
            .connect_lazy_with((*pool.connect_options()).clone());
        let brokers = config.kafka_brokers.clone();
        let t = topics(config);
        let group = format!("{}-{}", config.kafka_group_prefix, p.name());
        tasks.spawn(async move {
            let name = p.name();
            loop {
                let result = match &brokers {
                    Some(b) => worker::run_from_kafka(pool.clone(), p.clone(), b, &group, &t.event_topics(), batching).await,
                    None => worker::run_from_feed(pool.clone(), p.clone(), batching).await,
                };
                match result {
                    Ok(()) => return Ok::<(), WorkerError>(()),
                    Err(e) if e.is_fatal() => {
                        tracing::error!(projection = name, error = %e, "projection stopped: needs attention");
                        return Err(e);
                    }
                    Err(e) => {
                        tracing::warn!(projection = name, error = %e, "projection failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
    tokio::select! {
        _ = shutdown_signal() => Ok(ExitCode::SUCCESS),
        Some(done) = tasks.join_next() => {
            match done {
                Ok(Ok(())) => Ok(ExitCode::SUCCESS),
                Ok(Err(e)) => bail!("projection stopped: {e}"),
                Err(e) => bail!("projection task failed: {e}"),
            }
        }
    }
}

/// Rebuilds one read model, or `all` of them from one read of the event store.
pub async fn rebuild(config: &Config, pool: PgPool, name: &str) -> anyhow::Result<ExitCode> {
    let chosen: Vec<std::sync::Arc<dyn Projection>> = match name {
        "all" => models::all(),
        "analytics" => {
            // MongoDB has no schema to build aside and swap in: the analytics database
            // is emptied and replayed in place (after a restore it may be empty, or
            // hold another site's facts, while the restored offsets say it is done).
            let analytics = connect_analytics(config).await?;
            // The live offsets go first, with the facts they describe: a rebuild that
            // fails half-way then leaves a model that replays from the start (single
            // node) or stops at a gap (Kafka), never empty facts under offsets that say
            // every event is there.
            let live = lis_projections::projection::schema_of(analytics.name());
            lis_projections::projection::drop_schema(&mut *pool.acquire().await?, &live)
                .await
                .with_context(|| format!("cannot drop {live}"))?;
            analytics
                .database()
                .drop()
                .await
                .context("cannot empty the analytics database")?;
            say!(
                "emptied MongoDB database {}; replaying the event store into it",
                config.mongo_database
            );
            vec![std::sync::Arc::new(analytics)]
        }
        one => vec![models::by_name(one)?],
    };
    let projections: Vec<&dyn Projection> = chosen.iter().map(|p| p.as_ref()).collect();
    let total = lis_commands::audit::count_events(&pool).await?;
    let bar = ProgressBar::new(total.max(0) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events ({per_sec}, eta {eta})")
            .expect("static template"),
    );
    let started = Instant::now();
    let reports = worker::rebuild_all(&pool, &projections, &mut |n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    for (p, report) in projections.iter().zip(reports) {
        say!(
            "rebuilt {} from {} events in {secs:.2} s ({:.0} events/s); the new model is live",
            p.name(),
            report.events,
            if secs > 0.0 {
                report.events as f64 / secs
            } else {
                0.0
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn keygen(config: &Config, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let seed: [u8; 32] = rand::random();
    let seed = B64.encode(seed);
    let public = Sealer::from_base64_seed(&config.seal_key_name, &seed)?
        .verifier()
        .public_key_base64();
    match out {
        Some(path) => {
            if path.exists() {
                bail!(
                    "{} exists; refusing to overwrite a seal key",
                    path.display()
                );
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            write_private(path, &seed)?;
            say!("seal key written to {}", path.display());
        }
        None => say!("LIS_SEAL_KEY={seed}"),
    }
    say!("LIS_SEAL_PUBLIC_KEY={public}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    Ok(std::fs::write(path, contents)?)
}

/// The seal half of `audit verify`. Returns whether the seals are sound.
pub async fn verify_seals(
    config: &Config,
    pool: &PgPool,
    external: Option<&Path>,
) -> anyhow::Result<bool> {
    let checkpoints: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_checkpoints")
        .fetch_one(pool)
        .await?;
    if checkpoints == 0 && external.is_none() {
        say!("no audit seals yet (run `lisledger relay` to seal the log)");
        return Ok(true);
    }
    let verifier = verifier(config).context("cannot check the audit seals")?;
    let report = seal_audit::verify_seals(pool, &verifier, &mut |_| {}).await?;
    say!(
        "checked {} sealed events and {} signed checkpoints",
        report.leaves,
        report.checkpoints
    );
    let mut sound = report.problems.is_empty();
    for p in &report.problems {
        say!("  {p}");
    }
    if let Some(path) = external {
        let note = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        match seal_audit::verify_external(pool, &verifier, &note).await {
            Ok(cp) => say!(
                "the log extends the checkpoint in {} (size {})",
                path.display(),
                cp.tree_size
            ),
            Err(e) => {
                say!("  {}: {e}", path.display());
                sound = false;
            }
        }
    }
    if sound {
        say!("every audit seal is sound");
    }
    Ok(sound)
}

pub async fn prove(config: &Config, pool: &PgPool, position: i64) -> anyhow::Result<ExitCode> {
    let proof = seal_audit::prove(pool, &verifier(config)?, position).await?;
    say!("{}", serde_json::to_string_pretty(&proof)?);
    Ok(if proof.verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The patient key vault, with the KEK from `LIS_KEK` or `LIS_KEK_FILE` (and, during a
/// rotation, the previous one from `LIS_KEK_PREVIOUS` or `LIS_KEK_PREVIOUS_FILE`): a
/// missing, malformed or wrong KEK stops start-up with a message that says which.
pub async fn vault(
    config: &Config,
    pool: &PgPool,
) -> anyhow::Result<std::sync::Arc<lis_commands::keys::PatientVault>> {
    let vault = lis_commands::keys::PatientVault::connect_with(pool.clone(), keks(config)?)
        .await
        .context("opening the patient key vault")?;
    Ok(std::sync::Arc::new(vault))
}

/// The configured KEKs: the current one, and the previous one when set.
pub fn keks(config: &Config) -> anyhow::Result<lis_commands::keys::Keks> {
    use lis_commands::keys::{Keks, KeyError, LocalKek};
    use std::sync::Arc;
    let text = match &config.kek {
        Some(k) => k.expose().to_string(),
        None => std::fs::read_to_string(&config.kek_file).map_err(|e| {
            anyhow::anyhow!(
                "{} (LIS_KEK is unset and {} cannot be read: {e})",
                KeyError::MissingKek,
                config.kek_file
            )
        })?,
    };
    let current = Arc::new(LocalKek::from_base64(&text).context("LIS_KEK / LIS_KEK_FILE")?);
    let previous =
        match (&config.kek_previous, &config.kek_previous_file) {
            (Some(k), _) => Some(k.expose().to_string()),
            (None, Some(file)) => Some(std::fs::read_to_string(file).map_err(|e| {
                anyhow::anyhow!("LIS_KEK_PREVIOUS_FILE: {file} cannot be read: {e}")
            })?),
            (None, None) => None,
        };
    Ok(match previous {
        None => Keks::new(current),
        Some(text) => {
            let previous =
                LocalKek::from_base64(&text).context("LIS_KEK_PREVIOUS / LIS_KEK_PREVIOUS_FILE")?;
            Keks::rotating(current, Arc::new(previous))?
        }
    })
}

/// Re-wraps every stored key from the previous KEK (`LIS_KEK_PREVIOUS`) to the current
/// one (`LIS_KEK`), as the owner role, and says what is left to do.
pub async fn rotate_kek(
    config: &Config,
    owner: PgPool,
    actor: &str,
    reason: &str,
) -> anyhow::Result<ExitCode> {
    use lis_commands::keys::{rotate, RotationBy};
    let keks = keks(config)?;
    if keks.previous().is_none() {
        bail!("keys rotate: set LIS_KEK_PREVIOUS (or LIS_KEK_PREVIOUS_FILE) to the key-encryption key being retired, and LIS_KEK to the new one (`lisledger keys generate`)");
    }
    let actor = lis_domain::actor::ActorId::parse(actor)
        .map_err(|e| anyhow::anyhow!("--actor: {}", e.message))?;
    let reason = lis_domain::text::Reason::parse(reason)
        .map_err(|e| anyhow::anyhow!("--reason: {}", e.message))?;
    let started = std::time::Instant::now();
    let by = RotationBy {
        actor: actor.as_str(),
        reason: reason.as_str(),
    };
    let report = rotate(&owner, &keks, by, lis_commands::keys::rotate::ROTATE_BATCH).await?;
    say!(
        "re-wrapped {} ledger keys and {} patient keys from {} to {} in {:.1} s (run {}); no live key was wrapped by {} when it finished: unset LIS_KEK_PREVIOUS and restart every role that holds the KEK (serve, demo, patients)",
        report.ledger_keys,
        report.patient_keys,
        report.from,
        report.to,
        started.elapsed().as_secs_f64(),
        report.run,
        report.from
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes a fresh key-encryption key (base64) to `out`, or prints it.
pub fn generate_kek(out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let key = lis_commands::keys::LocalKek::generate();
    match out {
        Some(path) => {
            if path.exists() {
                bail!("{} exists; refusing to overwrite a key-encryption key (every patient key is wrapped by it)", path.display());
            }
            write_private(path, &format!("{key}\n"))?;
            say!("wrote a key-encryption key to {} (back it up apart from the database: without it no identity can be read)", path.display());
        }
        None => say!("{key}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Erases a patient (crypto-shredding), as the operator named by `actor`.
pub async fn erase_patient(
    config: &Config,
    pool: PgPool,
    patient: &str,
    reason: &str,
    actor: &str,
) -> anyhow::Result<ExitCode> {
    use lis_commands::{CommandContext, CommandError};
    use lis_domain::actor::{Actor, ActorId, Role};
    let patient = lis_domain::ids::PatientId::parse(patient)
        .map_err(|e| anyhow::anyhow!("patient id `{patient}`: {e}"))?;
    let reason = lis_domain::text::Reason::parse(reason)
        .map_err(|e| anyhow::anyhow!("--reason: {}", e.message))?;
    let actor = ActorId::parse(actor).map_err(|e| anyhow::anyhow!("--actor: {}", e.message))?;
    let ledger = ledger(config, pool.clone()).await?;
    let mut ctx = CommandContext::new(Actor::new(actor, Role::Admin));
    ctx.client_addr = Some("cli".into());
    match ledger.erase_patient(patient, reason, &ctx).await {
        Ok(outcome) => {
            say!(
                "patient {patient} erased: key destroyed, event at position {} (read models drop the patient's rows as they catch up)",
                outcome.position
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(CommandError::NotFound(m)) | Err(CommandError::Rejected { message: m, .. }) => {
            say!("not erased: {m}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// The ledger as configured, with its key vault.
pub async fn ledger(config: &Config, pool: PgPool) -> anyhow::Result<lis_commands::Ledger> {
    let vault = vault(config, &pool).await?;
    Ok(lis_commands::Ledger::new(
        pool,
        lis_commands::LedgerConfig {
            snapshot_every: config.snapshot_every,
            command_timeout: std::time::Duration::from_secs(config.command_timeout_secs),
            policy: lis_domain::services::LabPolicy {
                four_eyes: config.four_eyes,
                time_zone: config.lab_time_zone,
            },
            ..Default::default()
        },
        vault,
    ))
}

/// The token key: `LIS_JWT_SECRET`, else the secret file. At least 32 bytes.
fn jwt_secret(config: &Config) -> anyhow::Result<Vec<u8>> {
    let secret = match &config.jwt_secret {
        Some(s) => s.expose().to_string(),
        None => std::fs::read_to_string(&config.jwt_secret_file).with_context(|| {
            format!(
                "no token key: set LIS_JWT_SECRET or write 32+ random bytes to {}",
                config.jwt_secret_file
            )
        })?,
    };
    let secret = secret.trim().as_bytes().to_vec();
    if secret.len() < 32 {
        bail!("the token key must be at least 32 bytes");
    }
    Ok(secret)
}

pub async fn serve(config: &Config, pool: PgPool) -> anyhow::Result<ExitCode> {
    use lis_api::http::{self, auth::AuthConfig, AppState};
    let auth = AuthConfig {
        secret: jwt_secret(config)?,
        issuer: config.jwt_issuer.clone(),
        audience: config.jwt_audience.clone(),
        ttl_secs: config.token_ttl_secs,
    };
    let ledger = ledger(config, pool.clone()).await?;
    let analytics = match &config.mongo_url {
        Some(url) => Some(std::sync::Arc::new(
            Analytics::connect(url, &config.mongo_database)
                .await
                .context("cannot reach MongoDB")?,
        )),
        None => None,
    };
    let revocations = http::revocation::Revocations::start(pool.clone())
        .await
        .context("reading revoked tokens (is the database migrated?)")?;
    let state = AppState {
        pool,
        ledger: std::sync::Arc::new(ledger),
        auth: std::sync::Arc::new(auth),
        kafka: match &config.kafka_brokers {
            Some(b) => Some(std::sync::Arc::new(
                lis_projections::kafka_health::KafkaProbe::new(b)
                    .context("Kafka client for the readiness probe")?,
            )),
            None => None,
        },
        analytics,
        metrics: Default::default(),
        per_address: std::sync::Arc::new(http::limits::RateLimiter::new(config.rate_per_address)),
        per_user: std::sync::Arc::new(http::limits::RateLimiter::new(config.rate_per_user)),
        in_flight: http::overload::InFlight::new(config.max_in_flight),
        seal_verifier: verifier(config).ok(),
        revocations,
        lockout: lockout(config),
        public_url: config.public_url.clone(),
        request_timeout: std::time::Duration::from_secs(config.request_timeout_secs),
        cors_origins: config
            .cors_origins
            .iter()
            .map(|o| {
                o.parse()
                    .with_context(|| format!("LIS_CORS_ORIGINS: `{o}` is not a header value"))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    http::prepare_read_models(&state.pool).await?;
    if !http::settled::can_see_other_sessions(&state.pool).await? {
        tracing::warn!(
            "the application role cannot see other roles' sessions (pg_read_all_stats): \
             the auditors' pages by time answer 503 while one is connected; run `lisledger db init`"
        );
    }
    let listener = tokio::net::TcpListener::bind(&config.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving the LIS Ledger API");
    axum::serve(
        listener,
        http::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// When failed log-ins lock an account, as configured.
fn lockout(config: &Config) -> lis_api::http::lockout::Lockout {
    lis_api::http::lockout::Lockout {
        after: config.login_lock_after,
        window: std::time::Duration::from_secs(config.login_lock_secs),
        gate: Default::default(),
    }
}

/// A user name as typed on the command line.
fn user_named(username: &str) -> anyhow::Result<lis_domain::actor::ActorId> {
    lis_domain::actor::ActorId::parse(username)
        .map_err(|e| anyhow::anyhow!("user name: {}", e.message))
}

/// A person's role as typed on the command line.
fn person_role(role: &str) -> anyhow::Result<PersonRole> {
    let role =
        lis_domain::actor::Role::parse(role).map_err(|e| anyhow::anyhow!("role: {}", e.message))?;
    PersonRole::parse(role).map_err(|e| anyhow::anyhow!("role: {e}"))
}

/// A password from standard input (one line).
fn password_from_stdin() -> anyhow::Result<Password> {
    let mut password = String::new();
    std::io::stdin()
        .read_line(&mut password)
        .context("reading the password from standard input")?;
    Ok(Password::parse(password.trim_end_matches(['\n', '\r']))?)
}

pub async fn add_user(
    pool: &PgPool,
    username: &str,
    role: &str,
    temporary: bool,
    by: &ChangedBy,
) -> anyhow::Result<ExitCode> {
    let (user, role) = (user_named(username)?, person_role(role)?);
    let password = password_from_stdin()?;
    users::add(pool, &user, role, &password, temporary, by).await?;
    let stands = if temporary { "temporary" } else { "standing" };
    say!("user {user} added with role {role} and a {stands} password");
    Ok(ExitCode::SUCCESS)
}

pub async fn list_users(config: &Config, pool: &PgPool) -> anyhow::Result<ExitCode> {
    let flag = |set: bool, shown: &'static str| if set { shown } else { "-" };
    for a in users::list(pool, &lockout(config)).await? {
        say!(
            "{:<32} {:<13} {:<8} {:<15} last log-in {}{}",
            a.username,
            a.role,
            flag(a.disabled, "disabled"),
            flag(a.password_change_required, "must-change"),
            a.last_login.map_or("never".into(), |at| at.to_rfc3339()),
            a.locked_until.map_or(String::new(), |at| format!(
                ", locked until {}",
                at.to_rfc3339()
            ))
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A change to a user's account from the command line.
pub enum UserChange {
    Disable,
    Enable,
    Role(String),
    Password { temporary: bool },
}

pub async fn change_user(
    pool: &PgPool,
    username: &str,
    change: UserChange,
    by: &ChangedBy,
) -> anyhow::Result<ExitCode> {
    let user = user_named(username)?;
    let done = match change {
        UserChange::Disable => users::set_disabled(pool, &user, true, by)
            .await
            .map(|()| "disabled"),
        UserChange::Enable => users::set_disabled(pool, &user, false, by)
            .await
            .map(|()| "enabled"),
        UserChange::Role(role) => users::set_role(pool, &user, person_role(&role)?, by)
            .await
            .map(|()| "given the new role"),
        UserChange::Password { temporary } => {
            let password = password_from_stdin()?;
            users::reset_password(pool, &user, &password, temporary, by)
                .await
                .map(|()| {
                    if temporary {
                        "given a new temporary password"
                    } else {
                        "given a new standing password"
                    }
                })
        }
    }?;
    say!("user {user} {done}; their earlier tokens are refused from now on");
    Ok(ExitCode::SUCCESS)
}

pub async fn demo(
    config: &Config,
    pool: &PgPool,
    size: crate::demo::DaySize,
    seed: u64,
    if_empty: bool,
    concurrency: usize,
    mix: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    if if_empty && events > 0 {
        say!("the ledger already holds {events} events; no demo loaded");
        return Ok(ExitCode::SUCCESS);
    }
    let mix = crate::mix::in_force(pool, mix).await?;
    let ledger = ledger(config, pool.clone()).await?;
    let started = std::time::Instant::now();
    let report = crate::demo::run(&ledger, &mix, size, seed, concurrency).await?;
    say!(
        "demo lab day: {} orders, {} tests, {} tubes ({} rejected and recollected), {} results ({} critical, {} amended) in {:.1} s",
        report.orders, report.tests, report.samples, report.rejected, report.results, report.critical, report.amended,
        started.elapsed().as_secs_f64()
    );
    // Demo users, one per role, with passwords made now and shown once.
    use lis_domain::actor::{ActorId, Role};
    for (name, role) in [
        ("reception.demo", Role::Reception),
        ("tech.demo", Role::Technologist),
        ("path.demo", Role::Pathologist),
        ("clinician.demo", Role::Clinician),
        ("auditor.demo", Role::Auditor),
        ("analyst.demo", Role::Analyst),
    ] {
        let password = B64.encode(rand::random::<[u8; 12]>());
        let by = ChangedBy::tool("lisledger demo", "a demo user of the synthetic lab day");
        match users::add_user(
            pool,
            &ActorId::parse(name).expect("static"),
            role,
            &password,
            &by,
        )
        .await
        {
            Ok(()) => say!("  user {name:<15} role {role:<13} password {password}"),
            Err(users::UserError::Exists(_)) => {
                say!("  user {name:<15} exists (password unchanged)")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(ExitCode::SUCCESS)
}
