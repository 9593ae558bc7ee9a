//! The playbook's residency rule: its own sense (country codes) and that it only narrows the
//! daemon's allowed set.

use super::model::Playbook;
use super::problem::Problem;
pub use crate::residency::is_country_code;

fn problem(file: &str, loc: serde_saphyr::Location, field: &str, message: String) -> Problem {
    Problem {
        file: file.to_string(),
        line: loc.line(),
        column: loc.column(),
        field: field.to_string(),
        message,
    }
}

impl Playbook {
    /// `spec.residency` on its own: a non-empty list of distinct country codes.
    pub(super) fn residency_problems(&self, file: &str) -> Vec<Problem> {
        let Some(r) = &self.spec.residency else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if r.allowed.value.is_empty() {
            out.push(problem(
                file,
                r.allowed.referenced,
                "spec.residency.allowed",
                "must name at least one jurisdiction (an empty set would allow no target at all)"
                    .into(),
            ));
        }
        for (i, code) in r.allowed.value.iter().enumerate() {
            let field = format!("spec.residency.allowed[{i}]");
            if !is_country_code(&code.value) {
                out.push(problem(
                    file,
                    code.referenced,
                    &field,
                    format!(
                        "`{}` is not an ISO 3166-1 alpha-2 code (two upper-case letters, e.g. ID)",
                        code.value
                    ),
                ));
            } else if r.allowed.value[..i].iter().any(|c| c.value == code.value) {
                out.push(problem(
                    file,
                    code.referenced,
                    &field,
                    format!("`{}` is listed twice", code.value),
                ));
            }
        }
        out
    }

    /// The playbook's allowed set may only narrow the daemon's (`residency.allowed` in the
    /// daemon config; None when the daemon sets none, and then anything goes).
    pub fn residency_within(&self, file: &str, daemon: Option<&[String]>) -> Vec<Problem> {
        let (Some(r), Some(daemon)) = (&self.spec.residency, daemon) else {
            return Vec::new();
        };
        r.allowed
            .value
            .iter()
            .enumerate()
            .filter(|(_, c)| is_country_code(&c.value) && !daemon.contains(&c.value))
            .map(|(i, c)| {
                problem(
                    file,
                    c.referenced,
                    &format!("spec.residency.allowed[{i}]"),
                    format!(
                        "`{}` is outside the daemon's residency.allowed [{}]: a playbook may only narrow it",
                        c.value,
                        daemon.join(", ")
                    ),
                )
            })
            .collect()
    }

    /// The allowed set in force for this playbook: its own when set (already checked to be
    /// within the daemon's), else the daemon's; None when neither sets one.
    pub fn allowed_jurisdictions(&self, daemon: Option<&[String]>) -> Option<Vec<String>> {
        match &self.spec.residency {
            Some(r) => Some(r.allowed.value.iter().map(|c| c.value.clone()).collect()),
            None => daemon.map(<[String]>::to_vec),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::playbook::parse;
    use crate::playbook::test_support::Validate;

    const PB: &str = r#"apiVersion: failoverd.dev/v1alpha1
kind: Playbook
metadata: { name: svc }
spec:
  virtualService: { namespace: ns, name: svc }
  primary: { host: svc.ns.svc.cluster.local }
  failover: [ { host: svc.dr.svc.cluster.local } ]
  probes:
    - { name: p, target: primary, tcp: { address: "127.0.0.1:9" }, interval: 1s, timeout: 500ms }
    - { name: f, target: "failover[0]", tcp: { address: "127.0.0.1:9" }, interval: 1s, timeout: 500ms }
  residency:
    allowed: [ID, sg, ID]
"#;

    #[test]
    fn codes_are_checked_where_they_stand() {
        let pb = parse("pb.yaml", PB).unwrap();
        let problems = pb.validate("pb.yaml");
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(problems.len(), 2, "{text:?}");
        assert!(
            text[0].starts_with("pb.yaml:12:19:") && text[0].contains("`sg` is not an ISO 3166-1"),
            "{text:?}"
        );
        assert!(
            text[1].starts_with("pb.yaml:12:23:") && text[1].contains("listed twice"),
            "{text:?}"
        );
    }

    #[test]
    fn a_playbook_may_only_narrow_the_daemon() {
        let pb = parse("pb.yaml", &PB.replace("[ID, sg, ID]", "[ID, SG]")).unwrap();
        assert!(pb.validate("pb.yaml").is_empty());
        let daemon = ["ID".to_string()];
        let wider = pb.residency_within("pb.yaml", Some(&daemon));
        assert_eq!(wider.len(), 1);
        let text = wider[0].to_string();
        assert!(
            text.starts_with("pb.yaml:12:19:")
                && text.contains("`SG` is outside the daemon's residency.allowed [ID]"),
            "{text}"
        );
        assert!(pb.residency_within("pb.yaml", None).is_empty());
        assert_eq!(
            pb.allowed_jurisdictions(Some(&daemon)),
            Some(vec!["ID".into(), "SG".into()])
        );
        let none = parse(
            "pb.yaml",
            &PB.replace("  residency:\n    allowed: [ID, sg, ID]\n", ""),
        )
        .unwrap();
        assert_eq!(
            none.allowed_jurisdictions(Some(&daemon)),
            Some(vec!["ID".into()])
        );
        assert_eq!(none.allowed_jurisdictions(None), None);
    }
}
