//! The versioned test catalogue: what each test is, how it is collected, what its result
//! looks like and which limits flag it.
//!
//! Intervals and limits are data, never constants: every import is a new
//! [`CatalogueVersion`], and each result records the version and interval it was flagged
//! with. [`parse_csv`] reads the lab's CSV format and names the line and column of every
//! bad cell, so that a bad file is refused whole.

use crate::ids::TestCode;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// A catalogue version: 1 for the first import, then one more per import.
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
pub struct CatalogueVersion(pub i32);

impl fmt::Display for CatalogueVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// A closed interval with optional ends (an empty end means "no limit on that side").
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Interval {
    pub low: Option<f64>,
    pub high: Option<f64>,
}

impl Interval {
    pub fn is_unbounded(&self) -> bool {
        self.low.is_none() && self.high.is_none()
    }
}

/// How the delta check compares a result with the patient's previous released one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "kind", content = "threshold")]
pub enum DeltaRule {
    /// Flag when the change exceeds this percentage of the previous value.
    Percent(f64),
    /// Flag when the change exceeds this amount, in the test's unit.
    Absolute(f64),
}

/// Delta rule used when the catalogue gives none for a numeric test.
pub const DEFAULT_DELTA_RULE: DeltaRule = DeltaRule::Percent(50.0);

/// What a result of a test looks like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ResultKind {
    /// A number in one UCUM unit, shown with `decimals` places.
    Numeric { unit: String, decimals: u8 },
    /// One of a fixed list of answers.
    Coded { allowed: Vec<String> },
}

/// One test of the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TestDefinition {
    pub code: TestCode,
    pub loinc: String,
    pub name: String,
    pub department: String,
    /// Specimen type, e.g. `serum`, `whole_blood_edta`.
    pub specimen: String,
    /// Container, e.g. `red/SST`, `lavender EDTA`.
    pub container: String,
    pub kind: ResultKind,
    pub reference_male: Interval,
    pub reference_female: Interval,
    pub critical: Interval,
    /// Values outside this range cannot be real (a negative count, a percentage over 100).
    pub physical: Interval,
    pub delta: Option<DeltaRule>,
    pub tat_routine_min: u32,
    pub tat_stat_min: u32,
}

/// One version of the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Catalogue {
    pub version: CatalogueVersion,
    pub tests: BTreeMap<TestCode, TestDefinition>,
}

impl Catalogue {
    pub fn new(version: CatalogueVersion, tests: Vec<TestDefinition>) -> Self {
        Self {
            version,
            tests: tests.into_iter().map(|t| (t.code.clone(), t)).collect(),
        }
    }

    pub fn get(&self, code: &TestCode) -> Option<&TestDefinition> {
        self.tests.get(code)
    }
}

/// A cell (or row) of a catalogue file that cannot be imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CatalogueRowError {
    /// 1-based line number in the file (the header is line 1).
    pub line: u64,
    /// Column name, when the error is about one cell.
    pub column: Option<String>,
    pub message: String,
}

impl fmt::Display for CatalogueRowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(c) => write!(f, "line {}, column `{}`: {}", self.line, c, self.message),
            None => write!(f, "line {}: {}", self.line, self.message),
        }
    }
}

/// Every problem found in a catalogue file; nothing of the file is to be imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("catalogue file refused: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct CatalogueFileError(pub Vec<CatalogueRowError>);

const REQUIRED: [&str; 18] = [
    "code",
    "loinc",
    "name",
    "department",
    "specimen",
    "container",
    "unit_ucum",
    "result_kind",
    "ref_low_male",
    "ref_high_male",
    "ref_low_female",
    "ref_high_female",
    "critical_low",
    "critical_high",
    "decimals",
    "tat_routine_min",
    "tat_stat_min",
    "allowed_values",
];
/// Optional columns a lab may add: delta thresholds and physically possible limits.
const OPTIONAL: [&str; 4] = [
    "delta_percent",
    "delta_absolute",
    "physical_low",
    "physical_high",
];

