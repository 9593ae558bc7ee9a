//! What a cluster identity costs per API call: authentication (TokenReview) plus
//! authorisation (SubjectAccessReview) through failoverd's `KubeAuth`, against the API server
//! emulator on loopback (in-process, plain HTTP: a real API server adds its own latency on
//! top), uncached (a new token and user each time: two review round trips) vs cached (the
//! same token and decision: two hash-map lookups and a SHA-256). Prints p50/p99/max.
//!
//! `cargo bench -p chaos-tests --bench authorisation`

use std::time::{Duration, Instant};

use chaos_tests::kube_emulator::{Emulator, Rule};
use chaos_tests::percentile;
use failoverd::api::kube_auth::{KubeAuth, KubeAuthConfig, Verb};

const UNCACHED: usize = 500;
const CACHED: usize = 100_000;

fn line(what: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let p = |n| percentile(&samples, n).unwrap_or_default();
    println!(
        "{what:<34} n={:<7} p50={:>10.1?} p99={:>10.1?} max={:>10.1?}",
        samples.len(),
        p(50),
        p(99),
        p(100)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let emu = Emulator::start().await?;
    emu.add_token(
        "sa",
        "system:serviceaccount:failoverd:failoverd",
        vec![Rule::all()],
    );
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig, "sa")?;
    for i in 0..=UNCACHED {
        emu.review_token(&format!("token-{i}"), &format!("user-{i}"), &["oncall"]);
    }
    emu.allow("oncall", "failoverd", "update", "case-records");
    let client =
        failoverd::routing::kube::KubeStore::connect(failoverd::routing::kube::KubeOptions {
            kubeconfig: Some(kubeconfig),
            ..Default::default()
        })
        .await?
        .client()
        .clone();
    let auth = KubeAuth::new(
        client,
        KubeAuthConfig {
            namespace: "failoverd".into(),
            audiences: Vec::new(),
            cache_ttl: Duration::from_secs(600),
            kubeconfig: None,
            context: None,
        },
    );
    let check = |i: usize| {
        let auth = &auth;
        async move {
            let user = auth
                .review_token(&format!("token-{i}"))
                .await
                .map_err(|e| anyhow::anyhow!(e.0))?
                .ok_or_else(|| anyhow::anyhow!("token-{i} rejected"))?;
            let ok = auth
                .allowed(
                    &user.username,
                    &user.groups,
                    Verb::Update,
                    Some("case-records"),
                )
                .await
                .map_err(|e| anyhow::anyhow!(e.0))?;
            anyhow::ensure!(ok, "{} denied", user.username);
            anyhow::Ok(())
        }
    };
    // Warm-up: the connection pool and the emulator.
    check(UNCACHED).await?;
    let mut uncached = Vec::with_capacity(UNCACHED);
    for i in 0..UNCACHED {
        let t = Instant::now();
        check(i).await?;
        uncached.push(t.elapsed());
    }
    let mut cached = Vec::with_capacity(CACHED);
    for _ in 0..CACHED {
        let t = Instant::now();
        check(7).await?;
        cached.push(t.elapsed());
    }
    let reviews = emu.reviews().len();
    println!("reviews sent: {reviews} (expected {})", 2 * (UNCACHED + 1));
    line("uncached (TokenReview + SAR)", uncached);
    line("cached (both answers reused)", cached);
    Ok(())
}
