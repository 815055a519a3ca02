//! The relay: publishes the ordered feed to Kafka, in commit order and without loss, and
//! seals it into the Merkle log.
//!
//! One relay leads at a time (a PostgreSQL advisory lock held on a dedicated connection);
//! others wait as standbys and take over when the leader's connection dies, or when the
//! leader falls silent for its lease (see [`RelayConfig::lease`]). Each batch is
//! sent with the idempotent producer (acks=all), keyed by aggregate id, and the feed
//! checkpoint — together with the batch's Merkle leaves and any new signed checkpoint —
//! is committed only after every delivery report is in. A crash therefore means
//! publishing a batch again, never losing one; consumers deduplicate on
//! (aggregate id, sequence). Without Kafka configured the relay only seals.

use crate::envelope::Envelope;
use crate::feed::{
    load_checkpoint, read_after, save_checkpoint, FeedError, FeedPosition, StoredEvent,
};
use crate::merkle::CompactRange;
use crate::poll::{Poller, Polling};
use crate::seal::{event_leaf, Checkpoint, Sealer};
use lis_commands::connection::{self, connection, scoped_for};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use sqlx::{Connection, PgConnection, PgPool};
use std::convert::Infallible;
use std::time::{Duration, Instant};

/// The advisory lock that makes one relay the leader.
pub const LEADER_LOCK: i64 = 7_302_417;

/// Kafka topic names, one per aggregate type, plus the seals.
#[derive(Debug, Clone)]
pub struct Topics {
    pub orders: String,
    pub samples: String,
    pub results: String,
    /// Patient-level events (erasure).
    pub patients: String,
    pub seals: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            orders: "lis.orders".into(),
            samples: "lis.samples".into(),
            results: "lis.results".into(),
            patients: "lis.patients".into(),
            seals: "lis.audit-seals".into(),
        }
    }
}

impl Topics {
    pub fn for_aggregate(&self, aggregate_type: &str) -> Option<&str> {
        match aggregate_type {
            "Order" => Some(&self.orders),
            "Sample" => Some(&self.samples),
            "Result" => Some(&self.results),
            "Patient" => Some(&self.patients),
            _ => None,
        }
    }

