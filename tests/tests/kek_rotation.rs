//! Key-encryption key rotation: every live key re-wrapped from the previous KEK to the
//! current one, the ledger readable throughout with both and afterwards with the new one
//! alone; erased patients stay erased (an erasure in the middle of a batch too),
//! pseudonyms and hash chains stay as they were; a run that stops part-way is recorded
//! as such and finished by the next; a key under a KEK that is neither stops the
//! rotation before it changes anything, and a key that does not open is named; a key a
//! stale role adds during a run is re-wrapped too; two runs never overlap.

use lis_commands::keys::rotate::RotationReport;
use lis_commands::keys::{
    rotate, Keks, KeyEncryptionKey, KeyError, LocalKek, Opened, PatientVault, RotationBy,
};
use lis_commands::{audit, Ledger, LedgerConfig};
use lis_domain::actor::Role;
use lis_domain::ids::PatientId;
use lis_domain::order::Order;
use lis_domain::patient::{Mrn, PatientIdentity};
use lis_domain::sealed::Sealed;
use lis_domain::text::Reason;
use lis_tests::{actor, place, TestDb, TEST_KEK};
use sqlx::PgPool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;
use zeroize::Zeroizing;

fn kek(text: &str) -> Arc<dyn KeyEncryptionKey> {
    Arc::new(LocalKek::from_base64(text).unwrap())
}

fn by() -> RotationBy<'static> {
    RotationBy {
        actor: "security.officer",
        reason: "annual key rotation",
    }
}

/// The patient and sealed identity of an order.
async fn sealed_identity(
    ledger: &Ledger,
    placed: &lis_commands::ledger::PlacedOrder,
) -> (PatientId, Sealed) {
    let order: Order = ledger.order(placed.order_id).await.unwrap();
    let facts = order.facts().unwrap();
    (facts.patient_id, facts.identity.clone())
}

async fn mrn_of(vault: &PatientVault, patient: PatientId, sealed: &Sealed) -> Option<String> {
    match vault
        .open::<PatientIdentity>(patient, sealed)
        .await
        .unwrap()
    {
        Opened::Clear(identity) => Some(identity.mrn.as_str().to_string()),
        Opened::Erased => None,
    }
}

