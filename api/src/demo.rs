//! `lisledger demo`: a realistic synthetic lab day, through the real command path.
//!
//! Orders draw their tests from the order mix ([`crate::mix`]: profiles such as a blood
//! count or a liver panel, by weight); each order's tests go into one tube per specimen
//! type and container; about 5% of tubes are rejected (and recollected), about 3% of all
//! results are critical (notified with read-back before release), about 1% of released
//! results are amended. Values are drawn around each test's reference interval. The same
//! generator serves the benchmarks: `--orders` or `--tests` scales it.

use crate::mix::{can_be_critical, OrderMix};
use anyhow::Context;
use chrono::{Duration, Utc};
use lis_commands::ledger::NewOrder;
use lis_commands::{CommandContext, Ledger};
use lis_domain::actor::{Actor, ActorId, Role};
use lis_domain::catalogue::{ResultKind, TestDefinition};
use lis_domain::ids::{AccessionNumber, ResultId, SampleId, TestCode};
use lis_domain::order::Priority;
use lis_domain::patient::{NewPatient, RawPatient};
use lis_domain::result::{CriticalNotification, NotificationMethod, RecordResult, ResultCommand};
use lis_domain::sample::{CollectSample, RejectionReason, SampleCommand, SpecimenCondition};
use lis_domain::text::{Label, PersonName, Place, Reason};
use lis_domain::value::ResultValue;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

const SITES: [&str; 5] = ["OPD", "Ward 3", "ICU", "Emergency", "Home collection"];
const NAMES: [&str; 8] = [
    "Asha Verma",
    "Rahul Iyer",
    "Meena Das",
    "Arjun Nair",
    "Fatima Khan",
    "Vikram Rao",
    "Lakshmi Pillai",
    "Sanjay Gupta",
];
const REJECTIONS: [RejectionReason; 4] = [
    RejectionReason::Haemolysed,
    RejectionReason::Clotted,
    RejectionReason::InsufficientVolume,
    RejectionReason::Mislabelled,
];

fn ctx(id: &str, role: Role) -> CommandContext {
    let mut c = CommandContext::new(Actor::new(ActorId::parse(id).expect("static id"), role));
    c.client_addr = Some("demo".into());
    c
}

/// How big a day to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaySize {
    /// This many orders.
    Orders(usize),
    /// Orders until this many tests are ordered (the last order takes what is left).
    Tests(usize),
}

impl DaySize {
    fn count(self) -> usize {
        match self {
            DaySize::Orders(n) | DaySize::Tests(n) => n,
        }
    }

    fn with_count(self, n: usize) -> Self {
        match self {
            DaySize::Orders(_) => DaySize::Orders(n),
            DaySize::Tests(_) => DaySize::Tests(n),
        }
    }

    fn reached(self, report: &DemoReport) -> bool {
        match self {
            DaySize::Orders(n) => report.orders >= n,
            DaySize::Tests(n) => report.tests >= n,
        }
    }

    /// Tests for the next order: those drawn, no more than a test count has left.
    fn next_order_tests(self, report: &DemoReport, drawn: usize) -> usize {
        match self {
            DaySize::Orders(_) => drawn,
            DaySize::Tests(n) => drawn.min(n - report.tests),
        }
    }
}

#[derive(Debug, Default)]
pub struct DemoReport {
    pub orders: usize,
    /// Tests ordered (a result each, unless its tube is still to be recollected).
    pub tests: usize,
    pub samples: usize,
    pub rejected: usize,
    pub results: usize,
    pub critical: usize,
    pub amended: usize,
}

