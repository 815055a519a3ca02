//! The patient as an order names them: one identity value, plus the clinical facts
//! (sex, age at collection) that flagging needs.
//!
//! [`PatientIdentity`] holds every identifying field and is only ever stored sealed
//! (encrypted under the patient's own key, see [`crate::sealed`]); nothing in the domain
//! reads the name, MRN or ABHA number. Sex and age stay in clear: docs/privacy.md.

use crate::text::{Address, PersonName};
use crate::validation::{FieldError, FieldErrors};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// Sex as recorded for reference-interval selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sex {
    Male,
    Female,
    Other,
    Unknown,
}

impl Sex {
    pub fn parse(input: &str) -> Result<Self, FieldError> {
        match input.trim().to_ascii_lowercase().as_str() {
            "male" | "m" => Ok(Sex::Male),
            "female" | "f" => Ok(Sex::Female),
            "other" | "o" => Ok(Sex::Other),
            "unknown" | "u" => Ok(Sex::Unknown),
            _ => Err(FieldError::new(
                "",
                format!("sex `{input}` must be one of male, female, other, unknown"),
            )),
        }
    }
}

/// The longest MRN, in bytes.
const MRN_MAX: usize = 32;

/// Medical record number: the hospital's patient identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(extend("minLength" = 1, "maxLength" = MRN_MAX, "pattern" = "^[A-Za-z0-9./-]*$"))]
pub struct Mrn(String);

impl Mrn {
    pub fn parse(input: &str) -> Result<Self, FieldError> {
        let v = input.trim().to_ascii_uppercase();
        if v.is_empty() || v.len() > MRN_MAX {
            return Err(FieldError::new(
                "",
                format!("MRN must be 1 to {MRN_MAX} characters"),
            ));
        }
        if !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '.'))
        {
            return Err(FieldError::new(
                "",
                "MRN may hold only letters, digits and - / .",
            ));
        }
        Ok(Self(v))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Mrn {
    type Error = FieldError;
    fn try_from(v: String) -> Result<Self, Self::Error> {
        Self::parse(&v)
    }
}
impl From<Mrn> for String {
    fn from(v: Mrn) -> Self {
        v.0
    }
}

/// ABHA number (Ayushman Bharat Health Account): 14 digits, kept as `NN-NNNN-NNNN-NNNN`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(extend("pattern" = "^[0-9]{2}[- ]?[0-9]{4}[- ]?[0-9]{4}[- ]?[0-9]{4}$"))]
pub struct AbhaNumber(String);

impl AbhaNumber {
    pub fn parse(input: &str) -> Result<Self, FieldError> {
        let digits: String = input.chars().filter(|c| !matches!(c, '-' | ' ')).collect();
        if digits.len() != 14 || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(FieldError::new(
                "",
                format!("ABHA number `{input}` must be 14 digits (NN-NNNN-NNNN-NNNN)"),
            ));
        }
        Ok(Self(format!(
            "{}-{}-{}-{}",
            &digits[0..2],
            &digits[2..6],
            &digits[6..10],
            &digits[10..14]
        )))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AbhaNumber {
    type Error = FieldError;
    fn try_from(v: String) -> Result<Self, Self::Error> {
        Self::parse(&v)
    }
}
impl From<AbhaNumber> for String {
    fn from(v: AbhaNumber) -> Self {
        v.0
    }
}

/// A telephone number: an optional leading `+`, then 7 to 15 digits (spaces, dashes and
/// brackets allowed between them, dropped when stored).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(extend("pattern" = r"^\+?[ ()-]*(?:[0-9][ ()-]*){7,15}$"))]
pub struct Phone(String);

impl Phone {
    pub fn parse(input: &str) -> Result<Self, FieldError> {
        let trimmed = input.trim();
        let (plus, rest) = match trimmed.strip_prefix('+') {
            Some(rest) => ("+", rest),
            None => ("", trimmed),
        };
        if !rest
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '(' | ')'))
        {
            return Err(FieldError::new(
                "",
                "phone number may hold only digits, spaces, - ( ) and a leading +",
            ));
        }
        let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
        if !(7..=15).contains(&digits.len()) {
            return Err(FieldError::new(
                "",
                format!(
                    "phone number must have 7 to 15 digits, not {}",
                    digits.len()
                ),
            ));
        }
        Ok(Self(format!("{plus}{digits}")))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Phone {
    type Error = FieldError;
    fn try_from(v: String) -> Result<Self, Self::Error> {
        Self::parse(&v)
    }
}
impl From<Phone> for String {
    fn from(v: Phone) -> Self {
        v.0
    }
}

/// Who the patient is: every directly identifying field, kept as one value so that it is
/// sealed whole under the patient's data key before it reaches an event (see
/// [`crate::sealed`]). Sex is not here: it is a clinical fact, kept in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PatientIdentity {
    pub mrn: Mrn,
    pub abha_number: Option<AbhaNumber>,
    pub name: PersonName,
    pub date_of_birth: NaiveDate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<Phone>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
}

/// A patient as the order form gives them, field by field, before validation.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawPatient<'a> {
    pub mrn: &'a str,
    pub abha_number: Option<&'a str>,
    pub name: &'a str,
    pub sex: &'a str,
    pub date_of_birth: &'a str,
    pub phone: Option<&'a str>,
    pub address: Option<&'a str>,
}

