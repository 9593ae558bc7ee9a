//! Console sessions: an API token (or a cluster token, through the same TokenReview as the
//! API) exchanged once for a session cookie, kept in a server-side table with its CSRF token.
//!
//! The table holds the SHA-256 of the cookie value (a copy of the table would not sign
//! anyone in), the caller, and for token-file callers the token's hash, looked up again on
//! every request: a token-file reload that drops or re-assigns the entry ends the session at
//! once. A cluster identity's session lasts its TTL; each action it takes is still checked by
//! SubjectAccessReview, as on the API.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::auth::{Authority, Caller, Role, Tokens};

/// The session cookie's name.
pub const COOKIE: &str = "failoverd_session";
/// How long a session lasts from sign-in: one on-call shift, not a week.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; at the cap the oldest is dropped (a sign-in flood cannot grow the
/// table without bound; each sign-in already costs a valid token).
pub const MAX_SESSIONS: usize = 10_000;

/// One signed-in person.
#[derive(Clone, Debug)]
pub struct Session {
    /// Who, with the rights the API gives them.
    pub caller: Caller,
    /// The token's SHA-256 for token-file callers (checked again on every request).
    token_hash: Option<String>,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    /// When it ends.
    expires: Instant,
    /// Order of creation (the oldest goes first at the cap).
    serial: u64,
}

impl Session {
    /// True when the session may use the operator actions (a cluster identity's permission is
    /// asked of the cluster when it acts; its controls are shown).
    pub fn may_act(&self) -> bool {
        match self.caller.authority {
            Authority::Role => self.caller.role >= Role::Operator,
            Authority::Cluster { .. } => true,
        }
    }

    /// The role word shown beside the identity.
    pub fn role_word(&self) -> &'static str {
        match (&self.caller.authority, self.caller.role) {
            (Authority::Cluster { .. }, _) => "cluster identity",
            (_, Role::Viewer) => "viewer",
            (_, Role::Operator) => "operator",
            (_, Role::Admin) => "admin",
        }
    }

    /// Whether `token` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, token: &str) -> bool {
        let a = Sha256::digest(self.csrf.as_bytes());
        let b = Sha256::digest(token.as_bytes());
        bool::from(a.ct_eq(&b))
    }
}

/// The server-side session table.
#[derive(Debug, Default)]
pub struct Sessions {
    table: Mutex<HashMap<String, Session>>,
    serial: std::sync::atomic::AtomicU64,
}

fn key(cookie_value: &str) -> String {
    hex::encode(Sha256::digest(cookie_value.as_bytes()))
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl Sessions {
    /// Starts a session for `caller` (`token` is what they signed in with: kept only as its
    /// hash, and only for token-file callers); returns the cookie value.
    pub fn create(&self, caller: Caller, token: &str) -> String {
        let token_hash = matches!(caller.authority, Authority::Role)
            .then(|| crate::api::auth::hash_token(token.trim()));
        let id = random_hex();
        let serial = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let session = Session {
            caller,
            token_hash,
            csrf: random_hex(),
            expires: Instant::now() + SESSION_TTL,
            serial,
        };
        if let Ok(mut t) = self.table.lock() {
            let now = Instant::now();
            t.retain(|_, s| s.expires > now);
            if t.len() >= MAX_SESSIONS
                && let Some(oldest) = t
                    .iter()
                    .min_by_key(|(_, s)| s.serial)
                    .map(|(k, _)| k.clone())
            {
                t.remove(&oldest);
            }
            t.insert(key(&id), session);
        }
        id
    }

    /// The live session the request's cookie names, re-checked against the token file
    /// (None: no cookie, unknown, expired or revoked; a revoked one is removed).
    pub fn current(&self, headers: &HeaderMap, tokens: &Tokens) -> Option<Session> {
        let id = cookie_value(headers)?;
        let k = key(&id);
        let mut session = self.table.lock().ok()?.get(&k).cloned()?;
        let alive = session.expires > Instant::now()
            && match &session.token_hash {
                None => true,
                Some(h) => match tokens.by_hash(h) {
                    // The entry may have changed role: the session follows the file.
                    Some(c) if c.identity == session.caller.identity => {
                        session.caller.role = c.role;
                        true
                    }
                    _ => false,
                },
            };
        if alive {
            if let Ok(mut t) = self.table.lock()
                && let Some(s) = t.get_mut(&k)
            {
                s.caller.role = session.caller.role;
            }
            Some(session)
        } else {
            if let Ok(mut t) = self.table.lock() {
                t.remove(&k);
            }
            if session.token_hash.is_some() {
                tracing::info!(identity = %session.caller.identity, "console session ended: the token file no longer holds its token");
            }
            None
        }
    }

    /// Ends the session the request's cookie names.
    pub fn remove(&self, headers: &HeaderMap) {
        if let Some(id) = cookie_value(headers)
            && let Ok(mut t) = self.table.lock()
        {
            t.remove(&key(&id));
        }
    }

    /// Sessions in the table (expired ones included until the next sign-in prunes them).
    pub fn len(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }

    /// True when no session is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The session cookie's value in the request, if any.
fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_string())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value that starts a session: `HttpOnly` (no script reads it),
/// `SameSite=Strict` (no other site's page sends it), `Secure` under TLS, `Path=/ui`, and a
/// `Max-Age` equal to the server-side expiry.
pub fn set_cookie(id: &str, secure: bool) -> String {
    cookie::Cookie::build((COOKIE, id.to_string()))
        .path("/ui")
        .http_only(true)
        .secure(secure)
        .same_site(cookie::SameSite::Strict)
        .max_age(cookie::time::Duration::seconds(
            i64::try_from(SESSION_TTL.as_secs()).unwrap_or(i64::MAX),
        ))
        .build()
        .to_string()
}

/// The `Set-Cookie` value that clears the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    cookie::Cookie::build((COOKIE, ""))
        .path("/ui")
        .http_only(true)
        .secure(secure)
        .same_site(cookie::SameSite::Strict)
        .max_age(cookie::time::Duration::ZERO)
        .build()
        .to_string()
}

