#![allow(clippy::unwrap_used)]
use super::*;
use failover_probes::Outcome;
use serde_json::json;

/// Ensures vector, scalar, empty, multi-series, NaN, ±Inf, warnings and error bodies are
/// each read correctly.
#[test]
fn parses_prometheus_responses() {
    let vec1 = json!({"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.0,"0.25"]}]},"warnings":["partial"]});
    assert_eq!(
        parse_response(&vec1, 200, false),
        Ok(Sample {
            value: 0.25,
            warnings: vec!["partial".into()]
        })
    );
    let scalar = json!({"status":"success","data":{"resultType":"scalar","result":[1.0,"+Inf"]}});
    assert_eq!(
        parse_response(&scalar, 200, false).unwrap().value,
        f64::INFINITY
    );
    let empty = json!({"status":"success","data":{"resultType":"vector","result":[]}});
    assert_eq!(parse_response(&empty, 200, false), Err(QueryError::Empty));
    assert_eq!(parse_response(&empty, 200, true).unwrap().value, 0.0);
    let nan = json!({"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.0,"NaN"]}]}});
    assert_eq!(
        parse_response(&nan, 200, false),
        Err(QueryError::NotANumber)
    );
    let two = json!({"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}});
    assert_eq!(
        parse_response(&two, 200, false),
        Err(QueryError::MultipleSeries(2))
    );
    let bad = json!({"status":"error","errorType":"bad_data","error":"parse error"});
    assert!(matches!(
        parse_response(&bad, 400, false),
        Err(QueryError::BadData(_))
    ));
    assert_eq!(
        parse_response(&json!(null), 502, false),
        Err(QueryError::Http(502))
    );
    let matrix = json!({"status":"success","data":{"resultType":"matrix","result":[]}});
    assert!(matches!(
        parse_response(&matrix, 200, false),
        Err(QueryError::Malformed(_))
    ));
}

/// Ensures windows are written the way PromQL reads them.
#[test]
fn windows() {
    assert_eq!(promql_duration(Duration::from_secs(300)), "5m");
    assert_eq!(promql_duration(Duration::from_secs(5400)), "1h30m");
    assert_eq!(promql_duration(Duration::from_secs(6 * 3600)), "6h");
    assert_eq!(
        windowed("rate(x[{{window}}])", Duration::from_secs(30)),
        "rate(x[30s])"
    );
}

fn ratio_slo() -> SloSpec {
    let y = r#"
name: budget
target: primary
ratio:
  objective: 99.9
  errors: 'sum(rate(e[{{window}}]))'
  total: 'sum(rate(t[{{window}}]))'
  burnRates: [ { long: 1h, short: 5m, factor: 14.4 } ]
"#;
    serde_saphyr::from_str(y).unwrap()
}

fn results(
    pairs: &[(&str, Result<f64, QueryError>)],
) -> HashMap<String, Result<Sample, QueryError>> {
    pairs
        .iter()
        .map(|(q, r)| {
            (
                q.to_string(),
                r.clone().map(|value| Sample {
                    value,
                    warnings: vec![],
                }),
            )
        })
        .collect()
}

/// Ensures a non-finite reading is Unknown with a reason, never Healthy (nor a breach on
/// a value that is no measurement): ±Inf against either threshold direction, ±Inf or a
/// negative rate in either part of a ratio.
#[test]
fn non_finite_values_are_unknown() {
    let threshold = |dir: &str| -> SloSpec {
        serde_saphyr::from_str(&format!(
            "name: lat\ntarget: primary\nprometheus: {{ query: q, {dir}: 0.5 }}\n"
        ))
        .unwrap()
    };
    for dir in ["above", "below"] {
        let slo = threshold(dir);
        for v in [f64::INFINITY, f64::NEG_INFINITY] {
            let e = evaluate(&slo, &results(&[("q", Ok(v))]));
            assert!(
                matches!(&e.outcome, Outcome::Unknown(r) if r.contains("not a finite number")),
                "{dir} {v}: {e:?}"
            );
            assert_eq!(e.unknown_label, Some("not_finite"));
        }
        // A finite value is still judged.
        let e = evaluate(&slo, &results(&[("q", Ok(0.7))]));
        assert_eq!(
            matches!(e.outcome, Outcome::Unhealthy(_)),
            dir == "above",
            "{e:?}"
        );
    }
    let slo = ratio_slo();
    let queries = [
        "sum(rate(e[1h]))",
        "sum(rate(t[1h]))",
        "sum(rate(e[5m]))",
        "sum(rate(t[5m]))",
    ];
    for bad in [f64::INFINITY, f64::NEG_INFINITY, -3.0] {
        for q in queries {
            let pairs: Vec<(&str, Result<f64, QueryError>)> = queries
                .iter()
                .map(|k| (*k, Ok(if *k == q { bad } else { 10.0 })))
                .collect();
            let e = evaluate(&slo, &results(&pairs));
            assert!(
                matches!(&e.outcome, Outcome::Unknown(r) if r.contains(&bad.to_string())),
                "{q} = {bad}: {e:?}"
            );
            assert_eq!(e.unknown_label, Some("not_finite"), "{q} = {bad}");
        }
    }
    // A scrape SLO's non-counter value is counted under the same label.
    use failover_probes::exposition::{Format, parse};
    use failover_probes::scrape::{CounterTracker, Selector};
    let mut t = CounterTracker::new(Selector {
        name: "rq_total".into(),
        matchers: vec![],
    });
    let page = parse("rq_total{code=\"500\"} +Inf\n", Format::PrometheusText).unwrap();
    let reason = t.observe(&page).unwrap_err();
    assert_eq!(scrape_unknown_label(&reason), "not_finite", "{reason}");
}

/// Ensures the multiwindow rule: both windows above factor × budget is a breach; a short
/// spike alone is not; missing total data is Unknown, not healthy; no traffic is healthy.
#[test]
fn burn_rate_rule() {
    let slo = ratio_slo();
    let (e1h, t1h, e5m, t5m) = (
        "sum(rate(e[1h]))",
        "sum(rate(t[1h]))",
        "sum(rate(e[5m]))",
        "sum(rate(t[5m]))",
    );
    let both = evaluate(
        &slo,
        &results(&[
            (e1h, Ok(31.0)),
            (t1h, Ok(100.0)),
            (e5m, Ok(22.0)),
            (t5m, Ok(100.0)),
        ]),
    );
    assert!(
        matches!(&both.outcome, Outcome::Unhealthy(r) if r.contains("0.22 over 5m") && r.contains("0.31 over 1h")),
        "{both:?}"
    );
    let spike = evaluate(
        &slo,
        &results(&[
            (e1h, Ok(1.0)),
            (t1h, Ok(100.0)),
            (e5m, Ok(50.0)),
            (t5m, Ok(100.0)),
        ]),
    );
    assert_eq!(spike.outcome, Outcome::Healthy, "{spike:?}");
    let down = evaluate(
        &slo,
        &results(&[
            (e1h, Ok(1.0)),
            (t1h, Err(QueryError::Unreachable("refused".into()))),
            (e5m, Ok(1.0)),
            (t5m, Ok(100.0)),
        ]),
    );
    assert!(matches!(down.outcome, Outcome::Unknown(_)));
    assert_eq!(down.unknown_label, Some("unreachable"));
    let idle = evaluate(
        &slo,
        &results(&[
            (e1h, Ok(0.0)),
            (t1h, Ok(0.0)),
            (e5m, Ok(0.0)),
            (t5m, Ok(0.0)),
        ]),
    );
    assert_eq!(idle.outcome, Outcome::Healthy);
    assert_eq!(queries(&slo).len(), 4);
}
