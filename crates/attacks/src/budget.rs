//! Budgets as users write them: `0.3`, `8/255`.

use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// A budget (ε or σ) with the fraction it was written as, if any, so that results and reports
/// can show `8/255` rather than `0.03137254901960784`.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    pub value: f64,
    /// The fraction as written (spaces removed), for a budget written as one.
    pub written: Option<String>,
}

impl Budget {
    pub fn new(value: f64) -> Self {
        Self {
            value,
            written: None,
        }
    }
}

impl FromStr for Budget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let value = parse_budget(text)?;
        let written = text
            .contains('/')
            .then(|| text.chars().filter(|c| !c.is_whitespace()).collect());
        Ok(Self { value, written })
    }
}

/// A number, or a string such as `"8/255"`.
impl<'de> Deserialize<'de> for Budget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(f64),
            Text(String),
        }
        match Written::deserialize(d)? {
            Written::Number(v) => Ok(Budget::new(v)),
            Written::Text(t) => t.parse().map_err(de::Error::custom),
        }
    }
}

/// Parses a budget: a decimal number or a fraction `a/b` of two (`8/255`, as papers write
/// L∞ budgets on 8-bit images). Its range is checked where budgets are validated.
pub fn parse_budget(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let number = |s: &str| -> Result<f64, String> {
        s.trim()
            .parse::<f64>()
            .map_err(|_| format!("`{text}` is not a number or a fraction like 8/255"))
    };
    let value = match t.split_once('/') {
        Some((a, b)) => {
            let (a, b) = (number(a)?, number(b)?);
            if b == 0.0 {
                return Err(format!("`{text}`: the denominator is 0"));
            }
            a / b
        }
        None => number(t)?,
    };
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::{parse_budget, Budget};

    #[test]
    fn a_fraction_keeps_how_it_was_written() {
        let b: Budget = " 8 / 255".parse().unwrap();
        assert_eq!(
            (b.value, b.written),
            (8.0 / 255.0, Some("8/255".to_string()))
        );
        let b: Budget = "0.3".parse().unwrap();
        assert_eq!((b.value, b.written), (0.3, None));
    }

    #[test]
    fn decimals_and_fractions_parse_and_nonsense_is_named() {
        assert_eq!(parse_budget("0.3"), Ok(0.3));
        assert_eq!(parse_budget("8/255"), Ok(8.0 / 255.0));
        assert_eq!(parse_budget(" 16 / 255 "), Ok(16.0 / 255.0));
        assert_eq!(parse_budget("2"), Ok(2.0));
        assert_eq!(parse_budget("-1"), Ok(-1.0));
        for bad in ["8/0", "8/255/2", "a/b", "0.1.2", ""] {
            let err = parse_budget(bad).unwrap_err();
            assert!(err.contains(bad.trim()), "{bad}: {err}");
        }
    }
}
