//! The order mix: which tests a synthetic lab day orders together, and how often.
//!
//! A lab orders profiles (a blood count, a liver panel), not tests drawn alike from its
//! catalogue, and the catalogue carries no volumes. A mix is a CSV of profiles, each with
//! a weight and its tests' codes: `deploy/seed/order-mix.csv` (an assumed mix for a
//! mid-sized hospital laboratory) is compiled in as the default, and a lab passes its
//! own with `--mix FILE`. An order takes one, two or three distinct profiles (60, 28 and
//! 12 orders in 100), each test once. `--mix uniform` draws 1–4 tests, each test of the
//! catalogue alike (the generator's mix before profiles, though not the same days from
//! the same seeds). Both the demo day and the
//! benchmarks' lab flow draw their orders here.

use lis_domain::catalogue::{ResultKind, TestDefinition};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The seed order mix, for the seed catalogue.
pub const SEED: &str = include_str!("../../deploy/seed/order-mix.csv");

/// The share of all results drawn critical.
pub const CRITICAL_SHARE: f64 = 0.03;

/// The header a mix file starts with (after any `#` comment lines).
const HEADER: &str = "profile,weight,tests";

/// Weights of one, two and three profiles an order (a mix file).
const PROFILES_PER_ORDER: &[u32] = &[60, 28, 12];

/// Weights of one to four tests an order (`uniform`).
const TESTS_PER_ORDER_UNIFORM: &[u32] = &[1, 1, 1, 1];

/// What is wrong with a mix file, and where.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MixError {
    #[error("order mix, line {line}: {what}")]
    Line { line: usize, what: String },
    #[error("order mix: {0}")]
    Whole(String),
}

/// Tests ordered together, and how often against the others.
#[derive(Debug)]
struct Profile {
    name: String,
    weight: u32,
    tests: Vec<TestDefinition>,
}

/// A parsed mix, ready to draw orders from.
#[derive(Debug)]
pub struct OrderMix {
    profiles: Vec<Profile>,
    per_order: &'static [u32],
    /// The chance to draw a result critical, for a test that can be, such that
    /// [`CRITICAL_SHARE`] of all results are.
    p_critical: f64,
    /// Tests an order, on average.
    mean_tests: f64,
}

