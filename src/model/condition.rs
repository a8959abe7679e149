//! A Prometheus check's `condition`: a comparison of each value a query returns with a
//! number, e.g. `< 0.05`, `>= 1`, `== 0`. Parsed once, at load.

use std::fmt;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl CmpOp {
    fn text(self) -> &'static str {
        match self {
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        }
    }
}

/// `<op> <number>`: holds for a value `v` when `v <op> number`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Condition {
    pub op: CmpOp,
    /// Finite (NaN and infinities are refused at parse).
    pub value: f64,
}

// `value` is never NaN (refused by `parse`), so equality is total.
impl Eq for Condition {}

impl Condition {
    /// Parses `<op> <number>`; the error says what is expected.
    pub fn parse(text: &str) -> Result<Condition, String> {
        let t = text.trim();
        let ops = [
            ("<=", CmpOp::Le),
            (">=", CmpOp::Ge),
            ("==", CmpOp::Eq),
            ("!=", CmpOp::Ne),
            ("<", CmpOp::Lt),
            (">", CmpOp::Gt),
        ];
        let Some((op, rest)) = ops
            .iter()
            .find_map(|(p, op)| t.strip_prefix(p).map(|rest| (*op, rest)))
        else {
            return Err(format!(
                "condition `{text}` must start with one of < <= > >= == != (e.g. `< 0.05`)"
            ));
        };
        match rest.trim().parse::<f64>() {
            Ok(value) if value.is_finite() => Ok(Condition { op, value }),
            _ => Err(format!(
                "condition `{text}`: `{}` is not a finite number",
                rest.trim()
            )),
        }
    }

    /// Whether `v` satisfies the condition (NaN never does).
    pub fn holds(&self, v: f64) -> bool {
        match self.op {
            CmpOp::Lt => v < self.value,
            CmpOp::Le => v <= self.value,
            CmpOp::Gt => v > self.value,
            CmpOp::Ge => v >= self.value,
            CmpOp::Eq => v == self.value,
            CmpOp::Ne => !v.is_nan() && v != self.value,
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op.text(), self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse_and_hold() {
        let cases = [
            ("< 0.05", 0.01, true),
            ("<0.05", 0.05, false),
            ("<= 0.05", 0.05, true),
            ("> 1", 2.0, true),
            (">= 1", 0.5, false),
            ("== 0", 0.0, true),
            ("!= 0", 0.0, false),
            ("!= 0", f64::NAN, false),
            ("> 1", f64::NAN, false),
        ];
        for (text, v, want) in cases {
            let c = Condition::parse(text).expect(text);
            assert_eq!(c.holds(v), want, "{text} on {v}");
            assert_eq!(
                Condition::parse(&c.to_string()),
                Ok(c),
                "{text} round trips"
            );
        }
    }

    #[test]
    fn bad_conditions_say_what_is_expected() {
        for text in ["0.05", "~ 1", "< abc", "< NaN", "> inf", "<"] {
            let e = Condition::parse(text).expect_err(text);
            assert!(
                e.contains(text.trim()) || e.contains("finite"),
                "{text}: {e}"
            );
        }
    }
}
