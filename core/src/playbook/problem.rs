//! The problems parsing and validation report, each located by file, line, column and field.

use std::fmt;

use serde::Serialize;

/// One problem found in a playbook file, located as precisely as the parser allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file the problem is in.
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: u64,
    /// 1-based column (0 when unknown).
    pub column: u64,
    /// Dotted path of the field, e.g. `spec.probes[1].target` (empty when not about one field).
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// A list of problems, displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// A probe option the probe library refused: the field under the probe's kind (`url`,
/// `caFile`, `address`, ...) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionProblem {
    /// The field under `http`, `grpc` or `tcp`, e.g. `caFile`.
    pub field: String,
    /// Why, in the probe library's words.
    pub message: String,
}
