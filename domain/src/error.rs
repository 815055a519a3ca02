//! What every aggregate error can say about itself, so that one mapping serves all
//! boundaries: a stable rule name, the offending fields of a validation failure, or the
//! look-up that could not be answered (a dependency, not the user, is at fault).

use crate::services::LookupError;
use crate::validation::FieldErrors;

pub trait DomainError: std::error::Error + Send + Sync + 'static {
    /// A stable, dotted name of the rule that refused the command (`result.four-eyes`).
    fn rule(&self) -> &'static str;
    /// The offending fields, when the command was refused as invalid input.
    fn field_errors(&self) -> Option<&FieldErrors>;
    /// The failed look-up, when the command could not be decided at all.
    fn lookup_failure(&self) -> Option<&LookupError>;
}

/// Implements [`DomainError`] for an aggregate error with `Invalid(FieldErrors)` and
/// `Lookup(LookupError)` variants and an inherent `rule_name()`.
macro_rules! domain_error {
    ($ty:ty) => {
        impl $crate::error::DomainError for $ty {
            fn rule(&self) -> &'static str {
                self.rule_name()
            }
            fn field_errors(&self) -> Option<&$crate::validation::FieldErrors> {
                match self {
                    Self::Invalid(e) => Some(e),
                    _ => None,
                }
            }
            fn lookup_failure(&self) -> Option<&$crate::services::LookupError> {
                match self {
                    Self::Lookup(e) => Some(e),
                    _ => None,
                }
            }
        }
    };
}
pub(crate) use domain_error;