/// A value for `def`: critical with probability `p_critical`, else around the interval.
pub(crate) fn value_for(
    def: &TestDefinition,
    rng: &mut StdRng,
    p_critical: f64,
) -> (ResultValue, bool) {
    match &def.kind {
        ResultKind::Coded { allowed } => {
            let answer = if rng.gen_bool(0.85) {
                allowed[0].clone()
            } else {
                allowed[rng.gen_range(0..allowed.len())].clone()
            };
            (ResultValue::Coded { answer }, false)
        }
        ResultKind::Numeric { unit, decimals } => {
            let r = def.reference_female;
            let (low, high) = (
                r.low.unwrap_or(0.0),
                r.high.unwrap_or(r.low.unwrap_or(1.0) * 2.0),
            );
            let critical = can_be_critical(def) && rng.gen_bool(p_critical);
            let v = if critical {
                match (def.critical.low, def.critical.high) {
                    (Some(l), _) if rng.gen_bool(0.5) || def.critical.high.is_none() => l * 0.8,
                    (_, Some(h)) => h * 1.2,
                    _ => high,
                }
            } else {
                let span = (high - low).max(0.1);
                (low + rng.gen_range(-0.15..1.15) * span).max(0.0)
            };
            let factor = 10f64.powi(i32::from(*decimals));
            let mut v = (v * factor).round() / factor;
            if let Some(max) = def.physical.high {
                v = v.min(max);
            }
            (
                ResultValue::Numeric {
                    value: v,
                    unit: unit.clone(),
                },
                critical,
            )
        }
    }
}

/// The corrected value of an amendment (numeric results only).
pub(crate) fn amended(value: &ResultValue) -> Option<ResultValue> {
    match value {
        ResultValue::Numeric { value, unit } => Some(ResultValue::Numeric {
            value: value + 1.0,
            unit: unit.clone(),
        }),
        ResultValue::Coded { .. } => None,
    }
}

/// Loads a day of `size` from `concurrency` concurrent clients (each its own part of the
/// day, seeded `seed + part`), and adds up what they did.
pub async fn run(
    ledger: &Ledger,
    mix: &OrderMix,
    size: DaySize,
    seed: u64,
    concurrency: usize,
) -> anyhow::Result<DemoReport> {
    let n = size.count();
    let parts = concurrency.clamp(1, n.max(1));
    let reports = futures::future::try_join_all((0..parts).map(|part| {
        let share = n / parts + usize::from(part < n % parts);
        run_part(
            ledger,
            mix,
            size.with_count(share),
            seed + part as u64,
            part,
        )
    }))
    .await?;
    let mut total = DemoReport::default();
    for r in reports {
        total.orders += r.orders;
        total.tests += r.tests;
        total.samples += r.samples;
        total.rejected += r.rejected;
        total.results += r.results;
        total.critical += r.critical;
        total.amended += r.amended;
    }
    Ok(total)
}

