//! Key-encryption key rotation: every live key re-wrapped from the previous KEK to the
//! current one, the ledger readable throughout with both and afterwards with the new one
//! alone; erased patients stay erased, pseudonyms and hash chains stay as they were, and
//! a key under a KEK that is neither stops the rotation before it changes anything.

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
use std::sync::Arc;

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

    // Two keys a batch: the four live ones take two transactions (and one more, empty).
    let keks = Keks::rotating(new.clone(), old.clone()).unwrap();
    let report = rotate(&db.owner, &keks, by(), 2).await.unwrap();
    assert_eq!(
        report,
        RotationReport {
            from: old.id().to_string(),
            to: new.id().to_string(),
            ledger_keys: 2,
            patient_keys: 4,
        }
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

    // Recorded, append-only; the ledger's role may read the record but not write it.
    let recorded: (String, String, i64, i64, String, String) = sqlx::query_as(
        "SELECT from_kek_id, to_kek_id, ledger_keys, patient_keys, actor_id, reason FROM kek_rotations",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(
        recorded,
        (
            old.id().to_string(),
            new.id().to_string(),
            2,
            4,
            "security.officer".to_string(),
            "annual key rotation".to_string()
        )
    );
    for statement in [
        "UPDATE kek_rotations SET reason = 'x'",
        "DELETE FROM kek_rotations",
    ] {
        assert!(
            sqlx::query(statement).execute(&db.owner).await.is_err(),
            "{statement}"
        );
    }
    assert!(sqlx::query(
        "INSERT INTO kek_rotations (from_kek_id, to_kek_id, ledger_keys, patient_keys, actor_id, reason)
         VALUES ('a', 'b', 0, 0, 'x', 'y')"
    )
    .execute(&db.app)
    .await
    .is_err());

    // Run again (a rotation that stopped part-way is finished so): nothing left to do.
    let again = rotate(&db.owner, &keks, by(), 2).await.unwrap();
    assert_eq!((again.ledger_keys, again.patient_keys), (0, 0));
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
    let ledger = db.ledger().await;
    place(&ledger, "MRN-THIRD", &["K"]).await;
    let before = (key_rows(&db.owner).await, ledger_kek_ids(&db.owner).await);
    let (b, c) = (kek(&LocalKek::generate()), kek(&LocalKek::generate()));
    let keks = Keks::rotating(c.clone(), b.clone()).unwrap();
    let err = rotate(&db.owner, &keks, by(), 1000).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, KeyError::WrongKek { .. }), "{text}");
    assert!(
        text.contains(kek(TEST_KEK).id()),
        "names the KEK it found: {text}"
    );
    assert_eq!(
        (key_rows(&db.owner).await, ledger_kek_ids(&db.owner).await),
        before
    );
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM kek_rotations")
        .fetch_one(&db.owner)
        .await
        .unwrap();
    assert_eq!(recorded, 0);
    // The same KEK as current and previous, and no previous at all, are refused too.
    assert!(Keks::rotating(b.clone(), b.clone()).is_err());
    assert!(rotate(&db.owner, &Keks::new(b), by(), 1000).await.is_err());
    db.drop().await;
}
