//! Bearer-token authentication for the override API.
//!
//! The token file holds only SHA-256 hashes of tokens, one entry per caller:
//! `- { identity: "alice@oncall", role: operator, sha256: "<hex>" }`. It is re-read when it
//! changes (checked at most once a second), so a revoked token stops working without a
//! restart; an invalid new file is refused and the old set stays in force.
//!
//! An entry may name a client certificate instead of a token hash
//! (`- { identity, role, certificate: "spiffe://..." }`): a caller presenting a certificate
//! (verified at the TLS handshake against `tls.clientCAFile`) whose SPIFFE URI SAN, else
//! subject CN, is that string acts with that role.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::playbook::{Problem, yaml_problem};

/// What a caller may do. Ordered: viewer < operator < admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// Read state, overrides and audit.
    Viewer,
    /// Also force, fail back, freeze and resume.
    Operator,
    /// Everything (reserved for administrative endpoints).
    Admin,
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Identity: from the token file, the TokenReview username, or the client certificate.
    pub identity: String,
    /// Role from the token file (unused for [`Authority::Cluster`] callers).
    pub role: Role,
    /// What decides what the caller may do.
    pub authority: Authority,
}

/// What decides what a caller may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authority {
    /// The role in the token file.
    Role,
    /// The cluster's RBAC, asked per call through SubjectAccessReview as this user (the
    /// identity) with these groups.
    Cluster {
        /// Groups from the TokenReview (none for a certificate identity).
        groups: Vec<String>,
    },
}

impl Caller {
    /// A caller whose rights are its token-file role.
    pub fn with_role(identity: impl Into<String>, role: Role) -> Self {
        Self {
            identity: identity.into(),
            role,
            authority: Authority::Role,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    identity: String,
    role: Role,
    sha256: Option<String>,
    /// A client certificate's identity (SPIFFE URI SAN or CN) instead of a token hash.
    certificate: Option<String>,
}

type Parsed = (
    HashMap<String, Caller>,
    HashMap<String, Caller>,
    Option<SystemTime>,
);

#[derive(Debug)]
struct Inner {
    by_hash: HashMap<String, Caller>,
    by_cert: HashMap<String, Caller>,
    mtime: Option<SystemTime>,
    checked: Instant,
}

/// The set of accepted tokens (or none: authentication not configured).
#[derive(Debug)]
pub struct Tokens {
    path: Option<PathBuf>,
    inner: RwLock<Inner>,
}

/// Why a request was not authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No token file configured: nobody can authenticate.
    NotConfigured,
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that is not in the file.
    Invalid,
    /// A token the cluster's TokenReview did not authenticate, or a client certificate whose
    /// identity maps to no one.
    Rejected,
    /// The cluster could not be asked (unreachable, timing out, refusing failoverd): the call
    /// fails closed.
    Unavailable(String),
    /// Too many failed authentications (and TokenReviews) from this address.
    Throttled,
}

/// Hex SHA-256 of a token, as stored in the token file.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn parse(path: &Path) -> Result<Parsed, Problem> {
    let file = path.display().to_string();
    let problem = |message: String| Problem {
        file: file.clone(),
        line: 0,
        column: 0,
        field: String::new(),
        message,
    };
    let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(path).map_err(|e| problem(format!("cannot read: {e}")))?;
    let entries: Vec<Entry> = serde_saphyr::from_str(&text).map_err(|e| yaml_problem(&file, &e))?;
    let mut by_hash = HashMap::new();
    let mut by_cert = HashMap::new();
    for (i, e) in entries.into_iter().enumerate() {
        if e.identity.trim().is_empty() {
            return Err(Problem {
                field: format!("[{i}].identity"),
                ..problem("must not be empty".into())
            });
        }
        let caller = Caller::with_role(e.identity, e.role);
        let hash = match (e.sha256, e.certificate) {
            (Some(h), None) => h.to_ascii_lowercase(),
            (None, Some(c)) if !c.trim().is_empty() => {
                if by_cert.insert(c.trim().to_string(), caller).is_some() {
                    return Err(Problem {
                        field: format!("[{i}].certificate"),
                        ..problem("duplicate certificate identity".into())
                    });
                }
                continue;
            }
            _ => {
                return Err(Problem {
                    field: format!("[{i}]"),
                    ..problem(
                        "needs exactly one of `sha256` (a token's hash) or `certificate` (a client certificate's SPIFFE URI or CN)"
                            .into(),
                    )
                });
            }
        };
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Problem {
                field: format!("[{i}].sha256"),
                ..problem(
                    "must be 64 hex digits (the SHA-256 of the token, never the token itself)"
                        .into(),
                )
            });
        }
        if by_hash.insert(hash, caller).is_some() {
            return Err(Problem {
                field: format!("[{i}].sha256"),
                ..problem("duplicate token hash".into())
            });
        }
    }
    Ok((by_hash, by_cert, mtime))
}

impl Tokens {
    /// No authentication configured: every protected call is refused.
    pub fn none() -> Self {
        Self {
            path: None,
            inner: RwLock::new(Inner {
                by_hash: HashMap::new(),
                by_cert: HashMap::new(),
                mtime: None,
                checked: Instant::now(),
            }),
        }
    }

    /// Loads a token file.
    pub fn load(path: &Path) -> Result<Self, Problem> {
        let (by_hash, by_cert, mtime) = parse(path)?;
        Ok(Self {
            path: Some(path.to_path_buf()),
            inner: RwLock::new(Inner {
                by_hash,
                by_cert,
                mtime,
                checked: Instant::now(),
            }),
        })
    }

    /// True when a token file is configured.
    pub fn configured(&self) -> bool {
        self.path.is_some()
    }

