//! The file source of the mesh view, on real files: changes seen within the 2 s promise,
//! bad files named by file:line:col with the last good view kept, multi-document files.

use std::path::Path;
use std::time::{Duration, Instant};

use failoverd_core::residency::{Fence, judge};

use super::*;

const HOST: &str = "cases.cases-dr.svc.cluster.local";

/// The promise: a change is in the view within 2 s.
const PROMISE: Duration = Duration::from_secs(2);

fn namespace(label: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: cases-dr\n  labels:\n    failoverd.dev/jurisdiction: {label}\n"
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    let cluster = dir.join("_cluster");
    std::fs::create_dir_all(&cluster).unwrap();
    // Through a rename, as editors and ConfigMap updates do: never a half-written file.
    let tmp = cluster.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, cluster.join(name)).unwrap();
}

fn jurisdiction(view: &MeshView) -> Option<String> {
    judge(&view.snapshot().view, HOST, None, &Fence::default()).jurisdiction
}

/// Waits for the next change, at most [`PROMISE`]; returns how long it took.
async fn next_change(view: &mut MeshView) -> Duration {
    let start = Instant::now();
    let changed = tokio::time::timeout(PROMISE, view.changed())
        .await
        .expect("no change within 2 s");
    assert!(changed, "the source is gone");
    start.elapsed()
}

/// Ensures a relabel (same size, so only the content differs) is in the view within 2 s.
#[tokio::test]
async fn a_relabel_is_seen_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ns.yaml", &namespace("SG"));
    let mut view = MeshView::file(dir.path());
    let s = view.snapshot();
    assert!(s.synced);
    assert_eq!(s.error, None);
    assert_eq!(jurisdiction(&view).as_deref(), Some("SG"));
    write(dir.path(), "ns.yaml", &namespace("ID"));
    next_change(&mut view).await;
    assert_eq!(jurisdiction(&view).as_deref(), Some("ID"));
    // A new file is a change too; a removed one takes its objects away.
    write(
        dir.path(),
        "pa.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: cases-dr}\nspec: {mtls: {mode: STRICT}}\n",
    );
    next_change(&mut view).await;
    assert_eq!(view.snapshot().view.len(), 2);
    std::fs::remove_file(dir.path().join("_cluster/ns.yaml")).unwrap();
    next_change(&mut view).await;
    assert_eq!(jurisdiction(&view), None);
    assert_eq!(view.snapshot().view.len(), 1);
}

/// Ensures nothing is announced while the files stay the same.
#[tokio::test]
async fn no_change_no_announcement() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ns.yaml", &namespace("ID"));
    let mut view = MeshView::file(dir.path());
    let waited = tokio::time::timeout(Duration::from_millis(2500), view.changed()).await;
    assert!(waited.is_err(), "announced a change that did not happen");
}

/// Ensures a bad file keeps the last good view, names file:line:col, and a fix clears it.
#[tokio::test]
async fn bad_yaml_keeps_the_last_view_and_names_the_place() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ns.yaml", &namespace("ID"));
    let mut view = MeshView::file(dir.path());
    let good = view.snapshot();
    write(
        dir.path(),
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: [cases-dr\n",
    );
    next_change(&mut view).await;
    let s = view.snapshot();
    let error = s.error.clone().unwrap();
    let file = dir.path().join("_cluster/ns.yaml").display().to_string();
    assert!(error.starts_with(&format!("{file}:")), "{error}");
    let line: u64 = error[file.len() + 1..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((4..=5).contains(&line), "{error}");
    assert!(
        Arc::ptr_eq(&s.view, &good.view),
        "the last good view is kept"
    );
    assert!(s.synced);
    assert_eq!(jurisdiction(&view).as_deref(), Some("ID"));

    write(dir.path(), "ns.yaml", &namespace("SG"));
    next_change(&mut view).await;
    let s = view.snapshot();
    assert_eq!(s.error, None);
    assert_eq!(jurisdiction(&view).as_deref(), Some("SG"));
}

/// Ensures a malformed object in the second document of a file is named by its document's
/// line, kind, namespace, name and field.
#[tokio::test]
async fn a_malformed_object_is_named_by_its_document() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "mesh.yaml",
        &format!(
            "{}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: cases-dr}}\nspec: {{mtls: {{mode: strict}}}}\n",
            namespace("ID")
        ),
    );
    let err = read_file_store(dir.path()).unwrap_err();
    let file = dir.path().join("_cluster/mesh.yaml").display().to_string();
    assert!(
        err.starts_with(&format!(
            "{file}:8:1: PeerAuthentication cases-dr/default: spec.mtls.mode is \"strict\""
        )),
        "{err}"
    );
    let view = MeshView::file(dir.path());
    let s = view.snapshot();
    assert!(!s.synced, "never read: not synced");
    assert_eq!(s.error.as_deref(), Some(err.as_str()));
    assert!(s.view.is_empty());
}

/// Ensures every document of a multi-document file is read (empty documents and other
/// kinds skipped), and several files make one view.
#[test]
fn multi_document_files() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.yaml",
        &format!(
            "---\n{}---\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: cases-dr}}\nspec: {{mtls: {{mode: STRICT}}}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n",
            namespace("ID")
        ),
    );
    write(
        dir.path(),
        "b.yml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: cases, namespace: cases-dr}\nspec:\n  host: cases\n  trafficPolicy: {tls: {mode: DISABLE}}\n",
    );
    write(dir.path(), "notes.txt", "not yaml: [");
    let view = read_file_store(dir.path()).unwrap();
    assert_eq!(view.len(), 3);
    let fence = Fence {
        allowed: Some(["ID".to_string()].into()),
        require_strict_mtls: true,
    };
    let p = judge(&view, HOST, None, &fence);
    assert_eq!(p.jurisdiction.as_deref(), Some("ID"));
    assert_eq!(
        p.violation.as_deref(),
        Some(
            "policy: DestinationRule cases-dr/cases disables TLS to cases.cases-dr.svc.cluster.local"
        )
    );
}

/// Ensures a missing `_cluster/` is a synced, empty view, and a non-object document is named.
#[tokio::test]
async fn missing_folder_and_non_object_documents() {
    let dir = tempfile::tempdir().unwrap();
    let view = MeshView::file(dir.path());
    let s = view.snapshot();
    assert!(s.synced);
    assert_eq!(s.error, None);
    assert!(s.view.is_empty());
    assert!(read_file_store(dir.path()).unwrap().is_empty());
    write(dir.path(), "list.yaml", "- a\n- b\n");
    let err = read_file_store(dir.path()).unwrap_err();
    assert!(
        err.ends_with("list.yaml:1:1: a document must be a Kubernetes object (a map)"),
        "{err}"
    );
}

/// Ensures a fixed view is synced and reports its source gone instead of waiting forever.
#[tokio::test]
async fn a_fixed_view_never_changes() {
    let mut view = MeshView::fixed(ClusterView::default());
    assert!(view.snapshot().synced);
    assert!(!view.changed().await);
}
