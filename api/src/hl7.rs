//! An order's released results as an HL7 v2.5.1 `ORU^R01` message (ER7, the `|^~\&`
//! encoding), the form most hospital information systems in India still take results in.
//!
//! Pure mapping, no I/O: the handler (`http::hl7`) reads the order, its patient's
//! identity as written on it, and its results (the rows the FHIR interface reads), and
//! hands them here. One `ORC`/`OBR`/`OBX` group per released result, each with its notes
//! (`NTE`); what a receiving system must not misread is the result status (`OBX-11`): a
//! released result is `F`, one amended after release `C` (corrected, the value it
//! replaced in a note), one withdrawn after release `D` (delete), with no value.

use crate::fhir::ResultRow;
use chrono::{DateTime, NaiveDate, Utc};
use lis_domain::result::ResultStatus;
use lis_domain::value::ResultValue;

/// The segment separator of ER7.
pub const SEGMENT_END: char = '\r';

/// The media type of an ER7 message (as HL7's own media type registration names it).
pub const MEDIA_TYPE: &str = "x-application/hl7-v2+er7; charset=utf-8";

/// Text as an ST/TX field may carry it: the delimiters escaped (`\F\` `\S\` `\R\` `\T\`
/// `\E\`), line breaks as spaces (a segment ends at a carriage return).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\E\\"),
            '|' => out.push_str("\\F\\"),
            '^' => out.push_str("\\S\\"),
            '~' => out.push_str("\\R\\"),
            '&' => out.push_str("\\T\\"),
            '\r' | '\n' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A time as HL7's DTM: `YYYYMMDDHHMMSS+0000`, in UTC.
pub fn dtm(at: DateTime<Utc>) -> String {
    at.format("%Y%m%d%H%M%S+0000").to_string()
}

/// The patient as the order names them (identity as written on it, opened).
pub struct Patient<'a> {
    pub id: uuid::Uuid,
    pub mrn: &'a str,
    pub name: &'a str,
    pub date_of_birth: NaiveDate,
    /// `male`, `female`, `other` or `unknown`.
    pub sex: &'a str,
}

/// The order the results are of.
pub struct Order<'a> {
    pub order_id: uuid::Uuid,
    pub order_number: &'a str,
    pub ordering_clinician: &'a str,
    pub placed_at: DateTime<Utc>,
}

/// `OBX-11` (HL7 table 0085) for a result sent to a clinician's system; `None` for one
/// that is not sent (not released, or withdrawn before release).
pub fn result_status(r: &ResultRow) -> Option<&'static str> {
    match (r.status.0, r.released_at.is_some()) {
        (ResultStatus::Released, _) if r.amendments > 0 => Some("C"),
        (ResultStatus::Released, _) => Some("F"),
        (ResultStatus::Retracted, true) => Some("D"),
        _ => None,
    }
}

/// The order's results that go to a clinician's system: released, or withdrawn after
/// release (so that a system that showed one can take it back).
pub fn sent(results: &[ResultRow]) -> Vec<&ResultRow> {
    results
        .iter()
        .filter(|r| result_status(r).is_some())
        .collect()
}

/// `OBR-25` (HL7 table 0123) of an OBR holding one result whose `OBX-11` is `obx`: final,
/// or corrected (amended, or withdrawn after release).
fn request_status(obx: &str) -> &'static str {
    match obx {
        "F" => "F",
        _ => "C",
    }
}

/// A person as the order names them (free text), as an XCN: the whole name in the
/// family-name component (the ledger keeps no structured names).
fn named(name: &str) -> String {
    format!("^{}", escape(name))
}

/// A user of the ledger, as an XCN: the user name as the id, the ledger assigning it.
fn user(name: &str) -> String {
    format!("{}^^^^^^^^LISLEDGER", escape(name))
}

