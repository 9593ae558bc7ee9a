#![allow(clippy::unwrap_used)]
//! The committed `playbook.schema.json` matches the types and refuses unknown fields
//! (regenerate with `UPDATE_SCHEMA=1 cargo test -p failoverd --test playbooks_schema`).

use std::path::{Path, PathBuf};

use failoverd::playbook::json_schema;

mod support;

fn schema_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../playbooks/playbook.schema.json")
}

/// The committed playbook.schema.json matches the types (`UPDATE_SCHEMA=1` rewrites it).
#[test]
fn committed_schema_is_current() {
    let generated = format!(
        "{}\n",
        serde_json::to_string_pretty(&json_schema()).unwrap()
    );
    let path = schema_path();
    if std::env::var_os("UPDATE_SCHEMA").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale (or missing): the playbook types changed.\n\
         Regenerate it with `UPDATE_SCHEMA=1 cargo test -p failoverd --test playbooks_schema` \
         and commit the result.",
        path.display()
    );
}

/// The schema mirrors `deny_unknown_fields`: no unknown keys in the spec (or anywhere).
#[test]
fn schema_forbids_unknown_fields() {
    let schema = json_schema();
    let defs = schema["$defs"].as_object().unwrap();
    let spec_ref = schema["properties"]["spec"]["$ref"].as_str().unwrap();
    let spec = &defs[spec_ref.trim_start_matches("#/$defs/")];
    assert_eq!(spec["type"], "object");
    assert_eq!(spec["additionalProperties"], false, "{spec:#}");
    assert!(spec["properties"]["failover"].is_object());
    assert_eq!(schema["additionalProperties"], false);
    // Every object type in the schema is closed.
    for (name, def) in defs {
        if def["type"] == "object" {
            assert_eq!(def["additionalProperties"], false, "{name} is open");
        }
    }
}
