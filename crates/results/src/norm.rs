//! [`Lp`]: a norm as results record it.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// An Lp norm as the results record it: the exponent `p ≥ 1` (`f64::INFINITY` for L∞).
///
/// Written as `"inf"` or as the number `p` (an integer stays an integer: `2`, not `2.0`);
/// read from those and from `"linf"`, `"l2"`, `"l1.5"`, `"∞"`. The tensor operations of a
/// norm are `gauntlet_attacks::Norm`'s, which converts to and from this.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lp {
    pub p: f64,
}

impl Lp {
    pub const LINF: Lp = Lp { p: f64::INFINITY };

    /// The norm for `p ≥ 1`; `None` for `p < 1` or NaN.
    pub fn new(p: f64) -> Option<Lp> {
        (p >= 1.0).then_some(Lp { p })
    }

    /// `linf`, `l2`, `l1.5`: safe in file names and stable as a key.
    pub fn slug(&self) -> String {
        if self.p.is_infinite() {
            "linf".to_string()
        } else {
            format!("l{}", self.p)
        }
    }
}

impl fmt::Display for Lp {
    /// `L∞`, `L2`, `L1.5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.p.is_infinite() {
            f.write_str("L∞")
        } else {
            write!(f, "L{}", self.p)
        }
    }
}

impl FromStr for Lp {
    type Err = String;

    fn from_str(s: &str) -> Result<Lp, String> {
        let lower = s.trim().to_ascii_lowercase();
        let number = lower.strip_prefix('l').unwrap_or(&lower);
        if matches!(number, "inf" | "infinity" | "∞") {
            return Ok(Lp::LINF);
        }
        match number.parse::<f64>() {
            Ok(p) if !p.is_nan() => {
                Lp::new(p).ok_or_else(|| format!("p must be >= 1 (an Lp norm), got {p}"))
            }
            _ => Err(format!(
                "expected a norm (\"inf\", \"l1\", \"l2\" or a number p >= 1), got \"{s}\""
            )),
        }
    }
}

impl Serialize for Lp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let p = self.p;
        if p.is_infinite() {
            serializer.serialize_str("inf")
        } else if p.fract() == 0.0 && p < 1e15 {
            serializer.serialize_u64(p as u64)
        } else {
            serializer.serialize_f64(p)
        }
    }
}

impl<'de> Deserialize<'de> for Lp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Lp, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Lp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number p >= 1 or one of \"inf\", \"l1\", \"l2\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Lp, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Lp, E> {
                self.visit_f64(v as f64)
            }
            fn visit_f64<E: de::Error>(self, p: f64) -> Result<Lp, E> {
                Lp::new(p).ok_or_else(|| E::custom(format!("p must be >= 1 (an Lp norm), got {p}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Lp, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norms_read_as_written_and_in_every_spelling() {
        let parse = |s: &str| serde_json::from_str::<Lp>(s).unwrap();
        for (text, p) in [
            ("\"inf\"", f64::INFINITY),
            ("\"linf\"", f64::INFINITY),
            ("2", 2.0),
            ("1.5", 1.5),
            ("\"l1\"", 1.0),
        ] {
            assert_eq!(parse(text), Lp { p }, "{text}");
        }
        for bad in ["0.5", "\"l0\"", "\"max\""] {
            assert!(serde_json::from_str::<Lp>(bad).is_err(), "{bad}");
        }
        for (p, written) in [(f64::INFINITY, "\"inf\""), (2.0, "2"), (1.5, "1.5")] {
            assert_eq!(serde_json::to_string(&Lp { p }).unwrap(), written);
        }
        assert_eq!(Lp::LINF.to_string(), "L∞");
        assert_eq!(Lp { p: 2.0 }.to_string(), "L2");
        assert_eq!(Lp { p: 1.5 }.slug(), "l1.5");
        assert_eq!(Lp::LINF.slug(), "linf");
    }
}