    pub fn event_topics(&self) -> [&str; 4] {
        [&self.orders, &self.samples, &self.results, &self.patients]
    }
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topics: Topics,
    /// Partitions of topics the relay creates.
    pub partitions: i32,
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Name of the relay's feed checkpoint.
    pub consumer: String,
    pub kafka: Option<KafkaConfig>,
    pub batch_size: i64,
    /// How soon to read the feed again when it had nothing new.
    pub polling: Polling,
    /// The log's origin line in signed checkpoints (e.g. `lisledger/<lab>`).
    pub origin: String,
    /// Seal after this many new events…
    pub seal_every_events: u64,
    /// …or after this long, if anything new was logged.
    pub seal_every: Duration,
    /// How long a batch (its reads and writes, and its Kafka sends) or a look at the
    /// leader lock may take before it is given up and started again ([`Relay::bounded`]).
    pub timeout: Duration,
    /// Merkle leaves read per statement when the relay takes the lead.
    pub leaves_per_read: i64,
    /// How long the leader lock outlives a leader that stopped answering. The server ends
    /// the lock's session after this long without a statement (`idle_session_timeout`
    /// on that session alone), which frees the lock for a standby: a leader whose host
    /// froze or lost the network would otherwise hold it until the server's TCP gave
    /// up on the connection (two hours with the operating system's defaults). The
    /// leader looks at its lock every tenth of the lease (at most every second), and
    /// stops leading when a look goes unanswered for half of it, before the server
    /// frees the lock.
    pub lease: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            consumer: "relay".into(),
            kafka: None,
            batch_size: 500,
            polling: Polling::default(),
            origin: "lisledger/local".into(),
            seal_every_events: 1000,
            seal_every: Duration::from_secs(60),
            timeout: Duration::from_secs(120),
            leaves_per_read: 100_000,
            lease: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Feed(#[from] FeedError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("kafka error: {0}")]
    Kafka(#[from] KafkaError),
    #[error("event {position} has aggregate type {aggregate_type}, which has no topic")]
    NoTopic {
        position: i64,
        aggregate_type: String,
    },
    #[error("the leader lock connection was lost")]
    LostLeadership,
    #[error("not done within {0:?} (the database did not answer): given up, its connections closed; started again")]
    TimedOut(Duration),
    #[error("PostgreSQL {0} is too old for the relay: 14 or later is needed (the leader's lease is its idle_session_timeout)")]
    ServerTooOld(String),
}

/// Refuses a server older than PostgreSQL 14, which has no `idle_session_timeout`: the
/// leader could not take its lease, and would fail to lead, every second, for good.
pub async fn check_server(pool: &PgPool) -> Result<(), RelayError> {
    let (number, version): (i32, String) = sqlx::query_as(
        "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
    )
    .fetch_one(pool)
    .await?;
    leases_on(number, version)
}

/// Whether a server of `server_version_num` `number` (`version` as it names itself) can
/// hold the leader's lease.
fn leases_on(number: i32, version: String) -> Result<(), RelayError> {
    if number < 140_000 {
        return Err(RelayError::ServerTooOld(version));
    }
    Ok(())
}

/// What the leader keeps between batches (rebuilt from the database on every takeover).
struct State {
    at: FeedPosition,
    log: CompactRange,
    sealed_size: u64,
    sealed_at: Instant,
}

pub struct Relay {
    pool: PgPool,
    config: RelayConfig,
    /// Made anew after a failed publish ([`Relay::renew_producer`]).
    producer: Option<FutureProducer>,
    sealer: Sealer,
    /// This relay's last lock session, while it leads or after it was given up
    /// unanswered ([`Relay::end_abandoned_session`]).
    lock_session: Option<Session>,
}

/// A server session, told apart from a later one with the same process id by its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
struct Session {
    pid: i32,
    backend_start: chrono::DateTime<chrono::Utc>,
}

/// The idempotent producer of `config`'s Kafka, if it has one.
fn make_producer(config: &RelayConfig) -> Result<Option<FutureProducer>, RelayError> {
    Ok(match &config.kafka {
        Some(k) => Some(
            ClientConfig::new()
                .set("bootstrap.servers", &k.brokers)
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("max.in.flight.requests.per.connection", "5")
                .set("message.timeout.ms", "30000")
                .set("linger.ms", "2")
                .create()?,
        ),
        None => None,
    })
}

impl Relay {
    pub fn new(pool: PgPool, config: RelayConfig, sealer: Sealer) -> Result<Self, RelayError> {
        let producer = make_producer(&config)?;
        Ok(Self {
            pool,
            config,
            producer,
            sealer,
            lock_session: None,
        })
    }

    /// Replaces the producer with a new one. After a broker restart a producer once kept
    /// a partition's old leader and timed out every message for minutes ("new leader not
    /// found in cache", seen in the broker-restart test); a new one asks for the
    /// metadata afresh. Re-publishing is safe: consumers skip what they have by sequence.
    fn renew_producer(&mut self) {
        match make_producer(&self.config) {
            Ok(fresh) => {
                self.producer = fresh;
                tracing::info!("relay: Kafka producer made anew");
            }
            Err(e) => tracing::warn!(error = %e, "relay: cannot make a new Kafka producer"),
        }
    }

    /// Creates the topics if they are missing.
    pub async fn ensure_topics(&self) -> Result<(), RelayError> {
        let Some(k) = &self.config.kafka else {
            return Ok(());
        };
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &k.brokers)
            .create()?;
        let mut names: Vec<&str> = k.topics.event_topics().to_vec();
        names.push(&k.topics.seals);
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|n| NewTopic::new(n, k.partitions, TopicReplication::Fixed(1)))
            .collect();
        for result in admin.create_topics(&topics, &AdminOptions::new()).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    tracing::error!(%topic, %code, "cannot create topic");
                    return Err(RelayError::Kafka(KafkaError::AdminOp(code)));
                }
            }
        }
        Ok(())
    }

    /// Runs until `stop` resolves: waits as a standby until it holds the leader lock,
    /// then relays. Other failures keep the lead (see `lead_once`); when the lock's
    /// connection is lost it backs off and stands by again.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                r = self.lead_once() => {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "relay stopped leading; retrying");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn lead_once(&mut self) -> Result<(), RelayError> {
        let mut lock = self
            .bounded(async { Ok(self.pool.acquire().await?.detach()) })
            .await?;
        loop {
            let got: bool = self
                .bounded(async {
                    Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                        .bind(LEADER_LOCK)
                        .fetch_one(&mut lock)
                        .await?)
                })
                .await?;
            if got {
                break;
            }
            self.end_abandoned_session(&mut lock).await?;
            tracing::debug!("relay standby: another relay leads");
            tokio::time::sleep(self.config.polling.idle.max(Duration::from_millis(200))).await;
        }
        let lease = self.config.lease;
        self.lock_session = Some(
            self.bounded(async {
                // The server ends this session, and the lock with it, once it has been
                // sent nothing for a lease; the leader's looks come ten times as often.
                sqlx::query("SELECT set_config('idle_session_timeout', $1, false)")
                    .bind(lease.as_millis().max(1).to_string())
                    .execute(&mut lock)
                    .await?;
                Ok(sqlx::query_as(
                    "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                )
                .fetch_one(&mut lock)
                .await?)
            })
            .await?,
        );
        tracing::info!(lease = ?lease, "relay is the leader");
        let result = tokio::select! {
            biased;
            lost = keep_lock(&mut lock, lease) => Err(lost),
            never = self.relay_while_leading() => match never {},
        };
        if !matches!(result, Err(RelayError::TimedOut(_))) {
            // Its session ended, or ends with this close: nothing is left to end later.
            self.lock_session = None;
            let _ = tokio::time::timeout(self.config.timeout, lock.close()).await;
        }
        result
    }

    /// Relays for as long as it is let: the caller drops it when the lead is lost
    /// ([`keep_lock`]), which closes the connections a batch then held.
    ///
    /// A failure that is not the lock's (the broker away, a statement failed) keeps the
    /// lead: a standby would meet the same broker and database, and handing over on
    /// every outage would only make the relays take turns. The leader backs off and
    /// starts again from the checkpoint, while its lock's connection lives.
    async fn relay_while_leading(&mut self) -> Infallible {
        if let Err(e) = self.ensure_topics().await {
            tracing::warn!(error = %e, "could not ensure topics (auto-creation may still work)");
        }
        loop {
            let Err(e) = self.lead().await;
            tracing::error!(error = %e, "relay failed; keeping the lead and retrying");
            if matches!(e, RelayError::Kafka(_)) {
                self.renew_producer();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Ends this relay's former lock session if it still holds the lock: one given up
    /// unanswered when the network to the database fell silent. No other relay's
    /// session is touched (the process id and the session's start tell it apart).
    async fn end_abandoned_session(&mut self, lock: &mut PgConnection) -> Result<(), RelayError> {
        let Some(former) = self.lock_session else {
            return Ok(());
        };
        let ended: Option<bool> = self
            .bounded(async {
                Ok(sqlx::query_scalar(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                      WHERE pid = $1 AND backend_start = $2",
                )
                .bind(former.pid)
                .bind(former.backend_start)
                .fetch_optional(&mut *lock)
                .await?)
            })
            .await?;
        match ended {
            Some(true) => tracing::warn!(
                pid = former.pid,
                "relay: ended its own former lock session, left holding the leader lock when the database stopped answering"
            ),
            Some(false) => return Ok(()),
            None => {}
        }
        self.lock_session = None;
        Ok(())
    }

    /// Runs `work` for at most the relay's timeout. A network to PostgreSQL that fell
    /// silent would otherwise hold the relay for as long as TCP takes to give up (a
    /// quarter of an hour or more). Given up, the connections `work` left in the middle
    /// of a statement are closed, not given back to wait on the silence
    /// ([`lis_commands::connection::scoped`]); the caller starts again from the
    /// checkpoint in the database, which a batch cut short either committed whole (its
    /// COMMIT had gone out) or not at all.
    async fn bounded<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, RelayError>>,
    ) -> Result<T, RelayError> {
        scoped_for(self.config.timeout, work)
            .await
            .unwrap_or(Err(RelayError::TimedOut(self.config.timeout)))
    }

    async fn lead(&self) -> Result<Infallible, RelayError> {
        let mut state = self.load_state().await?;
        let mut poller = Poller::new(self.config.polling, Instant::now());
        loop {
            let n = self.bounded(self.step(&mut state)).await?;
            if n == 0 {
                tokio::time::sleep(poller.wait(Instant::now())).await;
            } else {
                poller.found(Instant::now());
            }
        }
    }

    /// Relays everything the feed offers now, then returns how many events it carried.
    /// (For tests and one-shot runs; `run` is the long-lived loop.)
    pub async fn drain(&self) -> Result<usize, RelayError> {
        let mut state = self.load_state().await?;
        let mut total = 0;
        loop {
            let n = self.step(&mut state).await?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    /// The checkpoint and the Merkle log as the database holds them. The log's leaves
    /// are read `leaves_per_read` at a time, each read bounded on its own
    /// ([`Relay::bounded`]): the whole log may take longer to read than one batch may
    /// (7.5 million leaves are 240 MB).
    async fn load_state(&self) -> Result<State, RelayError> {
        let (at, sealed) = self
            .bounded(async {
                let mut conn = connection(&self.pool).await?;
                let at = load_checkpoint(&mut *conn, &self.config.consumer).await?;
                let sealed: Option<i64> =
                    sqlx::query_scalar("SELECT max(tree_size) FROM audit_checkpoints")
                        .fetch_one(&mut *conn)
                        .await?;
                Ok((at, sealed))
            })
            .await?;
        let per_read = self.config.leaves_per_read.max(1);
        let mut log = CompactRange::default();
        loop {
            let from = log.size() as i64;
            let leaves: Vec<Vec<u8>> = self
                .bounded(async {
                    Ok(sqlx::query_scalar(
                        "SELECT leaf_hash FROM audit_log_leaves
                          WHERE leaf_index >= $1 ORDER BY leaf_index LIMIT $2",
                    )
                    .bind(from)
                    .bind(per_read)
                    .fetch_all(&mut *connection(&self.pool).await?)
                    .await?)
                })
                .await?;
            let read = leaves.len();
            for leaf in leaves {
                let leaf: [u8; 32] = leaf.try_into().map_err(|_| FeedError::Corrupt {
                    position: -1,
                    message: "a Merkle leaf is not 32 bytes".into(),
                })?;
                log.append(leaf);
            }
            if read < per_read as usize {
                break;
            }
        }
        Ok(State {
            at,
            log,
            sealed_size: sealed.unwrap_or(0) as u64,
            sealed_at: Instant::now(),
        })
    }

    async fn publish(&self, batch: &[StoredEvent]) -> Result<(), RelayError> {
        let (Some(producer), Some(k)) = (&self.producer, &self.config.kafka) else {
            return Ok(());
        };
        let mut deliveries = Vec::with_capacity(batch.len());
        for event in batch {
            let topic = k
                .topics
                .for_aggregate(&event.aggregate_type)
                .ok_or_else(|| RelayError::NoTopic {
                    position: event.position,
                    aggregate_type: event.aggregate_type.clone(),
                })?;
            let body =
                serde_json::to_vec(&Envelope::from(event)).expect("an envelope always serialises");
            let record = FutureRecord::to(topic)
                .key(&event.aggregate_id)
                .payload(&body);
            deliveries.push(producer.send_result(record).map_err(|(e, _)| e)?);
        }
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(e.into()),
                Err(_) => return Err(KafkaError::Canceled.into()),
            }
        }
        Ok(())
    }

    /// Relays one batch; returns how many events it carried (0 when the feed is idle).
    async fn step(&self, state: &mut State) -> Result<usize, RelayError> {
        let batch = read_after(&self.pool, state.at, self.config.batch_size).await?;
        let seal_due_by_time = state.log.size() > state.sealed_size
            && state.sealed_at.elapsed() >= self.config.seal_every;
        if batch.is_empty() && !seal_due_by_time {
            return Ok(0);
        }
        self.publish(&batch).await?;

        let mut log = state.log.clone();
        let mut tx = connection::begin(&self.pool).await?;
        // The batch's leaves in one statement.
        let (mut indexes, mut positions, mut leaves) = (Vec::new(), Vec::new(), Vec::new());
        for event in &batch {
            let leaf = event_leaf(event.position, &event.hash);
            indexes.push(log.size() as i64);
            positions.push(event.position);
            leaves.push(leaf.to_vec());
            log.append(leaf);
        }
        if !batch.is_empty() {
            sqlx::query(
                "INSERT INTO audit_log_leaves (leaf_index, position, leaf_hash)
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])",
            )
            .bind(&indexes)
            .bind(&positions)
            .bind(&leaves)
            .execute(&mut *tx)
            .await?;
        }
        let at = batch.last().map_or(state.at, StoredEvent::feed_position);
        save_checkpoint(&mut *tx, &self.config.consumer, at).await?;
        let new_leaves = log.size() - state.sealed_size;
        let seal = new_leaves > 0
            && (new_leaves >= self.config.seal_every_events
                || state.sealed_at.elapsed() >= self.config.seal_every);
        if seal {
            let checkpoint = Checkpoint {
                origin: self.config.origin.clone(),
                tree_size: log.size(),
                root: log.root(),
            };
            let note = self.sealer.sign(&checkpoint);
            sqlx::query("INSERT INTO audit_checkpoints (tree_size, root_hash, signed_note) VALUES ($1, $2, $3)")
                .bind(checkpoint.tree_size as i64)
                .bind(checkpoint.root.as_slice())
                .bind(&note)
                .execute(&mut *tx)
                .await?;
            self.publish_seal(checkpoint.tree_size, &note).await?;
        }
        tx.commit().await?;
        state.at = at;
        state.log = log;
        if seal {
            state.sealed_size = state.log.size();
            state.sealed_at = Instant::now();
            tracing::info!(tree_size = state.sealed_size, "audit log sealed");
        }
        Ok(batch.len())
    }

    async fn publish_seal(&self, tree_size: u64, note: &str) -> Result<(), RelayError> {
        let (Some(producer), Some(k)) = (&self.producer, &self.config.kafka) else {
            return Ok(());
        };
        let key = tree_size.to_string();
        let record = FutureRecord::to(&k.topics.seals).key(&key).payload(note);
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| RelayError::Kafka(e))?;
        Ok(())
    }
}

