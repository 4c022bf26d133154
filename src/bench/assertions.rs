//! CI gates: `--assert "p99_ms<50"`. Each is `name op number` with `op` one of `<`, `<=`, `>`,
//! `>=`, `==`, and `name` one of the report's figures ([`super::report::FIGURES`]). An unknown
//! name is a usage error, caught before anything runs.

use super::report::is_figure;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
        }
    }

    pub fn holds(self, actual: f64, bound: f64) -> bool {
        match self {
            Op::Lt => actual < bound,
            Op::Le => actual <= bound,
            Op::Gt => actual > bound,
            Op::Ge => actual >= bound,
            // Figures are counts or measured values; equality is meant exactly (`lost==0`).
            Op::Eq => actual == bound,
        }
    }
}

/// One parsed `--assert`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Assertion {
    pub name: String,
    pub op: Op,
    pub value: f64,
}

impl fmt::Display for Assertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.name, self.op.as_str(), self.value)
    }
}

impl From<Assertion> for String {
    fn from(a: Assertion) -> String {
        a.to_string()
    }
}

impl TryFrom<String> for Assertion {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl FromStr for Assertion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let name_len = t
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let name = &t[..name_len];
        if name.is_empty() {
            return Err(format!("`{s}`: expected `name op number`, e.g. \"p99_ms<50\""));
        }
        let rest = t[name_len..].trim_start();
        let (op, rest) = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("<", Op::Lt),
            (">", Op::Gt),
        ]
        .into_iter()
        .find_map(|(text, op)| rest.strip_prefix(text).map(|r| (op, r)))
        .ok_or_else(|| format!("`{s}`: expected one of < <= > >= == after `{name}`"))?;
        let number = rest.trim();
        let value: f64 = number
            .parse()
            .map_err(|_| format!("`{s}`: `{number}` is not a number"))?;
        if !value.is_finite() {
            return Err(format!("`{s}`: `{number}` is not a finite number"));
        }
        if !is_figure(name) {
            return Err(format!(
                "`{s}`: unknown figure `{name}` (see `coolchat bench --help` or docs/BENCH.md)"
            ));
        }
        Ok(Assertion {
            name: name.to_string(),
            op,
            value,
        })
    }
}

/// The verdict on one assertion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub assertion: String,
    /// `None` when the run did not produce that figure (e.g. `/metrics` unreachable): a failure.
    pub actual: Option<f64>,
    pub pass: bool,
}

impl Assertion {
    pub fn check(&self, figures: &BTreeMap<String, f64>) -> Verdict {
        let actual = figures.get(&self.name).copied();
        Verdict {
            assertion: self.to_string(),
            actual,
            pass: actual.is_some_and(|a| self.op.holds(a, self.value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Assertion, String> {
        s.parse()
    }

    #[test]
    fn parses_every_operator() {
        let cases = [
            ("p99_ms<50", "p99_ms", Op::Lt, 50.0),
            ("lost==0", "lost", Op::Eq, 0.0),
            ("delivered_per_s>20000", "delivered_per_s", Op::Gt, 20000.0),
            (" p50_ms <= 1.5 ", "p50_ms", Op::Le, 1.5),
            ("duplicated>=0", "duplicated", Op::Ge, 0.0),
            (
                "server_rss_per_conn_bytes<1e5",
                "server_rss_per_conn_bytes",
                Op::Lt,
                100000.0,
            ),
            ("errors == -0", "errors", Op::Eq, 0.0),
        ];
        for (text, name, op, value) in cases {
            let a = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((a.name.as_str(), a.op, a.value), (name, op, value), "{text}");
        }
    }

    #[test]
    fn refuses_bad_input() {
        for bad in [
            "",
            "<5",
            "p99_ms",
            "p99_ms<",
            "p99_ms<abc",
            "p99_ms=5",
            "p99_ms!=5",
            "p99_ms<NaN",
            "p99_ms<inf",
            "nope<1",
            "p99_ms<5ms",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
        let e = parse("latency_p99<5").err().unwrap_or_default();
        assert!(e.contains("unknown figure `latency_p99`"), "{e}");
    }

    #[test]
    fn verdicts() {
        let mut f = BTreeMap::new();
        f.insert("p99_ms".to_string(), 12.5);
        f.insert("lost".to_string(), 0.0);
        let ok = |s: &str| parse(s).map(|a| a.check(&f).pass).unwrap_or_else(|e| panic!("{e}"));
        assert!(ok("p99_ms<50"));
        assert!(!ok("p99_ms<12.5"));
        assert!(ok("p99_ms<=12.5"));
        assert!(ok("p99_ms>12"));
        assert!(ok("p99_ms>=12.5"));
        assert!(ok("lost==0"));
        assert!(!ok("lost>0"));
        // A figure the run did not produce fails.
        let v = parse("server_cpu_pct_max<90")
            .map(|a| a.check(&f))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.actual, None);
        assert!(!v.pass);
    }

    #[test]
    fn serde_as_text() {
        let a = parse("lost==0").unwrap_or_else(|e| panic!("{e}"));
        let j = serde_json::to_string(&a).unwrap_or_default();
        assert_eq!(j, "\"lost==0\"");
        let back: Assertion = serde_json::from_str(&j).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, a);
    }
}
