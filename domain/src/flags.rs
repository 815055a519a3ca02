//! Flagging: a value against the reference interval (L / H), the critical limits
//! (LL / HH) and the patient's previous released result (delta check).
//!
//! Which interval applies depends on the patient's sex and age at collection. The seed
//! catalogue holds adult intervals only, so a patient under 18 gets no L / H flag (and
//! the event says why) rather than a wrong one; critical limits apply at every age.

use crate::catalogue::{DeltaRule, Interval, TestDefinition, DEFAULT_DELTA_RULE};
use crate::ids::ResultId;
use crate::patient::{Age, Sex};
use crate::value::ResultValue;
use serde::{Deserialize, Serialize};

/// A flag on a result.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum Flag {
    /// Below the reference interval.
    L,
    /// Above the reference interval.
    H,
    /// Below the critical (panic) limit.
    LL,
    /// Above the critical (panic) limit.
    HH,
    /// Changed more than the test's delta threshold since the previous released result.
    D,
}

impl Flag {
    /// The flag as labs print it (`L`, `HH`, `D`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Flag::L => "L",
            Flag::H => "H",
            Flag::LL => "LL",
            Flag::HH => "HH",
            Flag::D => "D",
        }
    }

    pub fn is_critical(&self) -> bool {
        matches!(self, Flag::LL | Flag::HH)
    }
}

/// The reference interval that was applied, and for whom.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AppliedInterval {
    pub interval: Option<Interval>,
    /// Why this interval (or none) applied: `adult male`, `no interval for age 7 y`…
    pub basis: String,
}

/// Chooses the reference interval for a patient of `sex` and `age`.
pub fn reference_interval(def: &TestDefinition, sex: Sex, age: Age) -> AppliedInterval {
    if !age.is_adult() {
        return AppliedInterval {
            interval: None,
            basis: format!(
                "no interval for age {} y (catalogue holds adult intervals)",
                age.years
            ),
        };
    }
    match sex {
        Sex::Male => AppliedInterval {
            interval: Some(def.reference_male),
            basis: "adult male".into(),
        },
        Sex::Female => AppliedInterval {
            interval: Some(def.reference_female),
            basis: "adult female".into(),
        },
        Sex::Other | Sex::Unknown if def.reference_male == def.reference_female => {
            AppliedInterval {
                interval: Some(def.reference_male),
                basis: "adult (same for both sexes)".into(),
            }
        }
        Sex::Other | Sex::Unknown => AppliedInterval {
            interval: None,
            basis: "no interval: sex-specific intervals and sex not male or female".into(),
        },
    }
}

/// The patient's previous released result of the same test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PreviousResult {
    pub result_id: ResultId,
    pub value: f64,
    pub collected_at: chrono::DateTime<chrono::Utc>,
}

/// The delta check as performed: what was compared and whether it flagged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeltaCheck {
    pub previous: PreviousResult,
    pub rule: DeltaRule,
    pub change: f64,
    pub flagged: bool,
}

/// Runs the delta check of `value` against `previous` with the test's rule.
pub fn delta_check(
    def: &TestDefinition,
    value: f64,
    previous: Option<PreviousResult>,
) -> Option<DeltaCheck> {
    let previous = previous?;
    let rule = def.delta.unwrap_or(DEFAULT_DELTA_RULE);
    Some(delta_with_rule(rule, value, previous))
}

pub(crate) fn delta_with_rule(rule: DeltaRule, value: f64, previous: PreviousResult) -> DeltaCheck {
    let change = value - previous.value;
    let flagged = match rule {
        DeltaRule::Absolute(limit) => change.abs() > limit,
        DeltaRule::Percent(pct) if previous.value == 0.0 => change != 0.0 && pct.is_finite(),
        DeltaRule::Percent(pct) => (change / previous.value).abs() * 100.0 > pct,
    };
    DeltaCheck {
        previous,
        rule,
        change,
        flagged,
    }
}