/// True when the request's `Origin` is the listener's own origin (`http(s)://` + `Host`).
/// A form post from another site carries that site's origin; a request without `Origin` is
/// refused too (every browser sends it on a POST).
pub fn same_origin(headers: &HeaderMap, secure: bool) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(o), Some(h)) => {
            let scheme = if secure { "https" } else { "http" };
            o.eq_ignore_ascii_case(&format!("{scheme}://{h}"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderValue;

    fn with(name: header::HeaderName, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(v).unwrap());
        h
    }

    /// Ensures the cookie carries every protection the console promises, and its Max-Age is
    /// the server-side expiry.
    #[test]
    fn cookie_flags() {
        let c = set_cookie("abc", true);
        for part in [
            "failoverd_session=abc",
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/ui",
            "Max-Age=43200",
        ] {
            assert!(c.contains(part), "{part} missing in {c}");
        }
        assert!(!set_cookie("abc", false).contains("Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }

    /// Ensures only the listener's own origin passes, scheme included, and a missing Origin
    /// does not.
    #[test]
    fn origin_check() {
        let mut h = with(header::HOST, "127.0.0.1:8080");
        assert!(!same_origin(&h, false));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h, false));
        assert!(!same_origin(&h, true));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h, false));
    }

    /// Ensures a session is found by its cookie, its CSRF token matches only itself, and a
    /// token file that drops the token ends it.
    #[test]
    fn sessions_follow_the_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        let entry = |id: &str, tok: &str| {
            format!(
                "- {{ identity: {id}, role: operator, sha256: \"{}\" }}\n",
                crate::api::auth::hash_token(tok)
            )
        };
        std::fs::write(&path, entry("alice", "t1")).unwrap();
        let tokens = Tokens::load(&path).unwrap();
        let sessions = Sessions::default();
        let caller = tokens.lookup("t1").unwrap();
        let id = sessions.create(caller, "t1");
        let h = with(header::COOKIE, &format!("other=1; {COOKIE}={id}"));
        let s = sessions.current(&h, &tokens).unwrap();
        assert_eq!(s.caller.identity, "alice");
        assert!(s.csrf_matches(&s.csrf.clone()));
        assert!(!s.csrf_matches("nope"));
        assert!(
            sessions
                .current(&with(header::COOKIE, &format!("{COOKIE}=x")), &tokens)
                .is_none()
        );
        std::fs::write(&path, entry("bob", "t2")).unwrap();
        // The token file is re-read at most once a second.
        std::thread::sleep(Duration::from_millis(1100));
        assert!(sessions.current(&h, &tokens).is_none());
        assert!(sessions.is_empty());
    }
}