/// `kek_id` of every patient key, live or erased, by patient.
async fn key_rows(pool: &PgPool) -> Vec<(uuid::Uuid, String, bool)> {
    sqlx::query_as(
        "SELECT patient_id, kek_id, wrapped_key IS NOT NULL FROM patient_keys ORDER BY patient_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn ledger_kek_ids(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as("SELECT name, kek_id FROM ledger_keys ORDER BY name")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// `(run, step, keys)` of every record, in order.
async fn records(pool: &PgPool) -> Vec<(uuid::Uuid, String, i64)> {
    sqlx::query_as("SELECT run_id, step, keys FROM kek_rotations ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// A KEK (the same key and id as `inner`) whose n-th wrap fails, or waits for `go` after
/// telling `reached`: a KMS that goes away, or is slow, in the middle of a rotation.
struct Scripted {
    inner: LocalKek,
    wraps: AtomicUsize,
    fail_at: Option<usize>,
    pause_at: Option<(usize, Arc<Notify>, Arc<Notify>)>,
}

impl Scripted {
    fn new(text: &str) -> Self {
        Self {
            inner: LocalKek::from_base64(text).unwrap(),
            wraps: AtomicUsize::new(0),
            fail_at: None,
            pause_at: None,
        }
    }
}

#[async_trait::async_trait]
impl KeyEncryptionKey for Scripted {
    fn id(&self) -> &str {
        self.inner.id()
    }

    async fn wrap(&self, key: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        let n = self.wraps.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_at == Some(n) {
            return Err(KeyError::Unwrap("the KMS is unreachable (test)".into()));
        }
        if let Some((at, reached, go)) = &self.pause_at {
            if *at == n {
                reached.notify_one();
                go.notified().await;
            }
        }
        self.inner.wrap(key, aad).await
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.inner.unwrap(wrapped, aad).await
    }
}

/// A rotation from the test KEK to `new_text`, started and paused at its `at`-th wrap;
/// `go` lets it carry on.
async fn paused_rotation(
    db: &TestDb,
    new_text: &str,
    at: usize,
) -> (
    tokio::task::JoinHandle<Result<RotationReport, KeyError>>,
    Arc<Notify>,
) {
    let (reached, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let slow = Scripted {
        pause_at: Some((at, reached.clone(), go.clone())),
        ..Scripted::new(new_text)
    };
    let keks = Keks::rotating(Arc::new(slow), kek(TEST_KEK)).unwrap();
    let owner = db.owner.clone();
    let run = tokio::spawn(async move { rotate(&owner, &keks, by(), 1000).await });
    reached.notified().await;
    (run, go)
}

/// Places an order for each MRN; their patients and sealed identities.
async fn patients(ledger: &Ledger, mrns: &[&str]) -> Vec<(PatientId, Sealed)> {
    let mut out = Vec::new();
    for mrn in mrns {
        let placed = place(ledger, mrn, &["K"]).await;
        out.push(sealed_identity(ledger, &placed).await);
    }
    out
}

#[tokio::test]
async fn a_rotation_rewraps_every_live_key_and_the_new_kek_alone_then_reads_everything() {
    let db = TestDb::new().await;
    let old = kek(TEST_KEK);
    let new_text = LocalKek::generate();
    let new = kek(&new_text);
    let ledger = db.ledger().await;
    let mut patients = Vec::new();
    for mrn in [
        "MRN-ROT-1",
        "MRN-ROT-2",
        "MRN-ROT-3",
        "MRN-ROT-4",
        "MRN-ROT-5",
    ] {
        let placed = place(&ledger, mrn, &["K"]).await;
        patients.push((mrn, sealed_identity(&ledger, &placed).await));
    }
    let (erased, _) = patients[2].1.clone();
    ledger
        .erase_patient(
            erased,
            Reason::parse("patient asked").unwrap(),
            &actor("admin.1", Role::Admin),
        )
        .await
        .unwrap();
    let before = key_rows(&db.owner).await;
    let pseudonyms_before: Vec<PatientId> = {
        let vault = db.vault().await;
        let mut ids = Vec::new();
        for (mrn, _) in &patients {
            ids.push(vault.pseudonym(&Mrn::parse(mrn).unwrap()).await.unwrap());
        }
        ids
    };

    // Two keys a batch: the four live ones take two transactions, each recorded with
    // its keys, after the ledger's own two; then the run's end.
    let keks = Keks::rotating(new.clone(), old.clone()).unwrap();
    let report = rotate(&db.owner, &keks, by(), 2).await.unwrap();
    assert_eq!(
        report,
        RotationReport {
            run: report.run,
            from: old.id().to_string(),
            to: new.id().to_string(),
            ledger_keys: 2,
            patient_keys: 4,
        }
    );
    let steps = |run: uuid::Uuid, list: &[(&str, i64)]| -> Vec<(uuid::Uuid, String, i64)> {
        list.iter().map(|(s, k)| (run, s.to_string(), *k)).collect()
    };
    assert_eq!(
        records(&db.app).await,
        steps(
            report.run,
            &[
                ("ledger-keys", 2),
                ("patient-keys", 2),
                ("patient-keys", 2),
                ("finished", 0)
            ]
        )
    );
    // Every live key is under the new KEK; the erased one is still erased, as it was.
    let after = key_rows(&db.owner).await;
    assert_eq!(after.len(), before.len());
    for ((id, kek_id, live), (id_before, kek_before, live_before)) in after.iter().zip(&before) {
        assert_eq!((id, live), (id_before, live_before));
        if *live {
            assert_eq!(kek_id, new.id());
        } else {
            assert_eq!(*id, erased.as_uuid());
            assert_eq!(kek_id, kek_before, "an erased key's row is left alone");
        }
    }
    assert!(ledger_kek_ids(&db.owner)
        .await
        .iter()
        .all(|(_, k)| k == new.id()));

    // The new KEK alone opens every live identity, and the pseudonyms are unchanged (the
    // index's HMAC key was re-wrapped, not replaced).
    let vault = PatientVault::connect(db.app.clone(), new.clone())
        .await
        .unwrap();
    for ((mrn, (patient, sealed)), pseudonym) in patients.iter().zip(&pseudonyms_before) {
        let opened = mrn_of(&vault, *patient, sealed).await;
        if *patient == erased {
            assert_eq!(opened, None);
        } else {
            assert_eq!(opened.as_deref(), Some(*mrn));
            assert_eq!(
                vault.pseudonym(&Mrn::parse(mrn).unwrap()).await.unwrap(),
                *pseudonym
            );
        }
    }
    // The old KEK alone is refused at start-up, naming both.
    let refused = PatientVault::connect(db.app.clone(), old.clone())
        .await
        .err()
        .expect("the retired KEK is refused");
    let text = refused.to_string();
    assert!(text.contains(old.id()) && text.contains(new.id()), "{text}");

    // The events did not change: every chain verifies.
    let chains = audit::verify_chains(&db.app, &mut |_| {}).await.unwrap();
    assert!(chains.broken.is_empty(), "{:?}", chains.broken);

    // The record is append-only; the ledger's role may read it but not write it.
    for statement in [
        "UPDATE kek_rotations SET reason = 'x'",
        "DELETE FROM kek_rotations",
        "TRUNCATE kek_rotations",
        "DELETE FROM ledger_keys",
        "UPDATE ledger_keys SET wrapped = wrapped || '\\x00'::bytea",
        "UPDATE ledger_keys SET kek_id = 'local:0000000000000000'",
        "UPDATE patient_keys SET kek_id = 'local:0000000000000000' WHERE wrapped_key IS NOT NULL",
    ] {
        assert!(
            sqlx::query(statement).execute(&db.owner).await.is_err(),
            "{statement}"
        );
    }
    assert!(sqlx::query(
        "INSERT INTO kek_rotations (run_id, step, from_kek_id, to_kek_id, keys, actor_id, reason)
         VALUES (gen_random_uuid(), 'finished', 'a', 'b', 0, 'x', 'y')"
    )
    .execute(&db.app)
    .await
    .is_err());
    // A live key is not overwritten in place, not even by the owner.
    let overwrite =
        sqlx::query("UPDATE patient_keys SET wrapped_key = '\\x00' WHERE wrapped_key IS NOT NULL")
            .execute(&db.owner)
            .await
            .unwrap_err()
            .to_string();
    assert!(
        overwrite.contains("changes only by being re-wrapped"),
        "{overwrite}"
    );

    // Run again: nothing is left to re-wrap, and the run says so in its one record.
    let again = rotate(&db.owner, &keks, by(), 2).await.unwrap();
    assert_eq!((again.ledger_keys, again.patient_keys), (0, 0));
    assert_eq!(
        records(&db.app).await.last(),
        Some(&(again.run, "finished".to_string(), 0))
    );
    db.drop().await;
}

#[tokio::test]
async fn during_a_rotation_keys_under_either_kek_open_and_new_keys_take_the_current_one() {
    let db = TestDb::new().await;
    let old = kek(TEST_KEK);
    let new = kek(&LocalKek::generate());
    let first = {
        let ledger = db.ledger().await;
        let placed = place(&ledger, "MRN-BEFORE", &["K"]).await;
        sealed_identity(&ledger, &placed).await
    };
    // The roles restarted with the new KEK and the previous one, before the rotation.
    let keks = Keks::rotating(new.clone(), old.clone()).unwrap();
    let vault = Arc::new(
        PatientVault::connect_with(db.app.clone(), keks.clone())
            .await
            .unwrap(),
    );
    let ledger = Ledger::new(db.app.clone(), LedgerConfig::default(), vault.clone());
    let placed = place(&ledger, "MRN-DURING", &["K"]).await;
    let second = sealed_identity(&ledger, &placed).await;
    assert_eq!(
        mrn_of(&vault, first.0, &first.1).await.as_deref(),
        Some("MRN-BEFORE")
    );
    assert_eq!(
        mrn_of(&vault, second.0, &second.1).await.as_deref(),
        Some("MRN-DURING")
    );
    let by_patient = key_rows(&db.owner).await;
    let kek_of = |p: PatientId| {
        by_patient
            .iter()
            .find(|(id, _, _)| *id == p.as_uuid())
            .map(|(_, k, _)| k.clone())
            .unwrap()
    };
    assert_eq!(kek_of(first.0), old.id());
    assert_eq!(kek_of(second.0), new.id());

    // Only what the old KEK still wraps is re-wrapped.
    let report = rotate(&db.owner, &keks, by(), 1000).await.unwrap();
    assert_eq!((report.ledger_keys, report.patient_keys), (2, 1));
    let vault = PatientVault::connect(db.app.clone(), new.clone())
        .await
        .unwrap();
    assert_eq!(
        mrn_of(&vault, first.0, &first.1).await.as_deref(),
        Some("MRN-BEFORE")
    );
    db.drop().await;
}

#[tokio::test]
async fn a_key_under_a_kek_that_is_neither_stops_the_rotation_before_it_changes_anything() {
    let db = TestDb::new().await;
    let (a, b, c) = (
        kek(TEST_KEK),
        kek(&LocalKek::generate()),
        kek(&LocalKek::generate()),
    );
    // Keys under A (the one to retire), and one under C: a third KEK, from a role that
    // was given another key by mistake.
    patients(&db.ledger().await, &["MRN-A-1", "MRN-A-2"]).await;
    let stray = Keks::rotating(c.clone(), a.clone()).unwrap();
    let vault = Arc::new(
        PatientVault::connect_with(db.app.clone(), stray)
            .await
            .unwrap(),
    );
    let ledger = Ledger::new(db.app.clone(), LedgerConfig::default(), vault);
    patients(&ledger, &["MRN-C-1"]).await;
    let before = (key_rows(&db.owner).await, ledger_kek_ids(&db.owner).await);
    assert_eq!(
        before.0.iter().filter(|(_, k, _)| k == a.id()).count(),
        2,
        "{before:?}"
    );

    let keks = Keks::rotating(b.clone(), a.clone()).unwrap();
    let err = rotate(&db.owner, &keks, by(), 1000).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, KeyError::ForeignKek { .. }), "{text}");
    assert!(text.contains(&format!("1 under {}", c.id())), "{text}");
    assert_eq!(
        (key_rows(&db.owner).await, ledger_kek_ids(&db.owner).await),
        before
    );
    assert!(records(&db.owner).await.is_empty());
    // The same KEK as current and previous, and no previous at all, are refused too.
    assert!(Keks::rotating(b.clone(), b.clone()).is_err());
    assert!(rotate(&db.owner, &Keks::new(b), by(), 1000).await.is_err());
    db.drop().await;
}

#[tokio::test]
async fn a_run_that_stops_part_way_is_recorded_as_such_and_the_next_finishes_it() {
    let db = TestDb::new().await;
    let old = kek(TEST_KEK);
    let new_text = LocalKek::generate();
    let ledger = db.ledger().await;
    let mrns = ["MRN-P-1", "MRN-P-2", "MRN-P-3", "MRN-P-4", "MRN-P-5"];
    let sealed = patients(&ledger, &mrns).await;
    // The KMS goes away at the fifth wrap: the ledger's two keys and one batch of two
    // patient keys are done, the second batch is not.
    let flaky = Scripted {
        fail_at: Some(5),
        ..Scripted::new(&new_text)
    };
    let keks = Keks::rotating(Arc::new(flaky), old.clone()).unwrap();
    let err = rotate(&db.owner, &keks, by(), 2).await.unwrap_err();
    assert!(err.to_string().contains("KMS is unreachable"), "{err}");
    let first = records(&db.app).await;
    let run = first[0].0;
    assert_eq!(
        first,
        [
            (run, "ledger-keys".to_string(), 2),
            (run, "patient-keys".to_string(), 2)
        ]
    );
    // Meanwhile every key opens with the two KEKs.
    let new = kek(&new_text);
    let both = Keks::rotating(new.clone(), old.clone()).unwrap();
    let vault = PatientVault::connect_with(db.app.clone(), both.clone())
        .await
        .unwrap();
    for ((patient, s), mrn) in sealed.iter().zip(mrns) {
        assert_eq!(mrn_of(&vault, *patient, s).await.as_deref(), Some(mrn));
    }
    // The next run does the rest and ends the rotation.
    let report = rotate(&db.owner, &both, by(), 2).await.unwrap();
    assert_eq!((report.ledger_keys, report.patient_keys), (0, 3));
    let all = records(&db.app).await;
    assert_eq!(
        all[2..],
        [
            (report.run, "patient-keys".to_string(), 2),
            (report.run, "patient-keys".to_string(), 1),
            (report.run, "finished".to_string(), 0)
        ]
    );
    let vault = PatientVault::connect(db.app.clone(), new).await.unwrap();
    for ((patient, s), mrn) in sealed.iter().zip(mrns) {
        assert_eq!(mrn_of(&vault, *patient, s).await.as_deref(), Some(mrn));
    }
    db.drop().await;
}

#[tokio::test]
async fn an_erasure_in_the_middle_of_a_batch_wins_and_its_key_stays_destroyed() {
    let db = TestDb::new().await;
    let new_text = LocalKek::generate();
    let ledger = db.ledger().await;
    let sealed = patients(&ledger, &["MRN-E-1", "MRN-E-2", "MRN-E-3"]).await;
    let (erased, _) = sealed[1].clone();
    // The rotation waits at its first patient key's wrap (after the ledger's two): the
    // batch has been read, nothing of it written.
    let (rotation, go) = paused_rotation(&db, &new_text, 3).await;
    // The erasure takes no lock of the rotation's, so it is done at once.
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        ledger.erase_patient(
            erased,
            Reason::parse("patient asked").unwrap(),
            &actor("admin.1", Role::Admin),
        ),
    )
    .await
    .expect("the erasure does not wait for the rotation")
    .unwrap();
    go.notify_one();
    let report = rotation.await.unwrap().unwrap();
    assert_eq!(report.patient_keys, 2, "the erased key is not written back");
    let rows = key_rows(&db.owner).await;
    let row = rows
        .iter()
        .find(|(id, _, _)| *id == erased.as_uuid())
        .unwrap();
    assert!(!row.2, "the erased patient's key stays destroyed: {row:?}");
    let vault = PatientVault::connect(db.app.clone(), kek(&new_text))
        .await
        .unwrap();
    for (patient, s) in &sealed {
        let opened = mrn_of(&vault, *patient, s).await;
        assert_eq!(
            opened.is_none(),
            *patient == erased,
            "{patient}: {opened:?}"
        );
    }
    db.drop().await;
}

#[tokio::test]
async fn a_key_that_does_not_open_is_left_as_it_is_and_named() {
    let db = TestDb::new().await;
    let old = kek(TEST_KEK);
    let new = kek(&LocalKek::generate());
    let sealed = patients(&db.ledger().await, &["MRN-D-1", "MRN-D-2", "MRN-D-3"]).await;
    let (damaged, _) = sealed[0].clone();
    db.tamper(&[&format!(
        "UPDATE patient_keys SET wrapped_key = set_byte(wrapped_key, 19, get_byte(wrapped_key, 19) # 255)
          WHERE patient_id = '{}'",
        damaged.as_uuid()
    )])
    .await;
    let keks = Keks::rotating(new.clone(), old.clone()).unwrap();
    let err = rotate(&db.owner, &keks, by(), 1000).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, KeyError::Unfinished(_)), "{text}");
    assert!(
        text.contains(&damaged.to_string()) && text.contains("1 patient keys"),
        "{text}"
    );
    // The others are re-wrapped and recorded; the run is not finished.
    let rows = key_rows(&db.owner).await;
    for (id, kek_id, _) in &rows {
        let expected = if *id == damaged.as_uuid() {
            old.id()
        } else {
            new.id()
        };
        assert_eq!(kek_id, expected, "{id}");
    }
    let steps: Vec<String> = records(&db.app).await.into_iter().map(|r| r.1).collect();
    assert_eq!(steps, ["ledger-keys", "patient-keys"]);
    db.drop().await;
}

