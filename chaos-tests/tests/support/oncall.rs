//! Three on-call identities in a token file and the CLI as each of them, for the residency
//! tests (`tests/residency.rs` on the file store, `tests/residency_kube.rs` on the emulator).

use std::path::Path;
use std::time::{Duration, Instant};

use chaos_tests::{Daemon, run_cli};
use failoverd::auth::hash_token;

/// A platform admin (asks for a break-glass).
pub const ADMIN_A: (&str, &str) = ("ana@platform", "token-ana");
/// Another admin (approves it).
pub const ADMIN_B: (&str, &str) = ("budi@platform", "token-budi");
/// An operator.
pub const OPERATOR: (&str, &str) = ("citra@oncall", "token-citra");

/// Writes the token file holding the three.
pub fn write_tokens(path: &Path) {
    let entries: String = [
        (ADMIN_A, "admin"),
        (ADMIN_B, "admin"),
        (OPERATOR, "operator"),
    ]
    .iter()
    .map(|((id, tok), role)| {
        format!(
            "- {{ identity: \"{id}\", role: {role}, sha256: \"{}\" }}\n",
            hash_token(tok)
        )
    })
    .collect();
    std::fs::write(path, entries).unwrap();
}

/// `failoverd ARGS --url ... --token TOKEN` against `d`: exit code and stdout + stderr.
pub async fn cli(d: &Daemon, token: &str, args: &[&str]) -> (i32, String) {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend([
        "--url".into(),
        format!("http://{}", d.addr),
        "--token".into(),
        token.into(),
    ]);
    let out = tokio::task::spawn_blocking(move || run_cli(all, Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// What `failoverd why demo` says, once it mentions `what` (within `wait`).
pub async fn explained(d: &Daemon, what: &str, wait: Duration) -> String {
    let start = Instant::now();
    loop {
        let (_, text) = cli(d, OPERATOR.1, &["why", "demo"]).await;
        if text.contains(what) {
            return text;
        }
        assert!(
            start.elapsed() < wait,
            "no `{what}` in `why demo`: {text}\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One admin alone: [`ADMIN_A`] asks for a break-glass to `failover[0]` (202) and tries to
/// approve it herself (403). Returns the request's id; the caller checks nothing moved.
pub async fn ask_and_self_approve(d: &Daemon) -> String {
    let (code, out) = cli(
        d,
        ADMIN_A.1,
        &[
            "failover",
            "demo",
            "--break-glass",
            "--target",
            "0",
            "--ttl",
            "10m",
            "--reason",
            "INC-2 region down",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let id = out
        .split_whitespace()
        .find(|w| w.starts_with("bg-"))
        .unwrap_or_else(|| panic!("no request id in: {out}"))
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    let (code, out) = cli(d, ADMIN_A.1, &["approve", &id, "--reason", "me"]).await;
    assert_eq!(code, 3, "403 for the requester: {out}");
    id
}
