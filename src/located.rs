//! Errors that point into an input file (policies, scenarios, traces): each
//! renders as `file:line:column: …`, and a list of them one per line.

use std::fmt;

/// Write `file:line:column: `, the prefix of a located error.
pub fn write_at(f: &mut fmt::Formatter<'_>, file: &str, line: u64, column: u64) -> fmt::Result {
    write!(f, "{file}:{line}:{column}: ")
}

/// Write located errors one per line (no trailing newline).
pub fn write_all<E: fmt::Display>(f: &mut fmt::Formatter<'_>, errors: &[E]) -> fmt::Result {
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            writeln!(f)?;
        }
        write!(f, "{e}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::policy::{PolicyError, PolicyErrors};
    use crate::sim::{InputError, InputErrors};

    #[test]
    fn policy_and_input_errors_render_one_located_error_per_line() {
        let policy = PolicyErrors(vec![
            PolicyError {
                file: "p.yaml".into(),
                line: 3,
                column: 5,
                field: "spec.burst.spillAfter".into(),
                message: "not a duration".into(),
            },
            PolicyError {
                file: "q.yaml".into(),
                line: 1,
                column: 1,
                field: String::new(),
                message: "bad YAML".into(),
            },
        ]);
        assert_eq!(
            policy.to_string(),
            "p.yaml:3:5: spec.burst.spillAfter: not a duration\nq.yaml:1:1: bad YAML"
        );
        let input = InputErrors(vec![
            InputError {
                file: "s.yaml".into(),
                line: 7,
                column: 2,
                message: "negative".into(),
            },
            InputError {
                file: "t.csv".into(),
                line: 12,
                column: 9,
                message: "unknown column".into(),
            },
        ]);
        assert_eq!(
            input.to_string(),
            "s.yaml:7:2: negative\nt.csv:12:9: unknown column"
        );
        assert_eq!(PolicyErrors(Vec::new()).to_string(), "");
    }
}