#[tokio::test]
async fn a_key_a_stale_role_adds_during_the_run_is_rewrapped_too() {
    let db = TestDb::new().await;
    let new_text = LocalKek::generate();
    let ledger = db.ledger().await;
    patients(&ledger, &["MRN-S-1", "MRN-S-2"]).await;
    let (rotation, go) = paused_rotation(&db, &new_text, 3).await;
    // A role still holding only the old KEK seals a new patient's identity meanwhile:
    // their key is wrapped by the old KEK, after the run's batch was read.
    let late = patients(&ledger, &["MRN-S-3"]).await.remove(0);
    go.notify_one();
    let report = rotation.await.unwrap().unwrap();
    assert_eq!(report.patient_keys, 3, "{report:?}");
    let rows = key_rows(&db.owner).await;
    let new = kek(&new_text);
    assert!(rows.iter().all(|(_, k, _)| k == new.id()), "{rows:?}");
    let vault = PatientVault::connect(db.app.clone(), new).await.unwrap();
    assert_eq!(
        mrn_of(&vault, late.0, &late.1).await.as_deref(),
        Some("MRN-S-3")
    );
    db.drop().await;
}

#[tokio::test]
async fn a_second_run_is_refused_while_one_is_running() {
    let db = TestDb::new().await;
    patients(&db.ledger().await, &["MRN-L-1"]).await;
    let new_text = LocalKek::generate();
    let (first, go) = paused_rotation(&db, &new_text, 1).await;
    let other = Keks::rotating(kek(&new_text), kek(TEST_KEK)).unwrap();
    let err = rotate(&db.owner, &other, by(), 1000).await.unwrap_err();
    assert!(matches!(err, KeyError::RotationRunning), "{err}");
    go.notify_one();
    let report = first.await.unwrap().unwrap();
    assert_eq!((report.ledger_keys, report.patient_keys), (2, 1));
    // The lock went with the run: the next one starts (and finds nothing to do).
    let again = rotate(&db.owner, &other, by(), 1000).await.unwrap();
    assert_eq!((again.ledger_keys, again.patient_keys), (0, 0));
    db.drop().await;
}