impl OrderMix {
    /// Reads a mix file against the catalogue's `tests`: every code must be in it.
    pub fn parse(text: &str, tests: &[TestDefinition]) -> Result<Self, MixError> {
        // A byte-order mark (a spreadsheet's CSV export) is not part of the first line.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        match lines.next() {
            Some((_, header)) if fields(header) == HEADER.split(',').collect::<Vec<_>>() => {}
            Some((line, other)) => {
                return Err(MixError::Line {
                    line,
                    what: format!("expected the header `{HEADER}`, found `{other}`"),
                })
            }
            None => return Err(MixError::Whole("the file holds no profiles".into())),
        }
        let mut profiles: Vec<Profile> = Vec::new();
        for (line, text) in lines {
            let err = |what: String| MixError::Line { line, what };
            let fields = fields(text);
            let [name, weight, codes] = fields[..] else {
                return Err(err(format!(
                    "expected 3 fields (profile,weight,tests), found {}",
                    fields.len()
                )));
            };
            if name.is_empty() {
                return Err(err("the profile has no name".into()));
            }
            if profiles.iter().any(|p| p.name == name) {
                return Err(err(format!("profile `{name}` is named twice")));
            }
            let weight = match weight.parse::<u32>() {
                Ok(w) if w > 0 => w,
                _ => {
                    return Err(err(format!(
                        "profile `{name}`: weight `{weight}` is not a whole number above 0"
                    )))
                }
            };
            let mut chosen: Vec<TestDefinition> = Vec::new();
            for code in codes.split_whitespace() {
                let Some(def) = tests.iter().find(|t| t.code.as_str() == code) else {
                    return Err(err(format!(
                        "profile `{name}`: test `{code}` is not in the catalogue"
                    )));
                };
                if chosen.iter().any(|c| c.code == def.code) {
                    return Err(err(format!("profile `{name}`: test `{code}` twice")));
                }
                chosen.push(def.clone());
            }
            if chosen.is_empty() {
                return Err(err(format!("profile `{name}` has no tests")));
            }
            profiles.push(Profile {
                name: name.to_string(),
                weight,
                tests: chosen,
            });
        }
        if profiles.is_empty() {
            return Err(MixError::Whole("the file holds no profiles".into()));
        }
        Ok(Self::new(profiles, PROFILES_PER_ORDER))
    }

    /// 1–4 tests an order, each test of the catalogue alike.
    pub fn uniform(tests: &[TestDefinition]) -> Result<Self, MixError> {
        if tests.is_empty() {
            return Err(MixError::Whole("the catalogue holds no tests".into()));
        }
        let profiles = tests
            .iter()
            .map(|t| Profile {
                name: t.code.as_str().to_string(),
                weight: 1,
                tests: vec![t.clone()],
            })
            .collect();
        Ok(Self::new(profiles, TESTS_PER_ORDER_UNIFORM))
    }

    fn new(profiles: Vec<Profile>, per_order: &'static [u32]) -> Self {
        let mut mix = OrderMix {
            profiles,
            per_order,
            p_critical: 0.0,
            mean_tests: 0.0,
        };
        // Measured on the mix itself (a fixed seed, so the same mix always draws alike):
        // profiles overlap, so the exact expectation is not a simple sum.
        let mut rng = StdRng::seed_from_u64(0x006d_6978);
        let orders = 20_000;
        let (mut all, mut can) = (0usize, 0usize);
        for _ in 0..orders {
            for t in mix.draw(&mut rng) {
                all += 1;
                can += usize::from(can_be_critical(t));
            }
        }
        mix.mean_tests = all as f64 / f64::from(orders);
        mix.p_critical = if can == 0 {
            0.0
        } else {
            (CRITICAL_SHARE * all as f64 / can as f64).min(1.0)
        };
        mix
    }

    /// The tests of one order: distinct profiles, each test once, in profile order.
    pub fn draw(&self, rng: &mut StdRng) -> Vec<&TestDefinition> {
        let k = (1 + pick(rng, self.per_order.iter().copied())).min(self.profiles.len());
        let mut taken = vec![false; self.profiles.len()];
        let mut tests: Vec<&TestDefinition> = Vec::new();
        for _ in 0..k {
            let weights = self
                .profiles
                .iter()
                .zip(&taken)
                .map(|(p, &t)| if t { 0 } else { p.weight });
            let i = pick(rng, weights);
            taken[i] = true;
            for t in &self.profiles[i].tests {
                if !tests.iter().any(|c| c.code == t.code) {
                    tests.push(t);
                }
            }
        }
        tests
    }

    /// The chance to draw a result critical, for a test that can be (the demo's
    /// `value_for` draws with it): [`CRITICAL_SHARE`] of all results this mix orders.
    pub fn p_critical(&self) -> f64 {
        self.p_critical
    }

    /// Tests an order, on average.
    pub fn mean_tests(&self) -> f64 {
        self.mean_tests
    }

    /// What the mix orders, for the operator.
    pub fn describe(&self) -> String {
        let n = self.profiles.len();
        format!(
            "{n} profile{}, {:.1} tests an order on average",
            if n == 1 { "" } else { "s" },
            self.mean_tests
        )
    }
}

/// A line's comma-separated fields, trimmed.
fn fields(line: &str) -> Vec<&str> {
    line.split(',').map(str::trim).collect()
}

/// The order mix `--mix` names, over the catalogue in force (and says what it orders).
pub async fn in_force(pool: &sqlx::PgPool, arg: Option<&str>) -> anyhow::Result<OrderMix> {
    use anyhow::Context;
    let version = lis_commands::catalogue::current_version(pool)
        .await?
        .context("import a catalogue first (lisledger catalogue import)")?;
    let catalogue = lis_commands::catalogue::load(pool, version).await?;
    let tests: Vec<_> = catalogue.tests.into_values().collect();
    let mix = load(arg, &tests)?;
    say!("order mix: {}", mix.describe());
    Ok(mix)
}

/// Reads `--mix`: a file, `uniform`, or (none given) the seed mix.
fn load(arg: Option<&str>, tests: &[TestDefinition]) -> anyhow::Result<OrderMix> {
    use anyhow::Context;
    Ok(match arg {
        None => OrderMix::parse(SEED, tests).context(
            "the seed order mix does not fit the catalogue in force: pass --mix FILE (or --mix uniform)",
        )?,
        Some("uniform") => OrderMix::uniform(tests)?,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the order mix {path}"))?;
            OrderMix::parse(&text, tests).with_context(|| path.to_string())?
        }
    })
}

/// Whether a result of `def` can be critical (a numeric test with a critical limit).
pub fn can_be_critical(def: &TestDefinition) -> bool {
    matches!(def.kind, ResultKind::Numeric { .. })
        && (def.critical.low.is_some() || def.critical.high.is_some())
}

