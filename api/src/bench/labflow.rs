//! One order's realistic life through the HTTP API, with the demo generator's mix: order
//! (tests drawn from the order mix, [`crate::mix`]) → collect one tube per specimen and container (about
//! 5% rejected and recollected) → receive → record each result (about 3% of all
//! critical, phoned through before release) → verify → authorise (about 1% later amended).

use super::client::{Answer, Api, Tokens};
use crate::mix::OrderMix;
use chrono::Utc;
use lis_domain::catalogue::TestDefinition;
use lis_domain::result::{CriticalNotification, NotificationMethod};
use lis_domain::sample::RejectionReason;
use lis_domain::text::PersonName;
use lis_domain::value::ResultValue;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Mutex;
use tokio::time::Interval;

/// The aggregate a command wrote to: its read model is named after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Order,
    Sample,
    Result,
}

/// Where a flow reports each command it sent.
pub trait Sink: Send {
    fn command(&mut self, kind: Kind, answer: &Answer);
}

/// One load-generating client.
pub struct Flow<'a> {
    pub api: &'a Api,
    pub tokens: &'a Tokens,
    pub mix: &'a OrderMix,
    /// Distinguishes this run and client in accession numbers and MRNs.
    pub run: u32,
    pub client: usize,
    /// Patients per client: orders reuse them, so cumulative results grow.
    pub patients: usize,
    /// When set, every command first waits for its tick (a steady rate shared by all
    /// clients); else the client sends as fast as answers come (closed loop).
    pub pace: Option<Arc<Mutex<Interval>>>,
}

/// A flow stops issuing commands at its deadline (the order is left where it was).
struct Stop;

/// One order in progress: where its commands are reported, and until when.
struct Go<'f, 's> {
    flow: &'f Flow<'f>,
    sink: &'s mut dyn Sink,
    deadline: Instant,
}

impl Go<'_, '_> {
    /// Sends one command; `Ok(None)` when it was refused or failed.
    async fn send(
        &mut self,
        kind: Kind,
        token: &str,
        path: &str,
        body: Value,
    ) -> Result<Option<Value>, Stop> {
        if let Some(pace) = &self.flow.pace {
            pace.lock().await.tick().await;
        }
        if Instant::now() >= self.deadline {
            return Err(Stop);
        }
        match self.flow.api.command(token, path, &body).await {
            Ok(answer) => {
                self.sink.command(kind, &answer);
                Ok(answer.status.is_success().then_some(answer.body))
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "request failed");
                Ok(None)
            }
        }
    }
}

fn notification(value: &ResultValue) -> Value {
    serde_json::to_value(CriticalNotification {
        notified_person: PersonName::parse("Dr Rao").expect("static name"),
        method: NotificationMethod::Phone,
        value_conveyed: value.to_string(),
        read_back_confirmed: true,
        notified_at: Utc::now(),
    })
    .unwrap_or_default()
}

impl<'a> Flow<'a> {
    /// Runs order number `i` of this client to the end, or until `deadline`.
    pub async fn order(&self, rng: &mut StdRng, i: usize, deadline: Instant, sink: &mut dyn Sink) {
        let mut go = Go {
            flow: self,
            sink,
            deadline,
        };
        let _ = self.run_order(rng, i, &mut go).await;
    }

