//! Small validated text values: reasons, names of people and places, free comments.
//!
//! Audit rules say a reason must be given for a correction, an amendment, a cancellation:
//! [`Reason`] cannot be empty or whitespace, so an event carrying one always has one.

use crate::validation::FieldError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The JSON Schema `pattern` of every bounded text: at least one character that is neither
/// white space nor a control character, and no control character but tab and line feed.
pub const TEXT_PATTERN: &str = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$";

macro_rules! bounded_text {
    ($(#[$doc:meta])* $name:ident, $max:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(try_from = "String", into = "String")]
        #[schemars(extend("minLength" = 1, "maxLength" = $max, "pattern" = TEXT_PATTERN))]
        pub struct $name(String);

        impl $name {
            /// Trims the input; refuses it when empty, too long or holding control characters.
            pub fn parse(input: &str) -> Result<Self, FieldError> {
                let trimmed = input.trim();
                if trimmed.is_empty() {
                    return Err(FieldError::new("", concat!($what, " must not be empty")));
                }
                if trimmed.chars().count() > $max {
                    return Err(FieldError::new(
                        "",
                        format!(concat!($what, " must be at most {} characters"), $max),
                    ));
                }
                if trimmed.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                    return Err(FieldError::new("", concat!($what, " must not contain control characters")));
                }
                Ok(Self(trimmed.to_string()))
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

bounded_text!(
    /// Why something was done: required for corrections, amendments, cancellations, retractions.
    Reason, 2000, "reason"
);
bounded_text!(
    /// A person named in an event who is not necessarily a system user (a clinician phoned,
    /// a courier): free text, as written on the form.
    PersonName, 200, "name"
);
bounded_text!(
    /// A place: collection site, storage location, hand-over point.
    Place, 200, "location"
);
bounded_text!(
    /// A free comment or note (clinical notes, rejection detail).
    Note, 4000, "note"
);
bounded_text!(
    /// A postal address, as written on the registration form (personal data: only ever
    /// stored sealed, see `crate::sealed`).
    Address, 500, "address"
);
bounded_text!(
    /// An identifier of a method or an instrument (e.g. `Sysmex XN-1000 #2`).
    Label, 200, "label"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_is_trimmed_and_must_not_be_blank() {
        assert_eq!(Reason::parse("  typo  ").unwrap().as_str(), "typo");
        assert!(Reason::parse("   ").is_err());
        assert!(Reason::parse("a\u{0}b").is_err());
        assert!(Reason::parse(&"x".repeat(2001)).is_err());
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<Reason>("\"\"").is_err());
        assert_eq!(
            serde_json::from_str::<Reason>("\"ok\"").unwrap().as_str(),
            "ok"
        );
    }
}
