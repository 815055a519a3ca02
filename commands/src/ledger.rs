//! The ledger: runs a command on an aggregate for an actor, and says where it landed.
//!
//! Each aggregate type has its own event store over the shared `events` table
//! (postgres-es's layout), with snapshots for long histories and the domain's upcasters.
//! A command runs as cqrs-es's framework runs it — load, `handle` with the lab's
//! services, append what the sink collected — but the append says where the events
//! landed, which the framework's `execute` does not. Two concurrent commands on one
//! aggregate collide on the (type, id, sequence) primary key and the loser gets
//! [`CommandError::Conflict`] — never last-writer-wins. Commands on different records
//! of one order append in turn, each checking that what its rules read of the others is
//! as it read it; if not, it is decided again on what is stored ([`crate::reads`]).

use crate::context::CommandContext;
use crate::error::CommandError;
use crate::keys::PatientVault;
use crate::lookup::PgLabLookup;
use crate::reads::{InTurn, ReadChanged, Reads};
use crate::store::SnapshotEventStore;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::EventStoreAggregateContext;
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventStore};
use lis_domain::error::DomainError;
use lis_domain::family::OrderFamily;
use lis_domain::ids::{OrderId, OrderNumber, PatientId, ResultId, SampleId, TestCode};
use lis_domain::order::{Order, OrderCommand, PlaceOrder, Priority};
use lis_domain::patient::NewPatient;
use lis_domain::patient_record::{PatientCommand, PatientRecord};
use lis_domain::result::{LabResult, ResultCommand};
use lis_domain::sample::{AliquotSpec, Sample, SampleCommand};
use lis_domain::sealed::SealedKind;
use lis_domain::services::{LabPolicy, LabServices};
use lis_domain::text::Reason;
use lis_domain::text::{Note, PersonName, Place};
use lis_domain::upcast::upcasters;
use sqlx::{PgPool, Row};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use uuid::Uuid;

/// The event store of one aggregate type.
pub type EventStoreOf<A> = SnapshotEventStore<A>;

/// How many times in all a command is decided before records its rules read, changing
/// each time before its append, make it give up ([`CommandError::Contended`], nothing
/// stored): each attempt reads afresh.
const DECISIONS: u32 = 5;

/// The answer to a command on `aggregate_type` `id` whose reads changed before each of
/// its attempts to append.
fn kept_changing(
    aggregate_type: &'static str,
    id: &str,
    last: &dyn std::fmt::Display,
) -> CommandError {
    CommandError::Contended {
        aggregate_type,
        aggregate_id: id.to_string(),
        message: format!(
            "other commands on this order changed what this command's rules read before \
             each of its {DECISIONS} attempts to store it (last: {last}); nothing was stored, \
             send it again"
        ),
    }
}

/// How the ledger runs.
#[derive(Debug, Clone, Copy)]
pub struct LedgerConfig {
    /// Take a snapshot of an aggregate every this many events.
    pub snapshot_every: usize,
    pub policy: LabPolicy,
    /// How long a command may take with its connection before it is given up and the
    /// connection closed: a network that falls silent mid-statement answers nothing, and
    /// TCP alone would wait a quarter of an hour or more.
    pub command_timeout: std::time::Duration,
    /// What time it is: the lab's day of an order number, the bound on stated times
    /// (`Utc::now`; a test sets another).
    pub clock: fn() -> DateTime<Utc>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            snapshot_every: 20,
            policy: LabPolicy::default(),
            command_timeout: std::time::Duration::from_secs(30),
            clock: Utc::now,
        }
    }
}

/// Where a command's last event landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    /// The aggregate's version (sequence of its last event).
    pub version: i64,
    /// The global position of that event.
    pub position: i64,
}

/// A new order as a user gives it; the ledger assigns ids and the order number.
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// Sealed under the patient's data key before it reaches the event.
    pub patient: NewPatient,
    pub ordering_clinician: PersonName,
    pub priority: Priority,
    pub collection_site: Place,
    pub clinical_notes: Option<Note>,
    pub tests: Vec<TestCode>,
}