    async fn run_order(&self, rng: &mut StdRng, i: usize, go: &mut Go<'_, '_>) -> Result<(), Stop> {
        let t = self.tokens;
        let patient_no = rng.gen_range(0..self.patients.max(1));
        let chosen = self.mix.draw(rng);
        let priority = match rng.gen_range(0..100) {
            0..=79 => "routine",
            80..=94 => "urgent",
            _ => "stat",
        };
        let run = self.run & 0xFFFFF;
        let order = json!({
            "patient": {
                "mrn": format!("BENCH-{run:05X}-{}-{patient_no}", self.client),
                "name": "Asha Verma",
                "sex": if patient_no % 2 == 0 { "female" } else { "male" },
                "date_of_birth": format!("{}-0{}-1{}", 1950 + patient_no % 50, 1 + patient_no % 9, patient_no % 9),
            },
            "ordering_clinician": "Dr Rao",
            "priority": priority,
            "collection_site": "OPD",
            "tests": chosen.iter().map(|d| d.code.as_str()).collect::<Vec<_>>(),
        });
        let Some(placed) = go.send(Kind::Order, &t.reception, "/orders", order).await? else {
            return Ok(());
        };
        let mut tubes: BTreeMap<(&str, &str), Vec<&TestDefinition>> = BTreeMap::new();
        for d in &chosen {
            tubes
                .entry((&d.specimen, &d.container))
                .or_default()
                .push(d);
        }
        for (j, ((specimen, container), tube_tests)) in tubes.into_iter().enumerate() {
            let mut attempt = 0;
            let sample = loop {
                let collect = json!({
                    "order_id": placed["id"],
                    "accession_number": format!("B{run:05X}-{}-{i}-{j}{attempt}", self.client),
                    "specimen_type": specimen, "container": container,
                    "tests": tube_tests.iter().map(|d| d.code.as_str()).collect::<Vec<_>>(),
                });
                let Some(s) = go
                    .send(Kind::Sample, &t.phlebotomist, "/samples", collect)
                    .await?
                else {
                    return Ok(());
                };
                let id = s["id"].as_str().unwrap_or_default().to_string();
                if attempt == 0 && rng.gen_bool(0.05) {
                    let reasons = [
                        RejectionReason::Haemolysed,
                        RejectionReason::Clotted,
                        RejectionReason::InsufficientVolume,
                    ];
                    let reason = json!({"reason": reasons[rng.gen_range(0..reasons.len())]});
                    let path = format!("/samples/{id}/reject");
                    go.send(Kind::Sample, &t.technologist, &path, reason)
                        .await?;
                    attempt += 1;
                    continue;
                }
                let path = format!("/samples/{id}/receive");
                if go
                    .send(Kind::Sample, &t.technologist, &path, json!({}))
                    .await?
                    .is_none()
                {
                    return Ok(());
                }
                break id;
            };
            for d in tube_tests {
                self.result(rng, &sample, d, go).await?;
            }
        }
        Ok(())
    }

    async fn result(
        &self,
        rng: &mut StdRng,
        sample: &str,
        def: &TestDefinition,
        go: &mut Go<'_, '_>,
    ) -> Result<(), Stop> {
        let (t, k) = (self.tokens, Kind::Result);
        let (value, critical) = crate::demo::value_for(def, rng, self.mix.p_critical());
        let record = json!({"sample_id": sample, "test_code": def.code.as_str(),
                            "value": value, "instrument": "Analyser 1"});
        let Some(r) = go.send(k, &t.technologist, "/results", record).await? else {
            return Ok(());
        };
        let id = r["id"].as_str().unwrap_or_default().to_string();
        let call = format!("/results/{id}/critical-notifications");
        if critical {
            go.send(k, &t.technologist, &call, notification(&value))
                .await?;
        }
        let verify = format!("/results/{id}/verify");
        go.send(k, &t.technologist, &verify, json!({})).await?;
        let authorise = format!("/results/{id}/authorise");
        if go
            .send(k, &t.pathologist, &authorise, json!({}))
            .await?
            .is_none()
        {
            // Critical by the catalogue's limits although not drawn so: phone it through.
            go.send(k, &t.technologist, &call, notification(&value))
                .await?;
            go.send(k, &t.pathologist, &authorise, json!({})).await?;
        }
        if let Some(amended) = rng
            .gen_bool(0.01)
            .then(|| crate::demo::amended(&value))
            .flatten()
        {
            let amend = format!("/results/{id}/amend");
            let body = json!({"value": amended, "reason": "dilution factor corrected"});
            go.send(k, &t.pathologist, &amend, body).await?;
        }
        Ok(())
    }
}
