#![allow(clippy::unwrap_used)]
//! The exposition parser under arbitrary and near-valid pages (property tests, CI-sized).
//!
//! Pages come from whatever answers at a scrape URL: any text must give samples or an error
//! naming a line inside the page, never a panic. Pages generated from a model must parse back
//! to exactly that model (names, unescaped label values, values, timestamps).

use failover_probes::exposition::{Format, parse};
use proptest::prelude::*;

fn format() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::PrometheusText), Just(Format::OpenMetrics)]
}

/// The error (if any) names a line of the page (or the one after it, for a missing `# EOF`).
fn check_result(text: &str, format: Format) -> Result<(), TestCaseError> {
    let lines = text.lines().count();
    match parse(text, format) {
        Ok(samples) => {
            prop_assert!(samples.len() <= lines);
            for s in &samples {
                prop_assert!(!s.name.is_empty());
                prop_assert!(text.contains(&*s.name), "{} not in the page", s.name);
            }
        }
        Err(e) => {
            prop_assert!(e.line >= 1 && e.line <= lines + 1, "{e} ({lines} lines)");
            prop_assert!(!e.message.is_empty());
        }
    }
    Ok(())
}

/// One series of a model page.
#[derive(Clone, Debug)]
struct Series {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
    timestamp_ms: Option<i64>,
}

fn series() -> impl Strategy<Value = Series> {
    let name = "[a-zA-Z_:][a-zA-Z0-9_:]{0,12}";
    let label_name = "[a-zA-Z_][a-zA-Z0-9_]{0,8}";
    // Any characters, separators and the three escaped ones included.
    let label_value = proptest::string::string_regex("([ -~]|\\\\|\"|\n|é|,|=|\\}){0,10}").unwrap();
    let value = prop_oneof![
        any::<f64>(),
        (-1_000_000i64..1_000_000).prop_map(|n| n as f64),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
    ];
    (
        name,
        proptest::collection::btree_map(label_name, label_value, 0..4),
        value,
        proptest::option::of(-1_000_000_000_000i64..5_000_000_000_000),
    )
        .prop_map(|(name, labels, value, timestamp_ms)| Series {
            name,
            labels: labels.into_iter().collect(),
            value,
            timestamp_ms,
        })
}

fn write_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v:?}")
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn page(series: &[Series]) -> String {
    let mut text = String::new();
    for s in series {
        text.push_str(&s.name);
        if !s.labels.is_empty() {
            let labels: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            text.push_str(&format!("{{{}}}", labels.join(",")));
        }
        text.push(' ');
        text.push_str(&write_value(s.value));
        if let Some(t) = s.timestamp_ms {
            text.push_str(&format!(" {t}"));
        }
        text.push('\n');
    }
    text
}

/// Near-valid pages: a model page with a few characters inserted, removed or a line repeated.
fn near_valid() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(series(), 1..6),
        proptest::collection::vec(
            (
                any::<prop::sample::Index>(),
                "[ -~\n\t{}\"\\\\=,#]{0,3}",
                0usize..3,
            ),
            1..4,
        ),
    )
        .prop_map(|(series, edits)| {
            let mut text = page(&series);
            text.insert_str(0, "# HELP x some help\n# TYPE x counter\n");
            for (at, insert, remove) in edits {
                let mut i = at.index(text.len() + 1);
                while !text.is_char_boundary(i) {
                    i -= 1;
                }
                let mut end = (i + remove).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                text.replace_range(i..end, &insert);
            }
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any text at all: samples or a located error, no panic.
    #[test]
    fn arbitrary_text_never_panics(text in any::<String>(), format in format()) {
        check_result(&text, format)?;
    }

    /// Text made of the format's own characters (more likely to get deep into the parser).
    #[test]
    fn format_alphabet_never_panics(
        text in "([a-z_:]{1,4}|[{}=,\"\\\\ \n#]|NaN|\\+Inf|-Inf|[0-9.eE+-]{1,6}|# TYPE |# EOF|counter|_total){0,40}",
        format in format(),
    ) {
        check_result(&text, format)?;
    }

    /// Near-valid pages: no panic, errors located.
    #[test]
    fn near_valid_pages_never_panic(text in near_valid(), format in format()) {
        check_result(&text, format)?;
    }

    /// A page written from a model parses back to exactly the model (Prometheus text).
    #[test]
    fn model_pages_parse_back_exactly(model in proptest::collection::vec(series(), 0..8)) {
        let text = page(&model);
        let samples = parse(&text, Format::PrometheusText)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(samples.len(), model.len());
        for (s, m) in samples.iter().zip(&model) {
            prop_assert_eq!(&*s.name, m.name.as_str());
            let labels: Vec<(String, String)> =
                s.labels.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
            prop_assert_eq!(&labels, &m.labels);
            if m.value.is_nan() {
                prop_assert!(s.value.is_nan());
            } else {
                prop_assert_eq!(s.value, m.value);
            }
            prop_assert_eq!(s.timestamp, m.timestamp_ms.map(|t| t as f64 / 1000.0));
        }
    }
}
