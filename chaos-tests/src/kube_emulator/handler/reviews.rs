//! TokenReview (`authentication.k8s.io/v1`) and SubjectAccessReview
//! (`authorization.k8s.io/v1`), answered from tables the test sets through
//! [`Emulator::review_token`], [`Emulator::allow`] and [`Emulator::revoke`]. The caller
//! (failoverd's own identity) needs `create` on the review resource, as on a real cluster.
//! Every review is recorded ([`Emulator::reviews`]) so tests can count what reached the
//! API server, and [`Emulator::fail_reviews`] makes them fail or hang (the rest of the
//! emulator keeps serving).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use hyper::{Request, Response};
use serde_json::{Value, json};

use super::super::{Emulator, Identity, Shared};
use super::{MAX_BODY, Status, respond};

/// One TokenReview or SubjectAccessReview as the emulator saw it.
#[derive(Debug, Clone)]
pub struct ReviewRecord {
    /// When it arrived.
    pub time: SystemTime,
    /// `TokenReview` or `SubjectAccessReview`.
    pub kind: String,
    /// Who sent it (failoverd's identity).
    pub by: String,
    /// The review's `spec` as sent.
    pub spec: Value,
    /// The answer's `status` (null when it failed).
    pub status: Value,
}

/// The tables and faults behind the reviews.
#[derive(Debug, Default)]
pub(crate) struct Reviews {
    /// token → (username, groups).
    tokens: HashMap<String, (String, Vec<String>)>,
    /// (user or group, namespace, verb, name or `*`) granted on playbooks.failoverd.dev.
    grants: BTreeSet<(String, String, String, String)>,
    log: Vec<ReviewRecord>,
    /// Answer reviews with this status, or (0) hang them this long.
    fault: Option<(u16, Duration)>,
}

/// True for the two review paths (POSTed, cluster-scoped).
pub(super) fn is_review(segs: &[&str]) -> bool {
    matches!(
        segs,
        ["apis", "authentication.k8s.io", "v1", "tokenreviews"]
            | ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"]
    )
}

/// Answers one review request.
pub(super) async fn serve(
    shared: &Shared,
    identity: &Identity,
    segs: &[&str],
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Status> {
    let (group, plural, kind) = match segs {
        [_, "authentication.k8s.io", _, _] => {
            ("authentication.k8s.io", "tokenreviews", "TokenReview")
        }
        _ => (
            "authorization.k8s.io",
            "subjectaccessreviews",
            "SubjectAccessReview",
        ),
    };
    if req.method() != hyper::Method::POST {
        return Err(Status::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        ));
    }
    if !identity
        .rules
        .iter()
        .any(|r| r.allows("create", group, plural, None))
    {
        return Err(Status::new(
            403,
            "Forbidden",
            format!(
                "{plural}.{group} is forbidden: User \"{}\" cannot create resource \"{plural}\" in API group \"{group}\" at the cluster scope",
                identity.user
            ),
        ));
    }
    let bytes = axum::body::to_bytes(Body::new(req.into_body()), MAX_BODY)
        .await
        .map_err(|e| Status::bad_request(format!("reading the request body: {e}")))?;
    let body: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Status::bad_request(format!("invalid {kind}: {e}")))?;
    let spec = body["spec"].clone();
    let fault = shared.reviews().fault;
    let status = match fault {
        Some((0, hang)) => {
            tokio::time::sleep(hang).await;
            None
        }
        Some((code, _)) => {
            record(shared, kind, identity, &spec, Value::Null);
            return Err(Status::injected(code));
        }
        None => Some(answer(&shared.reviews(), kind, &spec)),
    };
    let status = status.unwrap_or_else(|| answer(&shared.reviews(), kind, &spec));
    record(shared, kind, identity, &spec, status.clone());
    let api_version = format!("{group}/v1");
    Ok(respond(
        201,
        &json!({ "apiVersion": api_version, "kind": kind, "metadata": {}, "spec": spec, "status": status }),
    ))
}

fn record(shared: &Shared, kind: &str, by: &Identity, spec: &Value, status: Value) {
    shared.reviews().log.push(ReviewRecord {
        time: SystemTime::now(),
        kind: kind.into(),
        by: by.user.clone(),
        spec: spec.clone(),
        status,
    });
}

/// The review's `status` from the tables.
fn answer(r: &Reviews, kind: &str, spec: &Value) -> Value {
    if kind == "TokenReview" {
        let token = spec["token"].as_str().unwrap_or_default();
        return match r.tokens.get(token) {
            Some((user, groups)) => json!({
                "authenticated": true,
                "user": { "username": user, "groups": groups },
                "audiences": spec["audiences"],
            }),
            None => json!({ "authenticated": false, "error": "token not recognised" }),
        };
    }
    let attrs = &spec["resourceAttributes"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let on_playbooks =
        s(&attrs["group"]) == "failoverd.dev" && s(&attrs["resource"]) == "playbooks";
    let mut subjects = vec![s(&spec["user"])];
    subjects.extend(spec["groups"].as_array().into_iter().flatten().map(&s));
    let (ns, verb, name) = (s(&attrs["namespace"]), s(&attrs["verb"]), s(&attrs["name"]));
    let allowed = on_playbooks
        && subjects.iter().any(|who| {
            r.grants
                .contains(&(who.clone(), ns.clone(), verb.clone(), "*".into()))
                || (!name.is_empty()
                    && r.grants
                        .contains(&(who.clone(), ns.clone(), verb.clone(), name.clone())))
        });
    if allowed {
        json!({ "allowed": true, "reason": "granted by the emulator's table" })
    } else {
        json!({ "allowed": false })
    }
}

impl Shared {
    pub(crate) fn reviews(&self) -> std::sync::MutexGuard<'_, Reviews> {
        self.reviews.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Emulator {
    /// TokenReview authenticates `token` as `user` in `groups` (replaces an earlier entry).
    pub fn review_token(&self, token: &str, user: &str, groups: &[&str]) {
        self.shared.reviews().tokens.insert(
            token.into(),
            (user.into(), groups.iter().map(|g| g.to_string()).collect()),
        );
    }

    /// TokenReview no longer authenticates `token`.
    pub fn forget_token(&self, token: &str) {
        self.shared.reviews().tokens.remove(token);
    }

    /// SubjectAccessReview allows `subject` (a user or a group) `verb` on the playbook
    /// `name` (`*`: every playbook, and fleet reads) in namespace `ns`.
    pub fn allow(&self, subject: &str, ns: &str, verb: &str, name: &str) {
        self.shared
            .reviews()
            .grants
            .insert((subject.into(), ns.into(), verb.into(), name.into()));
    }

    /// Takes back what [`Emulator::allow`] granted.
    pub fn revoke(&self, subject: &str, ns: &str, verb: &str, name: &str) {
        self.shared
            .reviews()
            .grants
            .remove(&(subject.into(), ns.into(), verb.into(), name.into()));
    }

    /// Every review so far, oldest first.
    pub fn reviews(&self) -> Vec<ReviewRecord> {
        self.shared.reviews().log.clone()
    }

    /// Reviews answer `status` (a Status failure, e.g. 500) or, with `status` 0, hang for
    /// `hang` before answering; `None` turns it off. Other requests are not affected.
    pub fn fail_reviews(&self, fault: Option<(u16, Duration)>) {
        self.shared.reviews().fault = fault;
    }
}
