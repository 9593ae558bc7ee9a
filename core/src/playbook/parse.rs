//! Parsing a playbook document from YAML text, with located problems, and the JSON Schema
//! of the format.

use std::path::PathBuf;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::API_VERSION;
use super::model::Playbook;
use super::problem::Problem;

/// A parsed and validated playbook with the file it came from.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The file it was read from.
    pub file: PathBuf,
    /// The playbook.
    pub playbook: Playbook,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: Option<Spanned<String>>,
    #[serde(default)]
    kind: Option<Spanned<String>>,
}

/// Parses one playbook document; syntax and type errors carry their YAML location.
pub fn parse(file: &str, text: &str) -> Result<Playbook, Problem> {
    // A first, lenient pass reads only `kind` and `apiVersion` so a Drill file (or anything
    // else) gets a clear word, located at the offending value.
    if let Ok(h) = serde_saphyr::from_str::<Header>(text) {
        let refuse = |field: &str, expected: &str, got: &Spanned<String>| Problem {
            file: file.into(),
            line: got.referenced.line(),
            column: got.referenced.column(),
            field: field.into(),
            message: format!("expected `{expected}`, got `{}`", got.value),
        };
        if let Some(kind) = &h.kind
            && kind.value != "Playbook"
        {
            return Err(refuse("kind", "Playbook", kind));
        }
        if let Some(v) = &h.api_version
            && v.value != API_VERSION
        {
            return Err(refuse("apiVersion", API_VERSION, v));
        }
    }
    serde_saphyr::from_str::<Playbook>(text).map_err(|e| yaml_problem(file, &e))
}

/// Converts a serde-saphyr error into a located [`Problem`].
pub fn yaml_problem(file: &str, e: &serde_saphyr::Error) -> Problem {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let opts = serde_saphyr::render_options! { snippets: serde_saphyr::SnippetMode::Off };
    let mut message = e.render_with_options(opts);
    // The location goes in front (`file:line:col:`), so drop the parser's own suffix.
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    Problem {
        file: file.into(),
        line,
        column,
        field: String::new(),
        message,
    }
}

/// The JSON Schema of the playbook format, generated from these types.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(Playbook);
    serde_json::to_value(schema).unwrap_or_default()
}