/// Parses a catalogue CSV (the format of the shared seed catalogue, plus the optional
/// columns above). Returns every error found, each with its line and column.
pub fn parse_csv(text: &str) -> Result<Vec<TestDefinition>, CatalogueFileError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| {
            CatalogueFileError(vec![CatalogueRowError {
                line: 1,
                column: None,
                message: format!("unreadable header: {e}"),
            }])
        })?
        .clone();
    let index: HashMap<&str, usize> = headers.iter().enumerate().map(|(i, h)| (h, i)).collect();
    let mut errors = Vec::new();
    for col in REQUIRED {
        if !index.contains_key(col) {
            errors.push(CatalogueRowError {
                line: 1,
                column: Some(col.to_string()),
                message: "required column is missing from the header".into(),
            });
        }
    }
    for h in headers.iter() {
        if !REQUIRED.contains(&h) && !OPTIONAL.contains(&h) {
            errors.push(CatalogueRowError {
                line: 1,
                column: Some(h.to_string()),
                message: "unknown column".into(),
            });
        }
    }
    if !errors.is_empty() {
        return Err(CatalogueFileError(errors));
    }

    let mut tests = Vec::new();
    let mut seen: HashMap<TestCode, u64> = HashMap::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                errors.push(CatalogueRowError {
                    line,
                    column: None,
                    message: format!("malformed row: {e}"),
                });
                continue;
            }
        };
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let mut row = RowParser {
            line,
            record: &record,
            index: &index,
            errors: &mut errors,
        };
        if let Some(def) = row.definition() {
            if let Some(first) = seen.insert(def.code.clone(), line) {
                errors.push(CatalogueRowError {
                    line,
                    column: Some("code".into()),
                    message: format!("test code `{}` already defined on line {first}", def.code),
                });
            } else {
                tests.push(def);
            }
        }
    }
    if tests.is_empty() && errors.is_empty() {
        errors.push(CatalogueRowError {
            line: 2,
            column: None,
            message: "the file holds no tests".into(),
        });
    }
    if errors.is_empty() {
        Ok(tests)
    } else {
        Err(CatalogueFileError(errors))
    }
}

struct RowParser<'a> {
    line: u64,
    record: &'a csv::StringRecord,
    index: &'a HashMap<&'a str, usize>,
    errors: &'a mut Vec<CatalogueRowError>,
}

impl<'a> RowParser<'a> {
    fn err(&mut self, column: &str, message: impl Into<String>) {
        self.errors.push(CatalogueRowError {
            line: self.line,
            column: Some(column.to_string()),
            message: message.into(),
        });
    }