    fn maybe_reload(&self) {
        let Some(path) = &self.path else { return };
        let due = self
            .inner
            .read()
            .map(|i| i.checked.elapsed() >= Duration::from_secs(1))
            .unwrap_or(false);
        if !due {
            return;
        }
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        inner.checked = Instant::now();
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if mtime == inner.mtime {
            return;
        }
        match parse(path) {
            Ok((by_hash, by_cert, mtime)) => {
                tracing::info!(path = %path.display(), callers = by_hash.len() + by_cert.len(), "token file reloaded");
                inner.by_hash = by_hash;
                inner.by_cert = by_cert;
                inner.mtime = mtime;
            }
            Err(p) => {
                tracing::error!(
                    "token file changed but is invalid; keeping the previous tokens: {p}"
                );
                inner.mtime = mtime;
            }
        }
    }

    /// Authenticates an `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        if self.path.is_none() {
            return Err(AuthError::NotConfigured);
        }
        let token = bearer(authorization).ok_or(AuthError::Missing)?;
        self.lookup(token).ok_or(AuthError::Invalid)
    }

    /// The token-file caller holding `token` (None also when no file is configured).
    pub fn lookup(&self, token: &str) -> Option<Caller> {
        self.path.as_ref()?;
        self.maybe_reload();
        let hash = hash_token(token);
        self.inner
            .read()
            .ok()
            .and_then(|i| i.by_hash.get(&hash).cloned())
    }

    /// The token-file caller whose token hashes to `hash` (the console's sessions keep the
    /// hash, never the token, and look it up again so a reload that drops the entry ends them).
    pub fn by_hash(&self, hash: &str) -> Option<Caller> {
        self.path.as_ref()?;
        self.maybe_reload();
        self.inner
            .read()
            .ok()
            .and_then(|i| i.by_hash.get(hash).cloned())
    }

    /// The token-file caller mapped to a client certificate's identity.
    pub fn by_certificate(&self, identity: &str) -> Option<Caller> {
        self.path.as_ref()?;
        self.maybe_reload();
        self.inner
            .read()
            .ok()
            .and_then(|i| i.by_cert.get(identity).cloned())
    }
}

/// The token of an `Authorization: Bearer` header value (the scheme name is
/// case-insensitive, RFC 9110 §11.1).
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    authorization
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Ensures tokens authenticate by hash with their role, unknown ones do not, and a
    /// changed file is picked up without a restart.
    #[test]
    fn authenticates_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(
            &path,
            format!(
                "- {{ identity: alice, role: operator, sha256: \"{}\" }}\n",
                hash_token("s3cret")
            ),
        )
        .unwrap();
        let t = Tokens::load(&path).unwrap();
        assert_eq!(
            t.authenticate(Some("Bearer s3cret")).unwrap().role,
            Role::Operator
        );
        assert_eq!(t.authenticate(Some("Bearer nope")), Err(AuthError::Invalid));
        assert_eq!(t.authenticate(None), Err(AuthError::Missing));
        assert_eq!(
            t.authenticate(Some("Basic s3cret")),
            Err(AuthError::Missing)
        );
        std::fs::write(
            &path,
            format!(
                "- {{ identity: bob, role: viewer, sha256: \"{}\" }}\n",
                hash_token("other")
            ),
        )
        .unwrap();
        // Force the mtime check to be due and the mtime to differ.
        t.inner.write().unwrap().checked = Instant::now() - Duration::from_secs(2);
        t.inner.write().unwrap().mtime = None;
        assert_eq!(
            t.authenticate(Some("Bearer s3cret")),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            t.authenticate(Some("Bearer other")).unwrap().identity,
            "bob"
        );
        assert_eq!(
            Tokens::none().authenticate(Some("Bearer x")),
            Err(AuthError::NotConfigured)
        );
    }

    /// Ensures a token file holding a plain token instead of a hash is refused.
    #[test]
    fn refuses_plain_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(
            &path,
            "- { identity: alice, role: operator, sha256: s3cret }\n",
        )
        .unwrap();
        let p = Tokens::load(&path).unwrap_err();
        assert!(p.to_string().contains("[0].sha256"), "{p}");
        std::fs::write(&path, "- { identity: alice, role: root, sha256: s3cret }\n").unwrap();
        assert!(Tokens::load(&path).is_err());
    }

    /// Ensures an entry may name a client certificate identity instead of a token hash, that
    /// it never authenticates a bearer token, and that an entry with both, or neither, is
    /// refused naming the entry.
    #[test]
    fn certificate_entries_map_identities_to_roles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        let spiffe = "spiffe://cluster.local/ns/ops/sa/runbook";
        std::fs::write(
            &path,
            format!("- {{ identity: bot, role: operator, certificate: \"{spiffe}\" }}\n"),
        )
        .unwrap();
        let t = Tokens::load(&path).unwrap();
        let bot = t.by_certificate(spiffe).unwrap();
        assert_eq!((bot.identity.as_str(), bot.role), ("bot", Role::Operator));
        assert_eq!(bot.authority, Authority::Role);
        assert_eq!(t.by_certificate("spiffe://cluster.local/other"), None);
        assert_eq!(
            t.authenticate(Some(&format!("Bearer {spiffe}"))),
            Err(AuthError::Invalid)
        );
        for bad in [
            format!(
                "- {{ identity: a, role: viewer, certificate: x, sha256: \"{}\" }}\n",
                hash_token("t")
            ),
            "- { identity: a, role: viewer }\n".to_string(),
        ] {
            std::fs::write(&path, bad).unwrap();
            let p = Tokens::load(&path).unwrap_err();
            assert!(p.to_string().contains("exactly one of"), "{p}");
        }
    }
}