/// A validated patient from an order form: the identity (to be sealed) and the sex (a
/// clinical fact, kept in clear).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPatient {
    pub identity: PatientIdentity,
    pub sex: Sex,
}

/// Parses an optional field: absent or blank is `None`; a bad value is reported at `field`.
fn optional<T>(
    input: Option<&str>,
    field: &str,
    parse: impl FnOnce(&str) -> Result<T, FieldError>,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    match input {
        Some(v) if !v.trim().is_empty() => parse(v).map_err(|e| errors.push(e.under(field))).ok(),
        _ => None,
    }
}

impl NewPatient {
    /// Builds a patient from raw fields, collecting every field error.
    pub fn parse(raw: RawPatient<'_>, today: NaiveDate) -> Result<Self, FieldErrors> {
        let mut errors = Vec::new();
        let mrn = Mrn::parse(raw.mrn)
            .map_err(|e| errors.push(e.under("mrn")))
            .ok();
        let abha = optional(
            raw.abha_number,
            "abha_number",
            AbhaNumber::parse,
            &mut errors,
        );
        let name = PersonName::parse(raw.name)
            .map_err(|e| errors.push(e.under("name")))
            .ok();
        let sex = Sex::parse(raw.sex)
            .map_err(|e| errors.push(e.under("sex")))
            .ok();
        let date_of_birth = raw.date_of_birth;
        let dob = match NaiveDate::parse_from_str(date_of_birth.trim(), "%Y-%m-%d") {
            Ok(d) if d > today => {
                errors.push(FieldError::new(
                    "date_of_birth",
                    "date of birth is in the future",
                ));
                None
            }
            Ok(d) if today.years_since(d).unwrap_or(0) > 130 => {
                errors.push(FieldError::new(
                    "date_of_birth",
                    "date of birth is more than 130 years ago",
                ));
                None
            }
            Ok(d) => Some(d),
            Err(_) => {
                errors.push(FieldError::new(
                    "date_of_birth",
                    format!("`{date_of_birth}` is not a date (YYYY-MM-DD)"),
                ));
                None
            }
        };
        let phone = optional(raw.phone, "phone", Phone::parse, &mut errors);
        let address = optional(raw.address, "address", Address::parse, &mut errors);
        match (mrn, name, sex, dob) {
            (Some(mrn), Some(name), Some(sex), Some(date_of_birth)) if errors.is_empty() => {
                Ok(Self {
                    identity: PatientIdentity {
                        mrn,
                        abha_number: abha,
                        name,
                        date_of_birth,
                        phone,
                        address,
                    },
                    sex,
                })
            }
            _ => Err(FieldErrors(errors)),
        }
    }
}

/// Age in completed years and days at an instant (both are used: intervals by years,
/// neonatal rules by days).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Age {
    pub years: u32,
    pub days: u32,
}

impl Age {
    /// Age on `day` (a calendar day of the lab's: [`crate::services::LabPolicy::day_of`])
    /// of someone born on `date_of_birth`; zero if `day` precedes the birth date.
    pub fn on(date_of_birth: NaiveDate, day: NaiveDate) -> Self {
        let years = day.years_since(date_of_birth).unwrap_or(0);
        let days = (day - date_of_birth).num_days().max(0) as u32;
        Self { years, days }
    }

    pub fn is_adult(&self) -> bool {
        self.years >= 18
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn abha_is_normalised() {
        assert_eq!(
            AbhaNumber::parse("12 3456 7890 1234").unwrap().as_str(),
            "12-3456-7890-1234"
        );
        assert!(AbhaNumber::parse("1234").is_err());
    }

    #[test]
    fn identity_reports_every_bad_field() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
        let raw = RawPatient {
            mrn: "",
            abha_number: Some("12"),
            name: " ",
            sex: "x",
            date_of_birth: "2030-01-01",
            phone: Some("12ab"),
            address: Some("\u{0}"),
        };
        let err = NewPatient::parse(raw, today).unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "mrn",
                "abha_number",
                "name",
                "sex",
                "date_of_birth",
                "phone",
                "address"
            ]
        );
    }

    #[test]
    fn phone_keeps_digits_and_a_leading_plus() {
        assert_eq!(
            Phone::parse(" +91 98765-43210 ").unwrap().as_str(),
            "+919876543210"
        );
        assert!(Phone::parse("12345").is_err());
        assert!(Phone::parse("98765x43210").is_err());
        assert!(Phone::parse("+").is_err());
    }

    #[test]
    fn age_counts_completed_years() {
        let dob = NaiveDate::from_ymd_opt(2000, 3, 3).unwrap();
        let before = NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
        let on = NaiveDate::from_ymd_opt(2026, 3, 3).unwrap();
        assert_eq!(Age::on(dob, before).years, 25);
        assert_eq!(Age::on(dob, on).years, 26);
    }

    #[test]
    fn the_lab_s_calendar_day_decides_a_birthday() {
        use crate::services::LabPolicy;
        // 02:00 in India on the 18th birthday is still the day before in UTC.
        let dob = NaiveDate::from_ymd_opt(2008, 3, 4).unwrap();
        let at = Utc.with_ymd_and_hms(2026, 3, 3, 20, 30, 0).unwrap();
        let india = LabPolicy {
            time_zone: chrono_tz::Asia::Kolkata,
            ..LabPolicy::default()
        };
        assert_eq!(Age::on(dob, india.day_of(at)).years, 18);
        assert_eq!(Age::on(dob, LabPolicy::default().day_of(at)).years, 17);
    }
}