/// An index drawn by weight; a zero weight is never drawn (one weight must be above 0).
fn pick(rng: &mut StdRng, weights: impl Iterator<Item = u32> + Clone) -> usize {
    let total: u64 = weights.clone().map(u64::from).sum();
    let mut at = rng.gen_range(0..total);
    for (i, w) in weights.enumerate() {
        if at < u64::from(w) {
            return i;
        }
        at -= u64::from(w);
    }
    unreachable!("a draw below the total falls in some weight")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lis_domain::catalogue::parse_csv;

    fn catalogue() -> Vec<TestDefinition> {
        parse_csv(include_str!("../../deploy/seed/test-catalogue.csv")).unwrap()
    }

    #[test]
    fn the_seed_mix_fits_the_seed_catalogue_and_orders_every_test() {
        let tests = catalogue();
        let mix = OrderMix::parse(SEED, &tests).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20_000 {
            let order = mix.draw(&mut rng);
            assert!(!order.is_empty());
            for (i, t) in order.iter().enumerate() {
                assert!(!order[..i].iter().any(|o| o.code == t.code), "{t:?} twice");
                seen.insert(t.code.clone());
            }
        }
        assert_eq!(seen.len(), tests.len(), "every catalogue test is ordered");
        // Panels make orders bigger than the uniform 1–4 tests (2.5 on average).
        assert!((4.0..8.0).contains(&mix.mean_tests()), "{}", mix.describe());
        let uniform = OrderMix::uniform(&tests).unwrap();
        assert!((2.4..2.6).contains(&uniform.mean_tests()));
    }

    /// Profiles are drawn by weight, one to three an order (60 / 28 / 12), each once.
    #[test]
    fn profiles_are_drawn_by_weight_and_never_twice_an_order() {
        let mix = OrderMix::parse(
            "profile,weight,tests\nBlood count,3,HB\nGlucose,1,GLU_F\n",
            &catalogue(),
        )
        .unwrap();
        let mut rng = StdRng::seed_from_u64(2);
        let draws = 40_000;
        let (mut hb, mut glu, mut both) = (0, 0, 0);
        for _ in 0..draws {
            match mix
                .draw(&mut rng)
                .iter()
                .map(|t| t.code.as_str())
                .collect::<Vec<_>>()[..]
            {
                ["HB"] => hb += 1,
                ["GLU_F"] => glu += 1,
                ["HB", "GLU_F"] | ["GLU_F", "HB"] => both += 1,
                ref other => panic!("{other:?}"),
            }
        }
        // One profile in 60 orders (by weight 3:1), two or three (so both) in 40.
        let share = |n: i32| f64::from(n) / f64::from(draws);
        assert!((share(hb) - 0.45).abs() < 0.015, "{}", share(hb));
        assert!((share(glu) - 0.15).abs() < 0.015, "{}", share(glu));
        assert!((share(both) - 0.40).abs() < 0.015, "{}", share(both));
    }

    #[test]
    fn a_bad_mix_says_what_is_wrong_and_on_which_line() {
        let tests = catalogue();
        let cases = [
            ("", "order mix: the file holds no profiles"),
            ("# only a comment\nprofile,weight,tests\n", "order mix: the file holds no profiles"),
            ("name,weight,tests\nA,1,HB\n", "order mix, line 1: expected the header `profile,weight,tests`, found `name,weight,tests`"),
            ("profile,weight,tests\nA,1,HB\n\nB,2,NOPE\n", "order mix, line 4: profile `B`: test `NOPE` is not in the catalogue"),
            ("profile,weight,tests\nA,0,HB\n", "order mix, line 2: profile `A`: weight `0` is not a whole number above 0"),
            ("profile,weight,tests\nA,x,HB\n", "order mix, line 2: profile `A`: weight `x` is not a whole number above 0"),
            ("profile,weight,tests\nA,1,HB\nA,1,K\n", "order mix, line 3: profile `A` is named twice"),
            ("profile,weight,tests\nA,1,HB HB\n", "order mix, line 2: profile `A`: test `HB` twice"),
            ("profile,weight,tests\nA,1,\n", "order mix, line 2: profile `A` has no tests"),
            ("profile,weight,tests\nA,1\n", "order mix, line 2: expected 3 fields (profile,weight,tests), found 2"),
            ("profile,weight,tests\n,1,HB\n", "order mix, line 2: the profile has no name"),
        ];
        for ok in [
            "\u{feff}profile,weight,tests\nA,1,HB\n",
            "profile, weight, tests\nA, 1, HB\n",
        ] {
            assert!(OrderMix::parse(ok, &tests).is_ok(), "{ok:?}");
        }
        for (text, said) in cases {
            let e = OrderMix::parse(text, &tests).unwrap_err();
            assert_eq!(e.to_string(), said, "{text:?}");
        }
        assert_eq!(
            OrderMix::uniform(&[]).unwrap_err().to_string(),
            "order mix: the catalogue holds no tests"
        );
    }
}
