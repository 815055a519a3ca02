//! An in-memory lab answering the aggregates' look-ups, for given/when/then tests.

use crate::catalogue::{parse_csv, Catalogue, CatalogueVersion};
use crate::flags::PreviousResult;
use crate::ids::{AccessionNumber, OrderId, OrderNumber, PatientId, ResultId, SampleId, TestCode};
use crate::order::{OrderFacts, Priority, TestLine};
use crate::patient::{Age, Sex};
use crate::sample::{SampleFacts, SampleStatus, SpecimenCondition};
use crate::sealed::{Sealed, SealedKind};
use crate::services::{LabLookup, LabPolicy, LabServices, LookupError};
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

pub const SEED: &str = include_str!("../../../deploy/seed/test-catalogue.csv");

#[derive(Clone, Default)]
pub struct Lab {
    pub orders: HashMap<OrderId, OrderFacts>,
    pub samples: HashMap<SampleId, SampleFacts>,
    pub accessions: BTreeSet<AccessionNumber>,
    pub previous: Option<PreviousResult>,
    pub released: BTreeSet<TestCode>,
    /// When the result's current value was stored (every result alike).
    pub value_stored_at: Option<DateTime<Utc>>,
    /// Results released now, by order and test.
    pub released_results: HashMap<(OrderId, TestCode), Vec<ResultId>>,
    pub four_eyes: Option<bool>,
    /// The patient has been erased: their age can no longer be known.
    pub erased: bool,
}

/// A sealed identity as the tests' orders carry it (the domain never opens one).
pub fn sealed_identity() -> Sealed {
    Sealed {
        kind: SealedKind::PatientIdentity,
        nonce: "AAAAAAAAAAAAAAAA".into(),
        ciphertext: "c2VhbGVk".into(),
    }
}

pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 3, 10, 0, 0).unwrap()
}

pub fn code(c: &str) -> TestCode {
    TestCode::parse(c).unwrap()
}

pub fn catalogue() -> Arc<Catalogue> {
    Arc::new(Catalogue::new(
        CatalogueVersion(1),
        parse_csv(SEED).unwrap(),
    ))
}

#[async_trait]
impl LabLookup for Lab {
    async fn catalogue(&self) -> Result<Arc<Catalogue>, LookupError> {
        Ok(catalogue())
    }
    async fn order(&self, id: OrderId) -> Result<Option<OrderFacts>, LookupError> {
        Ok(self.orders.get(&id).cloned())
    }
    async fn sample(&self, id: SampleId) -> Result<Option<SampleFacts>, LookupError> {
        Ok(self.samples.get(&id).cloned())
    }
    async fn accession_in_use(&self, a: &AccessionNumber) -> Result<bool, LookupError> {
        Ok(self.accessions.contains(a))
    }
    async fn previous_released(
        &self,
        _patient: PatientId,
        _test: &TestCode,
        _unit: &str,
        _before: DateTime<Utc>,
    ) -> Result<Option<PreviousResult>, LookupError> {
        Ok(self.previous.clone())
    }
    async fn age_at(
        &self,
        _patient: PatientId,
        _identity: &Sealed,
        at: DateTime<Utc>,
    ) -> Result<Option<Age>, LookupError> {
        let born = NaiveDate::from_ymd_opt(1986, 1, 1).unwrap();
        Ok((!self.erased).then(|| Age::on(born, self.policy().day_of(at))))
    }
    async fn released_tests(&self, _order: OrderId) -> Result<BTreeSet<TestCode>, LookupError> {
        Ok(self.released.clone())
    }
    async fn value_stored_at(
        &self,
        _result: ResultId,
    ) -> Result<Option<DateTime<Utc>>, LookupError> {
        Ok(self.value_stored_at)
    }
    async fn released_results(
        &self,
        order: OrderId,
        test: &TestCode,
    ) -> Result<Vec<ResultId>, LookupError> {
        Ok(self
            .released_results
            .get(&(order, test.clone()))
            .cloned()
            .unwrap_or_default())
    }
    fn policy(&self) -> LabPolicy {
        LabPolicy {
            four_eyes: self.four_eyes.unwrap_or(true),
            ..LabPolicy::default()
        }
    }
    fn now(&self) -> DateTime<Utc> {
        now()
    }
}

impl Lab {
    pub fn services(self) -> LabServices {
        LabServices::new(Arc::new(self))
    }

    /// An order of `tests` for a 40-year-old woman.
    pub fn with_order(mut self, order_id: OrderId, tests: &[&str]) -> Self {
        self.orders.insert(
            order_id,
            OrderFacts {
                order_id,
                order_number: OrderNumber::parse("ORD-1").unwrap(),
                patient_id: PatientId::from_uuid(uuid::Uuid::from_u128(7)),
                sex: Sex::Female,
                identity: sealed_identity(),
                priority: Priority::Routine,
                cancelled: false,
                tests: tests
                    .iter()
                    .map(|t| {
                        (
                            code(t),
                            TestLine::Active {
                                catalogue_version: CatalogueVersion(1),
                            },
                        )
                    })
                    .collect(),
            },
        );
        self
    }

    /// A serum sample of the order in the given status.
    pub fn with_sample(
        mut self,
        sample_id: SampleId,
        order_id: OrderId,
        tests: &[&str],
        status: SampleStatus,
    ) -> Self {
        self.samples.insert(
            sample_id,
            SampleFacts {
                sample_id,
                order_id,
                accession_number: AccessionNumber::parse("ACC-0001").unwrap(),
                specimen_type: "serum".into(),
                container: "red/SST".into(),
                tests: tests.iter().map(|t| code(t)).collect(),
                status,
                collected_at: now() - chrono::Duration::hours(1),
                received_at: (status != SampleStatus::Collected)
                    .then(|| now() - chrono::Duration::minutes(30)),
                condition: (status != SampleStatus::Collected)
                    .then_some(SpecimenCondition::Satisfactory {}),
                parent: None,
                children: Vec::new(),
            },
        );
        self
    }
}
