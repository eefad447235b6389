//! Budgets as users write them: `0.3`, `8/255`.

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
    use super::parse_budget;

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