/// Flags of a value: L / H against `reference`, LL / HH against `critical`, D when the
/// delta check flagged. Coded values get no flags.
pub fn flags_for(
    value: &ResultValue,
    reference: Option<&Interval>,
    critical: &Interval,
    delta: Option<&DeltaCheck>,
) -> Vec<Flag> {
    let Some(v) = value.numeric() else {
        return Vec::new();
    };
    let mut flags = Vec::new();
    let below = |limit: Option<f64>| limit.is_some_and(|l| v < l);
    let above = |limit: Option<f64>| limit.is_some_and(|h| v > h);
    if below(critical.low) {
        flags.push(Flag::LL);
    } else if below(reference.and_then(|r| r.low)) {
        flags.push(Flag::L);
    }
    if above(critical.high) {
        flags.push(Flag::HH);
    } else if above(reference.and_then(|r| r.high)) {
        flags.push(Flag::H);
    }
    if delta.is_some_and(|d| d.flagged) {
        flags.push(Flag::D);
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::parse_csv;
    use chrono::{TimeZone, Utc};

    fn def(code: &str) -> TestDefinition {
        parse_csv(include_str!("../../deploy/seed/test-catalogue.csv"))
            .unwrap()
            .into_iter()
            .find(|t| t.code.as_str() == code)
            .unwrap()
    }

    fn num(v: f64) -> ResultValue {
        ResultValue::Numeric {
            value: v,
            unit: "g/dL".into(),
        }
    }

    #[test]
    fn flag_labels_are_the_serialised_names() {
        for f in [Flag::L, Flag::H, Flag::LL, Flag::HH, Flag::D] {
            assert_eq!(serde_json::to_value(f).unwrap(), f.as_str());
        }
    }

    #[test]
    fn haemoglobin_flags_by_sex() {
        let hb = def("HB");
        let adult = Age {
            years: 40,
            days: 40 * 365,
        };
        let male = reference_interval(&hb, Sex::Male, adult);
        let female = reference_interval(&hb, Sex::Female, adult);
        assert_eq!(
            flags_for(&num(12.0), male.interval.as_ref(), &hb.critical, None),
            vec![Flag::L]
        );
        assert!(flags_for(&num(12.0), female.interval.as_ref(), &hb.critical, None).is_empty());
        assert_eq!(
            flags_for(&num(6.9), female.interval.as_ref(), &hb.critical, None),
            vec![Flag::LL]
        );
        assert_eq!(
            flags_for(&num(20.1), male.interval.as_ref(), &hb.critical, None),
            vec![Flag::HH]
        );
        // On the limit is within the interval.
        assert!(flags_for(&num(13.5), male.interval.as_ref(), &hb.critical, None).is_empty());
    }

    #[test]
    fn children_get_no_adult_interval_but_critical_limits_still_apply() {
        let hb = def("HB");
        let child = Age {
            years: 7,
            days: 7 * 365,
        };
        let applied = reference_interval(&hb, Sex::Male, child);
        assert!(applied.interval.is_none());
        assert!(applied.basis.contains("age 7"));
        assert_eq!(
            flags_for(&num(6.0), None, &hb.critical, None),
            vec![Flag::LL]
        );
    }

    #[test]
    fn delta_check_uses_the_rule() {
        let hb = def("HB");
        let prev = PreviousResult {
            result_id: ResultId::from_uuid(uuid::Uuid::nil()),
            value: 14.0,
            collected_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        };
        let d = delta_check(&hb, 6.0, Some(prev.clone())).unwrap();
        assert!(d.flagged);
        assert_eq!(d.change, -8.0);
        assert!(!delta_check(&hb, 13.0, Some(prev.clone())).unwrap().flagged);
        let abs = delta_with_rule(DeltaRule::Absolute(0.5), 13.0, prev);
        assert!(abs.flagged);
    }
}
