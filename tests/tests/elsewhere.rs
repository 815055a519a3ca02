//! A model that writes outside PostgreSQL (the MongoDB analytics) may wait on that other
//! server. While it waits, its batch holds no transaction id — else the ordered feed,
//! which holds back every event committed after the oldest open transaction id, would
//! stall every other model and the relay behind it (as it did: 5 s p99 in the clinical
//! models at 200 commands/s behind a slow MongoDB). Two workers of such a model still
//! take turns on an aggregate: the second waits for the first to commit, then skips
//! what it applied.

use lis_projections::envelope::Envelope;
use lis_projections::erasure::Erased;
use lis_projections::projection::{
    apply_batch, ensure_schema, schema_of, BatchOutcome, LabEvent, Projection, ProjectionError,
};
use lis_tests::{lab_day, whole_feed, TestDb};
use sqlx::PgConnection;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Writes "elsewhere": a batch announces itself and, while `hold` is set, waits there
/// until released.
#[derive(Default)]
struct Elsewhere {
    hold: AtomicBool,
    entered: Notify,
    release: Notify,
}

#[async_trait::async_trait]
impl Projection for Elsewhere {
    fn name(&self) -> &'static str {
        "elsewhere"
    }

    fn ddl(&self) -> &'static str {
        ""
    }

    fn purge_sql(&self) -> &'static str {
        ""
    }

    async fn purge(&self, _: &mut PgConnection, _: &Erased) -> Result<(), ProjectionError> {
        Ok(())
    }

    async fn apply(
        &self,
        _: &mut PgConnection,
        _: &Envelope,
        _: &LabEvent,
    ) -> Result<(), ProjectionError> {
        Ok(())
    }

    async fn apply_run(
        &self,
        _: &mut PgConnection,
        events: &[(&Envelope, &LabEvent)],
    ) -> Result<(), ProjectionError> {
        if !events.is_empty() && self.hold.load(Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        Ok(())
    }

    fn writes_elsewhere(&self) -> bool {
        true
    }
}

/// Transactions of this database that hold a transaction id.
async fn open_xids(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND backend_xid IS NOT NULL",
    )
    .fetch_one(&db.app)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waiting_on_another_server_holds_no_transaction_id_and_workers_take_turns() {
    let db = TestDb::new().await;
    lab_day(&db).await;
    let model = Arc::new(Elsewhere::default());
    ensure_schema(
        &mut db.app.acquire().await.unwrap(),
        model.as_ref(),
        &schema_of(model.name()),
    )
    .await
    .unwrap();
    let envelopes: Vec<Envelope> = whole_feed(&db.app).await.iter().map(Into::into).collect();
    // First each aggregate's first event, so that every aggregate has an offset row to
    // lock; then the rest, held "elsewhere".
    let (first, rest): (Vec<Envelope>, Vec<Envelope>) =
        envelopes.into_iter().partition(|e| e.sequence == 1);
    assert!(!rest.is_empty());
    apply_batch(&db.app, model.as_ref(), &first, None)
        .await
        .unwrap();
    model.hold.store(true, Ordering::SeqCst);

    let batch = |model: Arc<Elsewhere>, events: Vec<Envelope>, pool: sqlx::PgPool| {
        tokio::spawn(async move { apply_batch(&pool, model.as_ref(), &events, None).await })
    };
    let a = batch(model.clone(), rest.clone(), db.app.clone());
    tokio::time::timeout(Duration::from_secs(10), model.entered.notified())
        .await
        .expect("the batch reached its writes elsewhere");
    assert_eq!(
        open_xids(&db).await,
        0,
        "a batch waiting on another server holds a transaction id"
    );

    // A second worker with the same events waits for the first to commit…
    let b = batch(model.clone(), rest.clone(), db.app.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !b.is_finished(),
        "two workers applied one aggregate at once"
    );
    model.hold.store(false, Ordering::SeqCst);
    model.release.notify_one();
    let applied: BatchOutcome = a.await.unwrap().unwrap();
    assert_eq!(applied.applied, rest.len());
    // …and then finds everything applied.
    let again: BatchOutcome = tokio::time::timeout(Duration::from_secs(10), b)
        .await
        .expect("the second worker went on after the first committed")
        .unwrap()
        .unwrap();
    assert_eq!((again.applied, again.skipped), (0, rest.len()));
    db.drop().await;
}
