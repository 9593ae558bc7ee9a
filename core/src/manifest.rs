//! Which document a YAML text holds, read from its `apiVersion` and `kind` only.
//!
//! Playbooks and drills share directories, so both loaders sort files by this sniff before
//! parsing. It lives below both models so neither has to ask the other ("is this a drill?").

use serde::Deserialize;

/// The `apiVersion` and `kind` of a YAML document (the rest is ignored).
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Head {
    /// `apiVersion`, when present.
    #[serde(default, rename = "apiVersion")]
    pub api_version: Option<String>,
    /// `kind`, when present.
    #[serde(default)]
    pub kind: Option<String>,
}

/// The head of a YAML text, or `None` when it does not parse as a mapping.
pub fn head(text: &str) -> Option<Head> {
    serde_saphyr::from_str(text).ok()
}

/// True when the text is a failoverd Drill document (by its `kind`; whatever `apiVersion`
/// holds, so a drill with a bad `apiVersion` still reaches the drill parser and its message).
pub fn is_drill(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Kind {
        #[serde(default)]
        kind: Option<String>,
    }
    serde_saphyr::from_str::<Kind>(text).is_ok_and(|h| h.kind.as_deref() == Some("Drill"))
}

/// Why a text found in a playbook directory is not a playbook (`None`: it is, claims to be,
/// or does not parse far enough to tell, so the playbook parser reports it).
pub fn not_a_playbook(text: &str) -> Option<String> {
    let head = head(text)?;
    match (head.api_version.as_deref(), head.kind.as_deref()) {
        (Some(api), kind) if !api.starts_with("failoverd.dev/") => Some(format!(
            "not a failoverd document ({api} {})",
            kind.unwrap_or("?")
        )),
        (_, Some("Drill")) => Some("a Drill (loaded by the drill loader)".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures drills are told apart by `kind` alone, and unparsable text is not a drill.
    #[test]
    fn drills_by_kind() {
        assert!(is_drill(
            "apiVersion: failoverd.dev/v1alpha1\nkind: Drill\n"
        ));
        assert!(!is_drill(
            "apiVersion: failoverd.dev/v1alpha1\nkind: Playbook\n"
        ));
        assert!(!is_drill("kind: [unclosed"));
        assert!(!is_drill(""));
        assert!(is_drill("apiVersion: 1\nkind: Drill\n"));
    }

    /// Ensures foreign manifests and drills are named, and playbooks (or text too broken to
    /// tell) are left to the playbook parser.
    #[test]
    fn foreign_documents_are_named() {
        assert_eq!(
            not_a_playbook("apiVersion: networking.istio.io/v1\nkind: VirtualService\n").as_deref(),
            Some("not a failoverd document (networking.istio.io/v1 VirtualService)")
        );
        assert_eq!(
            not_a_playbook("apiVersion: failoverd.dev/v1alpha1\nkind: Drill\n").as_deref(),
            Some("a Drill (loaded by the drill loader)")
        );
        assert_eq!(
            not_a_playbook("apiVersion: failoverd.dev/v1alpha1\nkind: Playbook\n"),
            None
        );
        assert_eq!(not_a_playbook("kind: Playbook\n"), None);
        assert_eq!(not_a_playbook(": : :\n  - ["), None);
    }
}
