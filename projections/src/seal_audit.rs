//! Checking the audit seals, and proving an event's inclusion.
//!
//! `lisledger audit verify` walks the Merkle log: every leaf must be the leaf of the event
//! it names (so an event that was deleted, or rewritten with a recomputed hash chain, no
//! longer matches), every stored checkpoint must carry a valid signature and the root of
//! that prefix of the log (so all checkpoints describe one append-only history), and a
//! checkpoint kept outside the database can be shown consistent with today's log.

use crate::merkle::{
    consistency_proof, inclusion_proof, verify_consistency, verify_inclusion, CompactRange, Hash,
};
use crate::seal::{event_leaf, Checkpoint, NoteVerifier, SealError};
use futures::TryStreamExt;
use lis_commands::connection::connection;
use sqlx::{PgPool, Row};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealReport {
    pub leaves: u64,
    pub checkpoints: u64,
    pub problems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SealAuditError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("{0}")]
    NotFound(String),
}

/// Every leaf hash of the log, in order, checking each against its event. `progress` is
/// called with the number of leaves read so far, every 1,000 leaves. The rows are read on
/// a connection taken through `lis_commands::connection`, so that a check cut short
/// closes it rather than give it back mid-statement.
async fn load_leaves(
    pool: &PgPool,
    problems: &mut Vec<String>,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Vec<Hash>, sqlx::Error> {
    let mut conn = connection(pool).await?;
    let mut rows = sqlx::query(
        "SELECT l.leaf_index, l.position, l.leaf_hash, e.hash AS event_hash
           FROM audit_log_leaves l LEFT JOIN events e ON e.position = l.position
          ORDER BY l.leaf_index",
    )
    .fetch(&mut *conn);
    let mut leaves = Vec::new();
    while let Some(row) = rows.try_next().await? {
        let index: i64 = row.get("leaf_index");
        let position: i64 = row.get("position");
        let stored: Vec<u8> = row.get("leaf_hash");
        if index != leaves.len() as i64 {
            problems.push(format!(
                "leaf {} is missing (next stored leaf is {index})",
                leaves.len()
            ));
        }
        match row.get::<Option<Vec<u8>>, _>("event_hash") {
            None => problems.push(format!(
                "leaf {index}: the event at position {position} is gone"
            )),
            Some(h) if event_leaf(position, &h).as_slice() != stored.as_slice() => {
                problems.push(format!(
                "leaf {index}: the event at position {position} no longer matches its sealed hash"
            ))
            }
            Some(_) => {}
        }
        leaves.push(stored.try_into().unwrap_or([0u8; 32]));
        if leaves.len() % 1000 == 0 {
            progress(leaves.len() as u64);
        }
    }
    Ok(leaves)
}

/// Checks the log and every stored checkpoint.
pub async fn verify_seals(
    pool: &PgPool,
    verifier: &NoteVerifier,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<SealReport, SealAuditError> {
    let mut report = SealReport::default();
    let leaves = load_leaves(pool, &mut report.problems, progress).await?;
    report.leaves = leaves.len() as u64;
    let checkpoints = sqlx::query(
        "SELECT tree_size, root_hash, signed_note FROM audit_checkpoints ORDER BY tree_size",
    )
    .fetch_all(&mut *connection(pool).await?)
    .await?;
    progress(report.leaves);
    report.checkpoints = checkpoints.len() as u64;
    let mut range = CompactRange::default();
    let mut next = leaves.iter();
    for row in checkpoints {
        let size: i64 = row.get("tree_size");
        let root: Vec<u8> = row.get("root_hash");
        let note: String = row.get("signed_note");
        let cp = match verifier.open(&note) {
            Ok(cp) => cp,
            Err(e) => {
                report.problems.push(format!("checkpoint {size}: {e}"));
                continue;
            }
        };
        if cp.tree_size != size as u64 || cp.root.as_slice() != root.as_slice() {
            report.problems.push(format!(
                "checkpoint {size}: the stored size or root differs from the signed note"
            ));
        }
        if cp.tree_size > leaves.len() as u64 {
            report.problems.push(format!(
                "checkpoint {size}: signs {} leaves but the log holds only {}",
                cp.tree_size,
                leaves.len()
            ));
            continue;
        }
        while range.size() < cp.tree_size {
            range.append(*next.next().expect("size checked above"));
        }
        if range.root() != cp.root {
            report.problems.push(format!(
                "checkpoint {size}: the log's first {size} leaves no longer have the signed root"
            ));
        }
    }
    Ok(report)
}

/// Shows that `external` (a signed note kept outside the database) describes a prefix of
/// today's log: the log was only ever appended to since.
pub async fn verify_external(
    pool: &PgPool,
    verifier: &NoteVerifier,
    external: &str,
) -> Result<Checkpoint, SealAuditError> {
    let old = verifier.open(external)?;
    let mut problems = Vec::new();
    let leaves = load_leaves(pool, &mut problems, &mut |_| {}).await?;
    let n = leaves.len() as u64;
    if old.tree_size > n {
        return Err(SealAuditError::NotFound(format!(
            "the external checkpoint signs {} leaves but the log holds only {n}: events were removed",
            old.tree_size
        )));
    }
    let now_root = crate::merkle::root(&leaves);
    let proof = consistency_proof(&leaves, old.tree_size as usize);
    if !verify_consistency(old.tree_size, n, &old.root, &now_root, &proof) {
        return Err(SealAuditError::NotFound(format!(
            "the log is not an extension of the external checkpoint of size {}: history was rewritten",
            old.tree_size
        )));
    }
    Ok(old)
}

/// An inclusion proof of one event against the latest checkpoint that covers it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InclusionProof {
    pub position: i64,
    pub leaf_index: u64,
    #[serde(with = "crate::merkle::hex_hash")]
    pub leaf_hash: Hash,
    pub tree_size: u64,
    #[serde(with = "crate::merkle::hex_hashes")]
    pub proof: Vec<Hash>,
    #[serde(with = "crate::merkle::hex_hash")]
    pub root: Hash,
    pub signed_note: String,
    pub verified: bool,
}

pub async fn prove(
    pool: &PgPool,
    verifier: &NoteVerifier,
    position: i64,
) -> Result<InclusionProof, SealAuditError> {
    let index: i64 =
        sqlx::query_scalar("SELECT leaf_index FROM audit_log_leaves WHERE position = $1")
            .bind(position)
            .fetch_optional(pool)
            .await?
            .ok_or_else(|| {
                SealAuditError::NotFound(format!(
                    "no event at position {position} has been sealed yet"
                ))
            })?;
    let note: String = sqlx::query_scalar(
        "SELECT signed_note FROM audit_checkpoints WHERE tree_size > $1 ORDER BY tree_size DESC LIMIT 1",
    )
    .bind(index)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| SealAuditError::NotFound(format!("no checkpoint covers position {position} yet")))?;
    let cp = verifier.open(&note)?;
    let mut problems = Vec::new();
    let leaves = load_leaves(pool, &mut problems, &mut |_| {}).await?;
    let size = (cp.tree_size as usize).min(leaves.len());
    let proof = inclusion_proof(&leaves[..size], index as usize);
    let leaf = leaves[index as usize];
    let verified = verify_inclusion(&leaf, index as u64, cp.tree_size, &proof, &cp.root);
    Ok(InclusionProof {
        position,
        leaf_index: index as u64,
        leaf_hash: leaf,
        tree_size: cp.tree_size,
        proof,
        root: cp.root,
        signed_note: note,
        verified,
    })
}
