//! Identifiers: UUID newtypes for aggregates and patients, and the human numbers labs use.
//!
//! Each id is its own type so that a sample id can never be passed where an order id is
//! expected. Human numbers (order number, accession number) and test codes are parsed
//! once at the boundary and are valid by construction afterwards.

use crate::validation::FieldError;
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }
            pub fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
            pub fn parse(input: &str) -> Result<Self, FieldError> {
                Uuid::parse_str(input.trim())
                    .map(Self)
                    .map_err(|_| FieldError::new("", format!("`{input}` is not a UUID")))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// An order (requisition).
    OrderId
);
uuid_id!(
    /// A sample (specimen, tube), including aliquots.
    SampleId
);
uuid_id!(
    /// A patient: a stable pseudonymous key. Identity (MRN, name…) lives in
    /// [`crate::patient::PatientIdentity`], never in this id.
    PatientId
);

/// A result: one per test per sample, so its id is derived from both (UUID v5), and
/// recording the same test on the same sample twice lands on the same aggregate.
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
#[serde(transparent)]
pub struct ResultId(Uuid);

/// Namespace for result ids (a fixed random UUID; never change it).
const RESULT_NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_2c3e_8a4b_4e7f_9c1d_5b2a_7e3f_1a90);
const ALIQUOT_NAMESPACE: Uuid = Uuid::from_u128(0x2b8e_61d4_0f3a_4c59_a7e2_9d14_c60b_5f37);

impl SampleId {
    /// The id of the aliquot of `parent` labelled `accession`: the same for every attempt
    /// at one split, so that a split sent again finds the children it already made.
    pub fn aliquot_of(parent: SampleId, accession: &AccessionNumber) -> Self {
        let mut name = parent.as_uuid().as_bytes().to_vec();
        name.extend_from_slice(accession.as_str().as_bytes());
        Self(Uuid::new_v5(&ALIQUOT_NAMESPACE, &name))
    }
}

impl ResultId {
    /// The id of the result of `test` on `sample`.
    pub fn for_test(sample: SampleId, test: &TestCode) -> Self {
        let mut name = sample.as_uuid().as_bytes().to_vec();
        name.extend_from_slice(test.as_str().as_bytes());
        Self(Uuid::new_v5(&RESULT_NAMESPACE, &name))
    }
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
    pub fn parse(input: &str) -> Result<Self, FieldError> {
        Uuid::parse_str(input.trim())
            .map(Self)
            .map_err(|_| FieldError::new("", format!("`{input}` is not a UUID")))
    }
}

impl fmt::Display for ResultId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

macro_rules! code_text {
    ($(#[$doc:meta])* $name:ident, $min:expr, $max:expr, $allowed:expr, $pattern:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(try_from = "String", into = "String")]
        #[schemars(extend("minLength" = $min, "maxLength" = $max, "pattern" = $pattern))]
        pub struct $name(String);

        impl $name {
            /// Upper-cases and trims; refuses characters outside the allowed set.
            pub fn parse(input: &str) -> Result<Self, FieldError> {
                let value = input.trim().to_ascii_uppercase();
                let len = value.chars().count();
                if !($min..=$max).contains(&len) {
                    return Err(FieldError::new(
                        "",
                        format!("{} must be {} to {} characters, got {}", $what, $min, $max, len),
                    ));
                }
                let allowed: fn(char) -> bool = $allowed;
                if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
                    return Err(FieldError::new(
                        "",
                        format!("{} `{}` has a character that is not allowed: `{}`", $what, input.trim(), bad),
                    ));
                }
                Ok(Self(value))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = FieldError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

code_text!(
    /// A test code from the lab's catalogue (`HB`, `GLU_F`, `TROP_HS`).
    TestCode, 1, 32, |c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_', "^[A-Za-z0-9_]*$", "test code"
);
code_text!(
    /// The order number printed on the requisition (`ORD-20261126-000042`).
    OrderNumber, 3, 32, |c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-', "^[A-Za-z0-9-]*$", "order number"
);
code_text!(
    /// The accession number on a specimen's barcode label, unique in the lab.
    AccessionNumber, 4, 24, |c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-', "^[A-Za-z0-9-]*$", "accession number"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_id_is_one_per_test_per_sample() {
        let sample = SampleId::new();
        let hb = TestCode::parse("HB").unwrap();
        let k = TestCode::parse("K").unwrap();
        assert_eq!(
            ResultId::for_test(sample, &hb),
            ResultId::for_test(sample, &hb)
        );
        assert_ne!(
            ResultId::for_test(sample, &hb),
            ResultId::for_test(sample, &k)
        );
        assert_ne!(
            ResultId::for_test(sample, &hb),
            ResultId::for_test(SampleId::new(), &hb)
        );
    }

    #[test]
    fn codes_are_normalised_and_checked() {
        assert_eq!(TestCode::parse(" glu_f ").unwrap().as_str(), "GLU_F");
        let err = TestCode::parse("GLU F").unwrap_err();
        assert!(err.message.contains("not allowed"), "{err}");
        assert!(AccessionNumber::parse("A1").is_err());
        assert_eq!(
            AccessionNumber::parse("acc-000123").unwrap().as_str(),
            "ACC-000123"
        );
    }
}
