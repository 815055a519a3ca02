//! The event store each framework runs on: postgres-es's repository, snapshots every N
//! events, and the domain's upcasters.
//!
//! Why not cqrs-es 0.5's own snapshot store: its `EventSink` applies each new event to
//! the aggregate while the command is handled, and its snapshot store applies the same
//! events again before serialising the snapshot, so every snapshot double-counts the
//! events of the command that crossed the boundary (a 47-entry custody chain where 45
//! were written). This store serialises the aggregate as the command left it — events
//! applied exactly once — and otherwise behaves the same: load the snapshot (falling
//! back to a full replay if its shape no longer deserialises), apply the later events.

use cqrs_es::persist::{
    EventStoreAggregateContext, EventUpcaster, PersistedEventRepository, SerializedEvent,
};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope, EventStore};
use postgres_es::PostgresEventRepository;
use std::collections::HashMap;

pub struct SnapshotEventStore<A: Aggregate> {
    repo: PostgresEventRepository,
    snapshot_every: usize,
    upcasters: Vec<Box<dyn EventUpcaster>>,
    _aggregate: std::marker::PhantomData<fn() -> A>,
}

impl<A: Aggregate> SnapshotEventStore<A> {
    pub fn new(
        repo: PostgresEventRepository,
        snapshot_every: usize,
        upcasters: Vec<Box<dyn EventUpcaster>>,
    ) -> Self {
        Self {
            repo,
            snapshot_every: snapshot_every.max(1),
            upcasters,
            _aggregate: std::marker::PhantomData,
        }
    }

    fn deserialize(
        &self,
        events: Vec<SerializedEvent>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        events
            .into_iter()
            .map(|e| {
                let e = self.upcasters.iter().fold(e, |e, u| {
                    if u.can_upcast(&e.event_type, &e.event_version) {
                        u.upcast(e)
                    } else {
                        e
                    }
                });
                EventEnvelope::<A>::try_from(e).map_err(AggregateError::from)
            })
            .collect()
    }
}

impl<A: Aggregate> EventStore<A> for SnapshotEventStore<A> {
    type AC = EventStoreAggregateContext<A>;

    async fn load_events(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let events = self.repo.get_events::<A>(aggregate_id).await?;
        self.deserialize(events)
    }

    async fn load_aggregate(
        &self,
        aggregate_id: &str,
    ) -> Result<Self::AC, AggregateError<A::Error>> {
        let mut context = EventStoreAggregateContext {
            aggregate_id: aggregate_id.to_string(),
            aggregate: A::default(),
            current_sequence: 0,
            current_snapshot: None,
        };
        if let Some(snapshot) = self.repo.get_snapshot::<A>(aggregate_id).await? {
            context.current_snapshot = Some(snapshot.current_snapshot);
            // A snapshot of an older aggregate shape is ignored: replay from the start.
            if let Ok(aggregate) = serde_json::from_value::<A>(snapshot.aggregate) {
                context.aggregate = aggregate;
                context.current_sequence = snapshot.current_sequence;
            }
        }
        let events = self
            .repo
            .get_last_events::<A>(aggregate_id, context.current_sequence)
            .await?;
        for envelope in self.deserialize(events)? {
            context.current_sequence = envelope.sequence;
            context.aggregate.apply(envelope.payload);
        }
        Ok(context)
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        context: Self::AC,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let first = context.current_sequence + 1;
        let envelopes: Vec<EventEnvelope<A>> = events
            .into_iter()
            .zip(first..)
            .map(|(payload, sequence)| EventEnvelope {
                aggregate_id: context.aggregate_id.clone(),
                sequence,
                payload,
                metadata: metadata.clone(),
            })
            .collect();
        let serialized = envelopes
            .iter()
            .map(SerializedEvent::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let last = context.current_sequence + envelopes.len();
        // Snapshot when this commit crosses a multiple of `snapshot_every`. The aggregate
        // in the context already holds the new events (the sink applied them).
        let snapshot =
            if last / self.snapshot_every > context.current_sequence / self.snapshot_every {
                let payload = serde_json::to_value(&context.aggregate)
                    .map_err(|e| AggregateError::UnexpectedError(Box::new(e)))?;
                let next = context.current_snapshot.map_or(1, |n| n + 1);
                Some((context.aggregate_id.clone(), payload, next))
            } else {
                None
            };
        self.repo.persist::<A>(&serialized, snapshot).await?;
        Ok(envelopes)
    }
}