/// Looks at the leader lock's connection every tenth of the lease (at most every second)
/// for as long as the relay leads, and returns why it stopped leading. Lost, the
/// connection gave the lock up with it. Unanswered for half the lease, the lead is given
/// up here, before the server ends the silent session (a lease after the last look it
/// answered) and frees the lock for a standby; should the server not (a statement still
/// running there), this relay ends that session when it reaches the database again
/// ([`Relay::end_abandoned_session`]).
async fn keep_lock(lock: &mut PgConnection, lease: Duration) -> RelayError {
    let every = (lease / 10).min(Duration::from_secs(1));
    let unanswered = lease / 2;
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(unanswered, sqlx::query("SELECT 1").execute(&mut *lock)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return RelayError::LostLeadership,
            Err(_) => return RelayError::TimedOut(unanswered),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_before_postgresql_14_is_refused_naming_its_version() {
        // PostgreSQL 13 has no idle_session_timeout; its server_version_num is 13xxyy.
        match leases_on(130_012, "13.12 (Debian 13.12-1)".into()) {
            Err(RelayError::ServerTooOld(v)) => assert_eq!(v, "13.12 (Debian 13.12-1)"),
            other => panic!("PostgreSQL 13 must be refused: {other:?}"),
        }
        assert!(leases_on(140_000, "14.0".into()).is_ok());
        assert!(leases_on(150_014, "15.14".into()).is_ok());
    }
}