    fn required<'c>(&mut self, column: &str, value: &'c str) -> Option<&'c str> {
        if value.is_empty() {
            self.err(column, "must not be empty");
            None
        } else {
            Some(value)
        }
    }

    fn number(&mut self, column: &str, value: &str) -> Result<Option<f64>, ()> {
        if value.is_empty() {
            return Ok(None);
        }
        match value.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Some(v)),
            _ => {
                self.err(column, format!("`{value}` is not a finite number"));
                Err(())
            }
        }
    }

    fn minutes(&mut self, column: &str, value: &str) -> Option<u32> {
        match value.parse::<u32>() {
            Ok(v) if v > 0 => Some(v),
            _ => {
                self.err(
                    column,
                    format!("`{value}` is not a whole number of minutes above 0"),
                );
                None
            }
        }
    }

    fn interval(
        &mut self,
        low_col: &str,
        low: &str,
        high_col: &str,
        high: &str,
    ) -> Option<Interval> {
        let l = self.number(low_col, low);
        let h = self.number(high_col, high);
        match (l, h) {
            (Ok(low), Ok(high)) => {
                if let (Some(a), Some(b)) = (low, high) {
                    if a > b {
                        self.err(
                            low_col,
                            format!("low limit {a} is above the high limit {b}"),
                        );
                        return None;
                    }
                }
                Some(Interval { low, high })
            }
            _ => None,
        }
    }

    fn definition(&mut self) -> Option<TestDefinition> {
        let record = self.record;
        let index = self.index;
        let cell = |column: &str| -> &'a str {
            index.get(column).and_then(|&i| record.get(i)).unwrap_or("")
        };
        let before = self.errors.len();
        let code = match TestCode::parse(cell("code")) {
            Ok(c) => Some(c),
            Err(e) => {
                self.err("code", e.message);
                None
            }
        };
        let loinc = cell("loinc");
        let loinc_ok = loinc
            .split_once('-')
            .map(|(a, b)| {
                !a.is_empty()
                    && a.len() <= 7
                    && a.chars().all(|c| c.is_ascii_digit())
                    && b.len() == 1
                    && b.chars().all(|c| c.is_ascii_digit())
            })
            .unwrap_or(false);
        if !loinc_ok {
            self.err(
                "loinc",
                format!("`{loinc}` is not a LOINC code (digits-check digit)"),
            );
        }
        let name = self.required("name", cell("name"));
        let department = self.required("department", cell("department"));
        let specimen = self.required("specimen", cell("specimen"));
        let container = self.required("container", cell("container"));
        let unit = cell("unit_ucum");
        let allowed_raw = cell("allowed_values");
        let kind = match cell("result_kind") {
            "numeric" => {
                if unit.is_empty() {
                    self.err("unit_ucum", "a numeric test needs a UCUM unit");
                }
                if !allowed_raw.is_empty() {
                    self.err("allowed_values", "a numeric test takes no allowed values");
                }
                let decimals = match cell("decimals").parse::<u8>() {
                    Ok(d) if d <= 6 => Some(d),
                    _ => {
                        self.err(
                            "decimals",
                            format!(
                                "`{}` is not a number of decimals from 0 to 6",
                                cell("decimals")
                            ),
                        );
                        None
                    }
                };
                decimals.map(|decimals| ResultKind::Numeric {
                    unit: unit.to_string(),
                    decimals,
                })
            }
            "coded" => {
                let allowed: Vec<String> = allowed_raw
                    .split('|')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                if allowed.is_empty() {
                    self.err(
                        "allowed_values",
                        "a coded test needs its allowed answers, `|`-separated",
                    );
                }
                let mut lower: Vec<String> = allowed.iter().map(|a| a.to_lowercase()).collect();
                lower.sort();
                if lower.windows(2).any(|w| w[0] == w[1]) {
                    self.err("allowed_values", "an answer is listed twice");
                }
                if !unit.is_empty() {
                    self.err("unit_ucum", "a coded test takes no unit");
                }
                for col in [
                    "ref_low_male",
                    "ref_high_male",
                    "ref_low_female",
                    "ref_high_female",
                    "critical_low",
                    "critical_high",
                ] {
                    if !cell(col).is_empty() {
                        self.err(col, "a coded test takes no numeric limits");
                    }
                }
                Some(ResultKind::Coded { allowed })
            }
            other => {
                self.err(
                    "result_kind",
                    format!("`{other}` must be `numeric` or `coded`"),
                );
                None
            }
        };
        let reference_male = self.interval(
            "ref_low_male",
            cell("ref_low_male"),
            "ref_high_male",
            cell("ref_high_male"),
        );
        let reference_female = self.interval(
            "ref_low_female",
            cell("ref_low_female"),
            "ref_high_female",
            cell("ref_high_female"),
        );
        let critical = self.interval(
            "critical_low",
            cell("critical_low"),
            "critical_high",
            cell("critical_high"),
        );
        let physical = self.interval(
            "physical_low",
            cell("physical_low"),
            "physical_high",
            cell("physical_high"),
        );
        if let (Some(c), Some(m), Some(f)) = (critical, reference_male, reference_female) {
            for r in [m, f] {
                if let (Some(cl), Some(rl)) = (c.low, r.low) {
                    if cl > rl {
                        self.err(
                            "critical_low",
                            format!("critical low {cl} is above the reference low {rl}"),
                        );
                    }
                }
                if let (Some(ch), Some(rh)) = (c.high, r.high) {
                    if ch < rh {
                        self.err(
                            "critical_high",
                            format!("critical high {ch} is below the reference high {rh}"),
                        );
                    }
                }
            }
        }
        let delta_percent = self
            .number("delta_percent", cell("delta_percent"))
            .ok()
            .flatten();
        let delta_absolute = self
            .number("delta_absolute", cell("delta_absolute"))
            .ok()
            .flatten();
        let delta = match (delta_percent, delta_absolute) {
            (Some(_), Some(_)) => {
                self.err(
                    "delta_percent",
                    "give delta_percent or delta_absolute, not both",
                );
                None
            }
            (Some(p), None) if p <= 0.0 => {
                self.err("delta_percent", "must be above 0");
                None
            }
            (None, Some(a)) if a <= 0.0 => {
                self.err("delta_absolute", "must be above 0");
                None
            }
            (Some(p), None) => Some(DeltaRule::Percent(p)),
            (None, Some(a)) => Some(DeltaRule::Absolute(a)),
            (None, None) => None,
        };
        let tat_routine = self.minutes("tat_routine_min", cell("tat_routine_min"));
        let tat_stat = self.minutes("tat_stat_min", cell("tat_stat_min"));

        if self.errors.len() > before {
            return None;
        }
        let physical = physical.unwrap_or_default();
        // Every quantity of a clinical catalogue is non-negative unless the lab says
        // otherwise; a percentage cannot exceed 100.
        let physical = Interval {
            low: physical.low.or(Some(0.0)),
            high: physical
                .high
                .or(if unit == "%" { Some(100.0) } else { None }),
        };
        Some(TestDefinition {
            code: code?,
            loinc: loinc.to_string(),
            name: name?.to_string(),
            department: department?.to_ascii_uppercase(),
            specimen: specimen?.to_string(),
            container: container?.to_string(),
            kind: kind?,
            reference_male: reference_male?,
            reference_female: reference_female?,
            critical: critical?,
            physical,
            delta,
            tat_routine_min: tat_routine?,
            tat_stat_min: tat_stat?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SEED: &str = include_str!("../../deploy/seed/test-catalogue.csv");

    #[test]
    fn the_seed_catalogue_parses() {
        let tests = parse_csv(SEED).unwrap();
        assert_eq!(tests.len(), 48);
        let hb = tests.iter().find(|t| t.code.as_str() == "HB").unwrap();
        assert_eq!(
            hb.reference_female,
            Interval {
                low: Some(11.5),
                high: Some(15.5)
            }
        );
        assert_eq!(
            hb.critical,
            Interval {
                low: Some(7.0),
                high: Some(20.0)
            }
        );
        let abo = tests.iter().find(|t| t.code.as_str() == "ABO").unwrap();
        assert_eq!(
            abo.kind,
            ResultKind::Coded {
                allowed: vec!["A".into(), "B".into(), "AB".into(), "O".into()]
            }
        );
        let hct = tests.iter().find(|t| t.code.as_str() == "HCT").unwrap();
        assert_eq!(
            hct.physical,
            Interval {
                low: Some(0.0),
                high: Some(100.0)
            }
        );
    }

    #[test]
    fn bad_cells_are_named_by_line_and_column() {
        let mut lines: Vec<String> = SEED.lines().map(str::to_string).collect();
        lines[3] = lines[3].replace("4.5,6.5", "4.5,abc"); // RBC ref_high_male
        lines[5] = lines[5].replacen("numeric", "numerical", 1); // PLT result_kind
        let text = lines.join("\n");
        let err = parse_csv(&text).unwrap_err();
        assert_eq!(
            err.0,
            vec![
                CatalogueRowError {
                    line: 4,
                    column: Some("ref_high_male".into()),
                    message: "`abc` is not a finite number".into()
                },
                CatalogueRowError {
                    line: 6,
                    column: Some("result_kind".into()),
                    message: "`numerical` must be `numeric` or `coded`".into()
                },
            ]
        );
    }

    #[test]
    fn duplicate_codes_and_missing_columns_are_refused() {
        let mut lines: Vec<String> = SEED.lines().take(3).map(str::to_string).collect();
        lines.push(lines[1].clone());
        let err = parse_csv(&lines.join("\n")).unwrap_err();
        assert_eq!(err.0[0].line, 4);
        assert!(
            err.0[0].message.contains("already defined on line 2"),
            "{err}"
        );

        let err = parse_csv("code,loinc\nHB,718-7\n").unwrap_err();
        assert!(err.0.iter().all(|e| e.line == 1));
        assert!(err
            .0
            .iter()
            .any(|e| e.column.as_deref() == Some("unit_ucum")));
    }

    #[test]
    fn inverted_limits_are_refused() {
        let text = SEED
            .lines()
            .take(2)
            .collect::<Vec<_>>()
            .join("\n")
            .replace("7.0,20.0", "14.0,20.0");
        let err = parse_csv(&text).unwrap_err();
        assert_eq!(err.0[0].column.as_deref(), Some("critical_low"));
    }
}