/// A placed order: its ids and where its event landed.
#[derive(Debug, Clone)]
pub struct PlacedOrder {
    pub order_id: OrderId,
    pub order_number: OrderNumber,
    pub outcome: CommandOutcome,
}

pub(crate) fn event_store<A: Aggregate>(pool: &PgPool, config: &LedgerConfig) -> EventStoreOf<A> {
    SnapshotEventStore::new(pool.clone(), config.snapshot_every, upcasters())
        .with_command_timeout(config.command_timeout)
}

pub struct Ledger {
    pool: PgPool,
    vault: Arc<PatientVault>,
    services: LabServices,
    orders: EventStoreOf<Order>,
    samples: EventStoreOf<Sample>,
    results: EventStoreOf<LabResult>,
    patients: EventStoreOf<PatientRecord>,
    /// Commands decided again because a record their rules read changed before their
    /// append (see [`crate::reads`]).
    decided_again: AtomicU64,
}

impl Ledger {
    /// A ledger over `pool`, sealing identities with the keys of `vault`.
    pub fn new(pool: PgPool, config: LedgerConfig, vault: Arc<PatientVault>) -> Self {
        let lookup = Arc::new(PgLabLookup::new(
            pool.clone(),
            event_store(&pool, &config),
            event_store(&pool, &config),
            event_store(&pool, &config),
            vault.clone(),
            config.policy,
            config.clock,
        ));
        Self {
            services: LabServices::new(lookup),
            orders: event_store(&pool, &config),
            samples: event_store(&pool, &config),
            results: event_store(&pool, &config),
            patients: event_store(&pool, &config),
            decided_again: AtomicU64::new(0),
            vault,
            pool,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// How many times, since it started, a command was decided again because a record
    /// its rules read changed before its append: contention on an order's records.
    pub fn decided_again(&self) -> u64 {
        self.decided_again.load(Ordering::Relaxed)
    }

    /// The lab's rules and clock, as the commands apply them.
    pub fn policy(&self) -> LabPolicy {
        self.services.policy()
    }

    /// The patient key vault (to open sealed identities for those allowed to see them).
    pub fn vault(&self) -> &PatientVault {
        &self.vault
    }

    /// Places a new order: assigns the order id, the order number and the patient id.
    pub async fn place_order(
        &self,
        order: NewOrder,
        ctx: &CommandContext,
    ) -> Result<PlacedOrder, CommandError> {
        let order_id = OrderId::new();
        let n: i64 = sqlx::query_scalar("SELECT nextval('order_number_seq')")
            .fetch_one(&mut *crate::connection::connection(&self.pool).await?)
            .await?;
        let order_number = OrderNumber::parse(&format!(
            "ORD-{}-{n:06}",
            self.policy().day_of(self.services.now()).format("%Y%m%d")
        ))
        .map_err(|e| CommandError::Internal(format!("order number: {e}")))?;
        let patient_id = self.vault.pseudonym(&order.patient.identity.mrn).await?;
        let sealer = self.vault.sealer(patient_id).await?;
        let identity = sealer.seal(SealedKind::PatientIdentity, &order.patient.identity)?;
        let clinical_notes = order
            .clinical_notes
            .as_ref()
            .map(|notes| sealer.seal(SealedKind::ClinicalNotes, notes))
            .transpose()?;
        let command = OrderCommand::Place(PlaceOrder {
            order_id,
            order_number: order_number.clone(),
            patient_id,
            identity,
            sex: order.patient.sex,
            ordering_clinician: order.ordering_clinician,
            priority: order.priority,
            collection_site: order.collection_site,
            clinical_notes,
            tests: order.tests,
        });
        let outcome = self.execute_order(order_id, command, ctx).await?;
        Ok(PlacedOrder {
            order_id,
            order_number,
            outcome,
        })
    }

    pub async fn execute_order(
        &self,
        id: OrderId,
        command: OrderCommand,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError> {
        let (name, reason) = (command.name(), command.reason());
        self.execute(
            &self.orders,
            &id.to_string(),
            command,
            (name, reason),
            ctx,
            ctx.expected_version.get().copied(),
        )
        .await
    }

    pub async fn execute_sample(
        &self,
        id: SampleId,
        command: SampleCommand,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError> {
        self.execute_sample_at(id, command, ctx, ctx.expected_version.get().copied())
            .await
    }

    /// [`Ledger::execute_sample`] on the sample at version `expected` (if named).
    async fn execute_sample_at(
        &self,
        id: SampleId,
        command: SampleCommand,
        ctx: &CommandContext,
        expected: Option<i64>,
    ) -> Result<CommandOutcome, CommandError> {
        let (name, reason) = (command.name(), command.reason());
        self.execute(
            &self.samples,
            &id.to_string(),
            command,
            (name, reason),
            ctx,
            expected,
        )
        .await
    }

    pub async fn execute_result(
        &self,
        id: ResultId,
        command: ResultCommand,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError> {
        let (name, reason) = (command.name(), command.reason());
        self.execute(
            &self.results,
            &id.to_string(),
            command,
            (name, reason),
            ctx,
            ctx.expected_version.get().copied(),
        )
        .await
    }

    /// Erases a patient (crypto-shredding): records `PatientErased` with the actor's
    /// reason, then destroys the patient's data key and pseudonym. Event first, so that no
    /// key is ever destroyed without its audit record; a retry after a crash in between
    /// finishes the destruction. Erasing an erased patient is refused.
    pub async fn erase_patient(
        &self,
        patient: PatientId,
        reason: Reason,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError> {
        if self.vault.status(patient).await?.is_none() {
            return Err(CommandError::NotFound(format!("no patient {patient}")));
        }
        let id = patient.to_string();
        let command = PatientCommand::Erase { reason };
        let (name, why) = (command.name(), command.reason());
        let expected = ctx.expected_version.get().copied();
        match self
            .execute(&self.patients, &id, command, (name, why), ctx, expected)
            .await
        {
            Ok(outcome) => {
                self.vault.erase(patient).await?;
                Ok(outcome)
            }
            Err(CommandError::Rejected { rule, message }) if rule == "patient.already-erased" => {
                if !self.vault.erase(patient).await? {
                    return Err(CommandError::Rejected { rule, message });
                }
                tracing::warn!(patient = %patient, "finished an erasure interrupted after its event");
                let row = sqlx::query(
                    "SELECT sequence, position FROM events
                      WHERE aggregate_type = $1 AND aggregate_id = $2 AND event_type = 'PatientErased'",
                )
                .bind(PatientRecord::TYPE)
                .bind(&id)
                .fetch_one(&mut *crate::connection::connection(&self.pool).await?)
                .await?;
                Ok(CommandOutcome {
                    aggregate_type: PatientRecord::TYPE,
                    aggregate_id: id,
                    version: row.get("sequence"),
                    position: row.get("position"),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Splits aliquots off a received sample: the parent records its children first
    /// (the authoritative lineage), then each child is created from that record. The same
    /// split sent again (its first attempt stopped after the parent's record, or after
    /// some of the children: the API gives each child an id from the parent and its
    /// accession number, so a second attempt names the same children) records nothing
    /// new for the parent, makes the children still missing, and answers with all of
    /// them as they stand.
    pub async fn aliquot(
        &self,
        parent: SampleId,
        children: Vec<AliquotSpec>,
        ctx: &CommandContext,
    ) -> Result<Vec<CommandOutcome>, CommandError> {
        let ids: Vec<SampleId> = children.iter().map(|c| c.sample_id).collect();
        let split_before = self.sample(parent).await?.facts().is_some_and(|f| {
            !children.is_empty() && children.iter().all(|c| f.children.contains(c))
        });
        let mut outcomes = vec![if split_before {
            self.last_event(Sample::TYPE, &parent.to_string()).await?
        } else {
            self.execute_sample(parent, SampleCommand::Aliquot { children }, ctx)
                .await?
        }];
        for sample_id in ids {
            let command = SampleCommand::CreateAliquot {
                sample_id,
                parent_id: parent,
            };
            // The parent's split is stored by now: a child cut short leaves the whole
            // part-stored, which its caller must not take for nothing written.
            // The caller's expected version is the parent's, not a new child's.
            let child = match self.execute_sample_at(sample_id, command, ctx, None).await {
                Err(CommandError::Rejected {
                    rule: "sample.already-exists",
                    ..
                }) => self.last_event(Sample::TYPE, &sample_id.to_string()).await,
                child => child,
            };
            outcomes.push(child.map_err(|e| match e {
                CommandError::Unavailable(m) => CommandError::OutcomeUnknown {
                    aggregate_type: "Sample",
                    aggregate_id: parent.to_string(),
                    message: format!(
                        "its split is stored, aliquot {sample_id}'s creation is not: {m}"
                    ),
                },
                e => e,
            })?);
        }
        Ok(outcomes)
    }

    /// The version and position of a record's last event, as a command on it answers.
    async fn last_event(
        &self,
        aggregate_type: &'static str,
        id: &str,
    ) -> Result<CommandOutcome, CommandError> {
        let (version, position) = last_event_of(&self.pool, aggregate_type, id)
            .await?
            .ok_or_else(|| CommandError::NotFound(format!("no {aggregate_type} {id}")))?;
        Ok(CommandOutcome {
            aggregate_type,
            aggregate_id: id.to_string(),
            version,
            position,
        })
    }

    /// The current state of an order (for queries and tests).
    pub async fn order(&self, id: OrderId) -> Result<Order, CommandError> {
        load(&self.orders, &id.to_string()).await
    }

    pub async fn sample(&self, id: SampleId) -> Result<Sample, CommandError> {
        load(&self.samples, &id.to_string()).await
    }

    pub async fn result(&self, id: ResultId) -> Result<LabResult, CommandError> {
        load(&self.results, &id.to_string()).await
    }
}

async fn load<A>(store: &EventStoreOf<A>, id: &str) -> Result<A, CommandError>
where
    A: Aggregate + Clone,
    A::Error: DomainError,
{
    let mut ctx = store
        .load_aggregate(id)
        .await
        .map_err(|e| CommandError::from_aggregate(e, A::TYPE, id))?;
    Ok(ctx.aggregate().clone())
}

/// The sequence and position of a record's last event, if it has any.
async fn last_event_of(
    pool: &PgPool,
    aggregate_type: &str,
    id: &str,
) -> Result<Option<(i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sequence, position FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2
          ORDER BY sequence DESC LIMIT 1",
    )
    .bind(aggregate_type)
    .bind(id)
    .fetch_optional(&mut *crate::connection::connection(pool).await?)
    .await
}

impl Ledger {
    /// Runs `command` on record `id` of `store` for `ctx`'s actor (see the module).
    #[tracing::instrument(
        name = "command",
        skip_all,
        fields(command = name, aggregate_id = id, actor = %ctx.actor.id,
               role = %ctx.actor.role, correlation_id = %ctx.correlation_id, outcome)
    )]
    async fn execute<A>(
        &self,
        store: &EventStoreOf<A>,
        id: &str,
        command: A::Command,
        (name, reason): (&'static str, Option<String>),
        ctx: &CommandContext,
        expected: Option<i64>,
    ) -> Result<CommandOutcome, CommandError>
    where
        A: Aggregate<Services = LabServices> + OrderFamily,
        A::Command: Clone,
        A::Error: DomainError,
    {
        let command_id = ctx.command_id.get().copied().unwrap_or_else(Uuid::new_v4);
        let metadata = ctx.metadata(command_id, name, reason);
        // One connection for the load, the rules' look-ups and the append (`connection`).
        let write = crate::connection::WriteWatch::default();
        // Boxed: the attempts' futures nest deep, and a caller's future holding them inline
        // (a test's lab day of many commands) outgrew a thread's stack in debug builds.
        let watched = Box::pin(write.watch(async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let reads = Reads::default();
                let (context, events) = self
                    .decide(store, id, command.clone(), expected, &reads)
                    .await?;
                let turn = context.aggregate.order_of().map(|order| InTurn {
                    order: order.to_string(),
                    reads: reads.taken(),
                });
                let appended = store
                    .append(events, context, metadata.clone(), turn.as_ref())
                    .await;
                match (appended, expected) {
                    // A record the rules read changed before the append, which wrote
                    // nothing: decide again on what is stored now.
                    (Err(AggregateError::UnexpectedError(e)), _) if e.is::<ReadChanged>() => {
                        if attempt == DECISIONS {
                            // Nothing written, and the record itself may not have
                            // changed: a conflict on it would be untrue.
                            return Err(kept_changing(A::TYPE, id, &e));
                        }
                        self.decided_again.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(attempt, changed = %e, "deciding again");
                    }
                    // Another command took the next version first: for a caller who named
                    // the version it acted on, the record has changed since (412), as it
                    // would have found had it looked a moment later.
                    (Err(AggregateError::AggregateConflict), Some(expected)) => {
                        return Err(CommandError::Stale {
                            aggregate_type: A::TYPE,
                            aggregate_id: id.to_string(),
                            expected,
                            current: None,
                            position: None,
                        });
                    }
                    (appended, _) => {
                        return appended.map_err(|e| CommandError::from_aggregate(e, A::TYPE, id))
                    }
                }
            }
        }));
        let answer = crate::connection::within(store.pool(), store.command_timeout(), watched)
            .await
            // No connection for the command, or none that answered in time.
            .unwrap_or_else(|e| Err(CommandError::from(e)))
            .map_err(|e| match e {
                CommandError::Unavailable(message) if write.in_doubt() => {
                    CommandError::OutcomeUnknown {
                        aggregate_type: A::TYPE,
                        aggregate_id: id.to_string(),
                        message,
                    }
                }
                e => e,
            });
        let outcome = match answer {
            Err(mut stale @ CommandError::Stale { .. }) => {
                // Where the record is now, for the caller to read it (best effort: the
                // answer stands without it).
                if let CommandError::Stale { position, .. } = &mut stale {
                    *position = last_event_of(store.pool(), A::TYPE, id)
                        .await
                        .ok()
                        .flatten()
                        .map(|(_, at)| at);
                }
                Err(stale)
            }
            answer => answer,
        }
        .and_then(|appended| {
            let last = appended.last().ok_or_else(|| {
                CommandError::Internal(format!(
                    "command {name} on {} {id} was accepted but recorded no event",
                    A::TYPE
                ))
            })?;
            Ok(CommandOutcome {
                aggregate_type: A::TYPE,
                aggregate_id: id.to_string(),
                version: last.sequence,
                position: last.position,
            })
        });
        match &outcome {
            Ok(_) => tracing::Span::current().record("outcome", "ok"),
            Err(e) => tracing::Span::current().record("outcome", tracing::field::display(e)),
        };
        outcome
    }

    /// One attempt's decision: `command` on the record as stored now, noting in `reads`
    /// what its rules read of the order's other records. Bad input is answered first, at
    /// any version (422, not 412); then a version other than the caller's `expected`.
    async fn decide<A>(
        &self,
        store: &EventStoreOf<A>,
        id: &str,
        command: A::Command,
        expected: Option<i64>,
        reads: &Reads,
    ) -> Result<(EventStoreAggregateContext<A>, Vec<A::Event>), CommandError>
    where
        A: Aggregate<Services = LabServices>,
        A::Error: DomainError,
    {
        let refused = |e| CommandError::from_aggregate(e, A::TYPE, id);
        let mut context = store.load_aggregate(id).await.map_err(refused)?;
        let current = context.current_sequence as i64;
        let sink = EventSink::default();
        let decided = reads
            .during(context.aggregate.handle(command, &self.services, &sink))
            .await
            .map_err(|e| refused(AggregateError::UserError(e)));
        match (decided, expected.filter(|&v| v != current)) {
            (Err(invalid @ CommandError::Invalid { .. }), _) => Err(invalid),
            (_, Some(expected)) => Err(CommandError::Stale {
                aggregate_type: A::TYPE,
                aggregate_id: id.to_string(),
                expected,
                current: Some(current),
                position: None,
            }),
            (Err(refusal), None) => Err(refusal),
            (Ok(()), None) => Ok((context, sink.collect().await)),
        }
    }
}
