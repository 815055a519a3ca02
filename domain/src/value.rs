//! Result values and the rule a value is judged against.
//!
//! A [`ValueSpec`] is the part of a catalogue test that says what a valid result looks
//! like (unit, allowed answers, physically possible range). It is copied into the
//! `ResultRecorded` event, so that a correction or amendment years later is checked
//! against the same rule the original was, whatever the catalogue says by then.

use crate::catalogue::{Interval, ResultKind, TestDefinition};
use crate::validation::{FieldError, FieldErrors};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A result value as entered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum ResultValue {
    Numeric { value: f64, unit: String },
    Coded { answer: String },
}

impl fmt::Display for ResultValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResultValue::Numeric { value, unit } => write!(f, "{value} {unit}"),
            ResultValue::Coded { answer } => f.write_str(answer),
        }
    }
}

impl ResultValue {
    pub fn numeric(&self) -> Option<f64> {
        match self {
            ResultValue::Numeric { value, .. } => Some(*value),
            ResultValue::Coded { .. } => None,
        }
    }
}

/// What a valid value of one test looks like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ValueSpec {
    pub kind: ResultKind,
    pub physical: Interval,
}

impl From<&TestDefinition> for ValueSpec {
    fn from(def: &TestDefinition) -> Self {
        Self {
            kind: def.kind.clone(),
            physical: def.physical,
        }
    }
}

impl ValueSpec {
    /// Checks `value` against this spec. The error names `value/...` fields. A coded
    /// answer is returned in the catalogue's own spelling.
    pub fn check(&self, value: ResultValue) -> Result<ResultValue, FieldErrors> {
        match (&self.kind, value) {
            (ResultKind::Numeric { unit: expected, .. }, ResultValue::Numeric { value, unit }) => {
                let mut errors = Vec::new();
                if &unit != expected {
                    errors.push(FieldError::new(
                        "value/unit",
                        format!("unit `{unit}` is wrong for this test: it is reported in `{expected}` (UCUM)"),
                    ));
                }
                if !value.is_finite() {
                    errors.push(FieldError::new(
                        "value/value",
                        "value must be a finite number",
                    ));
                } else {
                    if let Some(low) = self.physical.low {
                        if value < low {
                            errors.push(FieldError::new(
                                "value/value",
                                format!("{value} is below the physically possible minimum of {low} {expected}"),
                            ));
                        }
                    }
                    if let Some(high) = self.physical.high {
                        if value > high {
                            errors.push(FieldError::new(
                                "value/value",
                                format!("{value} is above the physically possible maximum of {high} {expected}"),
                            ));
                        }
                    }
                }
                if errors.is_empty() {
                    Ok(ResultValue::Numeric { value, unit })
                } else {
                    Err(FieldErrors(errors))
                }
            }
            (ResultKind::Coded { allowed }, ResultValue::Coded { answer }) => allowed
                .iter()
                .find(|a| a.eq_ignore_ascii_case(answer.trim()))
                .map(|a| ResultValue::Coded { answer: a.clone() })
                .ok_or_else(|| {
                    FieldError::new(
                        "value/answer",
                        format!(
                            "`{answer}` is not an allowed answer; allowed: {}",
                            allowed.join(", ")
                        ),
                    )
                    .into()
                }),
            (ResultKind::Numeric { unit, .. }, ResultValue::Coded { .. }) => Err(FieldError::new(
                "value/kind",
                format!("this test takes a numeric value in `{unit}`, not a coded answer"),
            )
            .into()),
            (ResultKind::Coded { allowed }, ResultValue::Numeric { .. }) => Err(FieldError::new(
                "value/kind",
                format!(
                    "this test takes a coded answer ({}), not a number",
                    allowed.join(", ")
                ),
            )
            .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glucose() -> ValueSpec {
        ValueSpec {
            kind: ResultKind::Numeric {
                unit: "mg/dL".into(),
                decimals: 0,
            },
            physical: Interval {
                low: Some(0.0),
                high: None,
            },
        }
    }

    #[test]
    fn wrong_unit_and_impossible_values_name_the_field() {
        let err = glucose()
            .check(ResultValue::Numeric {
                value: -1.0,
                unit: "mmol/L".into(),
            })
            .unwrap_err();
        assert_eq!(err.0[0].field, "value/unit");
        assert!(err.0[0].message.contains("mg/dL"));
        assert_eq!(err.0[1].field, "value/value");
        assert!(err.0[1].message.contains("physically possible minimum"));
        let err = glucose()
            .check(ResultValue::Numeric {
                value: f64::NAN,
                unit: "mg/dL".into(),
            })
            .unwrap_err();
        assert_eq!(err.0[0].message, "value must be a finite number");
    }

    #[test]
    fn coded_answers_are_matched_in_the_catalogue_spelling() {
        let spec = ValueSpec {
            kind: ResultKind::Coded {
                allowed: vec!["Reactive".into(), "Nonreactive".into()],
            },
            physical: Interval::default(),
        };
        assert_eq!(
            spec.check(ResultValue::Coded {
                answer: "nonreactive".into()
            })
            .unwrap(),
            ResultValue::Coded {
                answer: "Nonreactive".into()
            }
        );
        let err = spec
            .check(ResultValue::Coded {
                answer: "Maybe".into(),
            })
            .unwrap_err();
        assert_eq!(err.0[0].field, "value/answer");
    }
}