/// The `ORU^R01` message of `order`'s `results` (those [`sent`]), for `patient`: an
/// `ORC`/`OBR` group per result, each its own filler order number (the order number and
/// the test code, and `-2`… for a test's later results), the order number as placer group number (`ORC-4`); `complete` says
/// whether every test of the order not cancelled has been sent (`ORC-5` `CM`, else `A`). `control_id` is the
/// message's own id (`MSH-10`), `at` when it was made.
pub fn oru_r01(
    patient: &Patient<'_>,
    order: &Order<'_>,
    results: &[&ResultRow],
    complete: bool,
    control_id: &str,
    at: DateTime<Utc>,
) -> String {
    let mut segments = vec![
        format!(
            "MSH|^~\\&|LISLEDGER||||{}||ORU^R01^ORU_R01|{}|P|2.5.1|||NE|NE||UNICODE UTF-8",
            dtm(at),
            escape(control_id)
        ),
        format!(
            "PID|1||{}^^^^MR~{}^^^LISLEDGER^PI||{}||{}|{}",
            escape(patient.mrn),
            patient.id,
            escape(patient.name),
            patient.date_of_birth.format("%Y%m%d"),
            match patient.sex {
                "male" => "M",
                "female" => "F",
                "other" => "O",
                _ => "U",
            }
        ),
    ];
    let order_status = if complete { "CM" } else { "A" };
    let mut seen: std::collections::HashMap<&str, usize> = Default::default();
    for (n, r) in results.iter().enumerate() {
        let n = n + 1;
        let test = format!(
            "{}^{}^LN",
            escape(&r.loinc),
            escape(r.test_name.as_deref().unwrap_or(&r.test_code))
        );
        // A test resulted again after a withdrawal has a second result: `-2` and on.
        let times = seen.entry(r.test_code.as_str()).or_default();
        *times += 1;
        let again = if *times > 1 {
            format!("-{times}")
        } else {
            String::new()
        };
        let filler = format!(
            "{}-{}{again}^LISLEDGER",
            escape(order.order_number),
            escape(&r.test_code)
        );
        let group = format!("{}^LISLEDGER", escape(order.order_number));
        segments.push(format!(
            "ORC|RE||{filler}|{group}|{order_status}||||{}|||{}",
            dtm(at),
            named(order.ordering_clinician)
        ));
        let obx_status = result_status(r).unwrap_or("F");
        // When this status of it began: released, amended, or (deleted) withdrawn.
        let changed = match obx_status {
            "D" => Some(r.updated_at),
            _ => r.issued(),
        };
        segments.push(format!(
            "OBR|{n}||{filler}|{test}|||{}|||||||||{}||||||{}|||{}",
            dtm(r.collected_at),
            named(order.ordering_clinician),
            changed.map(dtm).unwrap_or_default(),
            request_status(obx_status),
        ));
        let (kind, value, unit) = match (&r.value.0, obx_status) {
            // A withdrawn result's value is not sent again.
            (_, "D") => ("ST", String::new(), String::new()),
            (ResultValue::Numeric { value, unit }, _) => (
                "NM",
                value.to_string(),
                format!("{0}^{0}^UCUM", escape(unit)),
            ),
            (ResultValue::Coded { answer }, _) => ("ST", escape(answer.as_str()), String::new()),
        };
        let range = match (r.reference_low, r.reference_high, obx_status) {
            (_, _, "D") => String::new(),
            (Some(low), Some(high), _) => format!("{low}-{high}"),
            (Some(low), None, _) => format!(">={low}"),
            (None, Some(high), _) => format!("<={high}"),
            (None, None, _) => String::new(),
        };
        let flags: Vec<&str> = r
            .flags
            .iter()
            .map(String::as_str)
            .filter(|f| matches!(*f, "L" | "H" | "LL" | "HH"))
            .collect();
        let flag = match (obx_status, flags.first(), &r.value.0, range.is_empty()) {
            ("D", _, _, _) => "",
            (_, Some(f), _, _) => f,
            (_, None, ResultValue::Numeric { .. }, false) => "N",
            _ => "",
        };
        let observer = r.released_by.as_deref().map(user).unwrap_or_default();
        segments.push(format!(
            "OBX|1|{kind}|{test}||{value}|{unit}|{range}|{flag}|||{obx_status}|||{}||{observer}",
            dtm(r.collected_at)
        ));
        let mut notes = r.notes();
        if let Some(reason) = r.retraction_reason.as_deref().filter(|_| obx_status == "D") {
            notes.push(format!("Withdrawn after release: {reason}"));
        }
        for (i, note) in notes.iter().enumerate() {
            segments.push(format!("NTE|{}|L|{}", i + 1, escape(note)));
        }
    }
    let mut message = segments.join(&SEGMENT_END.to_string());
    message.push(SEGMENT_END);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: ResultStatus, amendments: i32, released: bool) -> ResultRow {
        let at = "2026-03-03T09:30:00Z".parse().unwrap();
        ResultRow {
            flags: vec!["HH".into()],
            specimen_note: Some("haemolysed | slightly ^ see & note".into()),
            amendments,
            released_by: released.then(|| "path.1".into()),
            released_at: released.then_some(at),
            retraction_reason: (status == ResultStatus::Retracted).then(|| "wrong patient".into()),
            ..crate::fhir::tests::row(status)
        }
    }

    #[test]
    fn delimiters_in_text_are_escaped_and_line_breaks_become_spaces() {
        assert_eq!(escape(r"a|b^c~d\e&f"), r"a\F\b\S\c\R\d\E\e\T\f");
        assert_eq!(escape("two\r\nlines"), "two  lines");
    }

    #[test]
    fn only_what_a_clinician_may_see_is_sent_with_its_status() {
        use ResultStatus::*;
        for (status, amendments, released, expected) in [
            (Recorded, 0, false, None),
            (Verified, 0, false, None),
            (RerunRequested, 0, false, None),
            (Released, 0, true, Some("F")),
            (Released, 1, true, Some("C")),
            (Retracted, 0, false, None),
            (Retracted, 0, true, Some("D")),
        ] {
            assert_eq!(
                result_status(&row(status, amendments, released)),
                expected,
                "{status:?}"
            );
        }
    }

    #[test]
    fn a_message_has_a_header_the_patient_and_a_group_per_result() {
        let patient = Patient {
            id: uuid::Uuid::from_u128(4),
            mrn: "MRN-1",
            name: "Asha Verma",
            date_of_birth: NaiveDate::from_ymd_opt(1980, 5, 17).unwrap(),
            sex: "female",
        };
        let order = Order {
            order_id: uuid::Uuid::from_u128(3),
            order_number: "ORD-1",
            ordering_clinician: "Dr Rao",
            placed_at: "2026-03-03T09:00:00Z".parse().unwrap(),
        };
        let (k, gone) = (
            row(ResultStatus::Released, 0, true),
            row(ResultStatus::Retracted, 0, true),
        );
        let at = "2026-03-03T10:00:00Z".parse().unwrap();
        let message = oru_r01(&patient, &order, &[&k, &gone], true, "42", at);
        let segments: Vec<&str> = message.trim_end().split('\r').collect();
        let names: Vec<&str> = segments.iter().map(|s| &s[..3]).collect();
        assert_eq!(
            names,
            ["MSH", "PID", "ORC", "OBR", "OBX", "NTE", "ORC", "OBR", "OBX", "NTE", "NTE"]
        );
        assert!(segments[0]
            .starts_with("MSH|^~\\&|LISLEDGER||||20260303100000+0000||ORU^R01^ORU_R01|42|P|2.5.1"));
        assert_eq!(
            segments[1],
            "PID|1||MRN-1^^^^MR~00000000-0000-0000-0000-000000000004^^^LISLEDGER^PI||Asha Verma||19800517|F"
        );
        assert_eq!(
            segments[4],
            "OBX|1|NM|2823-3^Potassium^LN||6.8|mmol/L^mmol/L^UCUM|3.5-5.1|HH|||F|||20260303093000+0000||path.1^^^^^^^^LISLEDGER"
        );
        assert_eq!(
            segments[5],
            r"NTE|1|L|Specimen: haemolysed \F\ slightly \S\ see \T\ note"
        );
        // The withdrawn one: no value, no range, no flag; the order corrected as a whole.
        assert_eq!(
            segments[8],
            "OBX|1|ST|2823-3^Potassium^LN||||||||D|||20260303093000+0000||path.1^^^^^^^^LISLEDGER"
        );
        // Fields where HL7 puts them: OBR-3 filler (one per result), -4 test, -7
        // collected, -16 ordering provider, -22 when this status began, -25 status;
        // ORC-4 the order, -5 its status, -9 this message's time, -12 provider. The
        // second result of a test has a filler number of its own.
        let field = |segment: &str, n: usize| segment.split('|').nth(n).unwrap_or("").to_string();
        let obr = segments[7];
        assert_eq!(
            [3, 4, 7, 16, 22, 25].map(|n| field(obr, n)),
            [
                "ORD-1-K-2^LISLEDGER",
                "2823-3^Potassium^LN",
                "20260303093000+0000",
                "^Dr Rao",
                "20260303093000+0000",
                "C"
            ],
            "{obr}"
        );
        assert_eq!(
            [1, 3, 4, 5, 9, 12].map(|n| field(segments[6], n)),
            [
                "RE",
                "ORD-1-K-2^LISLEDGER",
                "ORD-1^LISLEDGER",
                "CM",
                "20260303100000+0000",
                "^Dr Rao"
            ]
        );
        assert_eq!(
            segments[10],
            "NTE|2|L|Withdrawn after release: wrong patient"
        );
    }
}
