//! The patient index: one stable pseudonymous [`PatientId`] per MRN.

use lis_domain::ids::PatientId;
use lis_domain::patient::Mrn;
use sqlx::PgPool;
use uuid::Uuid;

/// The patient id of `mrn`, created on first use. Safe under concurrency: two first
/// orders for one MRN get the same id.
pub async fn patient_id_for(pool: &PgPool, mrn: &Mrn) -> Result<PatientId, sqlx::Error> {
    sqlx::query(
        "INSERT INTO patient_index (mrn, patient_id) VALUES ($1, $2) ON CONFLICT (mrn) DO NOTHING",
    )
    .bind(mrn.as_str())
    .bind(Uuid::new_v4())
    .execute(pool)
    .await?;
    let id: Uuid = sqlx::query_scalar("SELECT patient_id FROM patient_index WHERE mrn = $1")
        .bind(mrn.as_str())
        .fetch_one(pool)
        .await?;
    Ok(PatientId::from_uuid(id))
}