async fn run_part(
    ledger: &Ledger,
    mix: &OrderMix,
    size: DaySize,
    seed: u64,
    part: usize,
) -> anyhow::Result<DemoReport> {
    let mut rng = StdRng::seed_from_u64(seed);
    let p_critical = mix.p_critical();
    // Patients: about one for every two orders, so some come back.
    let patients = match size {
        DaySize::Orders(n) => n / 2,
        DaySize::Tests(n) => (n as f64 / mix.mean_tests() / 2.0) as usize,
    }
    .max(1);
    let (reception, phleb, tech, path) = (
        ctx("reception.demo", Role::Reception),
        ctx("phleb.demo", Role::Phlebotomist),
        ctx("tech.demo", Role::Technologist),
        ctx("path.demo", Role::Pathologist),
    );
    let mut report = DemoReport::default();
    // Part 0 keeps the single-client names; other parts add their number.
    let run_id = match (rng.gen_range(10_000..99_999u32), part) {
        (id, 0) => id.to_string(),
        (id, p) => format!("{id}P{p}"),
    };
    let mut i = 0;
    while !size.reached(&report) {
        let patient_no = rng.gen_range(0..patients);
        let female = patient_no % 2 == 0;
        let mrn = format!("DEMO-{run_id}-{patient_no}");
        let born = format!(
            "{}-0{}-1{}",
            1950 + patient_no % 50,
            1 + patient_no % 9,
            patient_no % 9
        );
        let raw = RawPatient {
            mrn: &mrn,
            name: NAMES[patient_no % NAMES.len()],
            sex: if female { "female" } else { "male" },
            date_of_birth: &born,
            ..RawPatient::default()
        };
        let patient = NewPatient::parse(raw, ledger.policy().day_of(Utc::now()))
            .map_err(|e| anyhow::anyhow!("demo patient: {e}"))?;
        let mut chosen = mix.draw(&mut rng);
        chosen.truncate(size.next_order_tests(&report, chosen.len()));
        let priority = match rng.gen_range(0..100) {
            0..=79 => Priority::Routine,
            80..=94 => Priority::Urgent,
            _ => Priority::Stat,
        };
        let placed = ledger
            .place_order(
                NewOrder {
                    patient,
                    ordering_clinician: PersonName::parse("Dr Rao")?,
                    priority,
                    collection_site: Place::parse(SITES[rng.gen_range(0..SITES.len())])?,
                    clinical_notes: None,
                    tests: chosen.iter().map(|t| t.code.clone()).collect(),
                },
                &reception,
            )
            .await
            .context("placing a demo order")?;
        report.orders += 1;
        report.tests += chosen.len();
        // One tube per specimen type and container.
        let mut tubes: BTreeMap<(String, String), Vec<&TestDefinition>> = BTreeMap::new();
        for t in &chosen {
            tubes
                .entry((t.specimen.clone(), t.container.clone()))
                .or_default()
                .push(t);
        }
        for (j, ((specimen, container), tube_tests)) in tubes.into_iter().enumerate() {
            let codes: Vec<TestCode> = tube_tests.iter().map(|t| t.code.clone()).collect();
            let mut attempt = 0;
            let sample = loop {
                let sample_id = SampleId::new();
                let accession = AccessionNumber::parse(&format!("D{run_id}-{i}-{j}-{attempt}"))?;
                ledger
                    .execute_sample(
                        sample_id,
                        SampleCommand::Collect(CollectSample {
                            sample_id,
                            order_id: placed.order_id,
                            accession_number: accession,
                            specimen_type: specimen.clone(),
                            container: container.clone(),
                            tests: codes.clone(),
                            collected_by: phleb.actor.id.clone(),
                            collected_at: Utc::now() - Duration::minutes(30),
                        }),
                        &phleb,
                    )
                    .await?;
                report.samples += 1;
                if attempt == 0 && rng.gen_bool(0.05) {
                    let reason = REJECTIONS[rng.gen_range(0..REJECTIONS.len())];
                    ledger
                        .execute_sample(
                            sample_id,
                            SampleCommand::Reject {
                                reason,
                                detail: None,
                            },
                            &tech,
                        )
                        .await?;
                    report.rejected += 1;
                    attempt += 1;
                    continue;
                }
                ledger
                    .execute_sample(
                        sample_id,
                        SampleCommand::Receive {
                            received_by: tech.actor.id.clone(),
                            received_at: Utc::now(),
                            condition: SpecimenCondition::Satisfactory {},
                        },
                        &tech,
                    )
                    .await?;
                break sample_id;
            };
            for def in tube_tests {
                let result_id = ResultId::for_test(sample, &def.code);
                let (value, critical) = value_for(def, &mut rng, p_critical);
                ledger
                    .execute_result(
                        result_id,
                        ResultCommand::Record(RecordResult {
                            result_id,
                            sample_id: sample,
                            test_code: def.code.clone(),
                            value: value.clone(),
                            method: None,
                            instrument: Some(Label::parse("Analyser 1")?),
                            raw_message: None,
                        }),
                        &tech,
                    )
                    .await?;
                report.results += 1;
                // The value drawn may be critical by chance too: ask the result.
                if critical || ledger.result(result_id).await?.is_critical() {
                    ledger
                        .execute_result(
                            result_id,
                            ResultCommand::RecordCriticalNotification {
                                by: tech.actor.id.clone(),
                                notification: CriticalNotification {
                                    notified_person: PersonName::parse("Dr Rao")?,
                                    method: NotificationMethod::Phone,
                                    value_conveyed: value.to_string(),
                                    read_back_confirmed: true,
                                    notified_at: Utc::now(),
                                },
                            },
                            &tech,
                        )
                        .await?;
                    report.critical += 1;
                }
                ledger
                    .execute_result(
                        result_id,
                        ResultCommand::Verify {
                            by: tech.actor.id.clone(),
                        },
                        &tech,
                    )
                    .await?;
                ledger
                    .execute_result(
                        result_id,
                        ResultCommand::Authorise {
                            by: path.actor.id.clone(),
                        },
                        &path,
                    )
                    .await?;
                if rng.gen_bool(0.01) {
                    if let Some(amended) = amended(&value) {
                        ledger
                            .execute_result(
                                result_id,
                                ResultCommand::Amend {
                                    value: amended,
                                    reason: Reason::parse("dilution factor corrected")?,
                                },
                                &path,
                            )
                            .await?;
                        report.amended += 1;
                    }
                }
            }
        }
        i += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mix::CRITICAL_SHARE;
    use lis_domain::catalogue::parse_csv;
    use lis_domain::flags::flags_for;

    fn seed_catalogue() -> Vec<TestDefinition> {
        parse_csv(include_str!("../../deploy/seed/test-catalogue.csv")).unwrap()
    }

    /// The share of `orders` orders' results drawn as the demo draws them (orders from the
    /// mix, values by `value_for`) that are critical by the catalogue's own limits.
    fn critical_share(mix: &OrderMix, orders: usize) -> f64 {
        let mut rng = StdRng::seed_from_u64(11);
        let (mut results, mut critical) = (0usize, 0usize);
        for _ in 0..orders {
            for def in mix.draw(&mut rng) {
                let (value, drawn) = value_for(def, &mut rng, mix.p_critical());
                let flagged = flags_for(&value, None, &def.critical, None)
                    .iter()
                    .any(|f| f.is_critical());
                assert!(!drawn || flagged, "{} {value} drawn critical", def.code);
                results += 1;
                critical += usize::from(flagged);
            }
        }
        critical as f64 / results as f64
    }

    /// Near 3% of all results are critical, whatever the mix: not 3% of the tests that
    /// have limits, which a blood-count-heavy mix orders more often than a uniform one.
    #[test]
    fn about_three_in_a_hundred_results_are_critical() {
        let tests = seed_catalogue();
        for mix in [
            OrderMix::parse(crate::mix::SEED, &tests).unwrap(),
            OrderMix::uniform(&tests).unwrap(),
        ] {
            let p = mix.p_critical();
            assert!(p > CRITICAL_SHARE && p <= 1.0, "{p}");
            let share = critical_share(&mix, 30_000);
            assert!(
                (0.027..0.033).contains(&share),
                "{share} ({})",
                mix.describe()
            );
        }
    }

    #[test]
    fn a_catalogue_without_critical_limits_draws_none() {
        let tests: Vec<_> = seed_catalogue()
            .into_iter()
            .filter(|t| !can_be_critical(t))
            .collect();
        assert!(!tests.is_empty());
        let mix = OrderMix::uniform(&tests).unwrap();
        assert_eq!(mix.p_critical(), 0.0);
        assert_eq!(critical_share(&mix, 1_000), 0.0);
    }

    /// A day sized in tests orders exactly that many: the last order takes what is left.
    #[test]
    fn a_day_sized_in_tests_stops_at_its_count() {
        let size = DaySize::Tests(10);
        let mut report = DemoReport::default();
        let mut orders = Vec::new();
        for drawn in [4, 4, 4, 4] {
            if size.reached(&report) {
                break;
            }
            let n = size.next_order_tests(&report, drawn);
            report.tests += n;
            report.orders += 1;
            orders.push(n);
        }
        assert_eq!(orders, [4, 4, 2]);
        assert!(size.reached(&report));
        assert_eq!(DaySize::Orders(3).next_order_tests(&report, 4), 4);
        assert_eq!(size.with_count(7), DaySize::Tests(7));
    }
}
