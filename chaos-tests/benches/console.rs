//! Console benchmark in a real browser: route written → DOM updated, over 20 failovers (and
//! the 20 failbacks between them), on the fleet page of headless Chromium, against the real
//! `failoverd` binary on the file store. Prints p50/p99/max of each direction.
//!
//! The write's time is the VirtualService file's modification time (the store's atomic
//! rename); the DOM's is `Date.now()` in a MutationObserver callback the moment the fleet
//! row of `demo` changes phase (the observer runs right after htmx's swap). Both read the
//! same machine's wall clock (CLOCK_REALTIME), so no offset between clocks enters.
//!
//! `cargo build -p failoverd && cargo bench --profile dev -p chaos-tests --bench console`
//! (needs `chromium` and `chromium-driver`; `scripts/test.sh` installs them).
#![allow(clippy::unwrap_used)]

#[path = "../tests/browser/mod.rs"]
mod browser;

use std::time::{Duration, Instant, UNIX_EPOCH};

use browser::{Browser, Console, OPERATOR};
use serde_json::{Value, json};

const RUNS: usize = 20;

const OBSERVER: &str = r#"
window.benchSeen = [];
window.benchLast = null;
new MutationObserver(function () {
  var r = document.getElementById('pb-demo');
  if (!r) { return; }
  var p = r.getAttribute('data-phase');
  if (p !== window.benchLast) {
    window.benchLast = p;
    window.benchSeen.push({ phase: p, at: Date.now() });
  }
}).observe(document.body, { subtree: true, childList: true, attributes: true });
return true;
"#;

async fn post(base: &str, action: &str, body: Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/playbooks/demo/{action}"))
        .bearer_auth(OPERATOR.1)
        .json(&body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "{action}: {}",
        r.text().await.unwrap()
    );
}

/// Waits until the page recorded `phase` at index `from` or later; returns its time (ms).
async fn seen(b: &Browser, from: usize, phase: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = b
            .driver
            .execute(
                "return window.benchSeen.slice(arguments[0]);",
                vec![json!(from)],
            )
            .await
            .unwrap();
        if let Some(hit) = v
            .json()
            .as_array()
            .and_then(|a| a.iter().find(|e| e["phase"] == phase))
        {
            return hit["at"].as_f64().unwrap();
        }
        assert!(Instant::now() < deadline, "{phase} never shown");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn count(b: &Browser) -> usize {
    let v = b
        .driver
        .execute("return window.benchSeen.length;", Vec::new())
        .await
        .unwrap();
    v.json().as_u64().unwrap() as usize
}

fn written_ms(c: &Console) -> f64 {
    let m = std::fs::metadata(&c.scenario.vs_path)
        .unwrap()
        .modified()
        .unwrap();
    m.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1e3
}

fn report(what: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{what} ({} runs): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        v.len(),
        p(0.5),
        p(0.99),
        v[v.len() - 1]
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Err(why) = browser::browser_binaries() {
        eprintln!("console bench needs the browser: {why}");
        std::process::exit(1);
    }
    let c = Console::start(&[], &[]).await.unwrap();
    let b = Browser::start().await.unwrap();
    b.sign_in(&c.base, OPERATOR.1).await.unwrap();
    b.driver.execute(OBSERVER, Vec::new()).await.unwrap();
    let (mut over, mut back) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let n = count(&b).await;
        post(
            &c.base,
            "failover",
            json!({ "reason": format!("bench {i}"), "target": "failover[0]", "force": true }),
        )
        .await;
        let w = written_ms(&c);
        over.push(seen(&b, n, "failedOver").await - w);
        let n = count(&b).await;
        post(
            &c.base,
            "failback",
            json!({ "reason": format!("bench {i}"), "force": true }),
        )
        .await;
        let w = written_ms(&c);
        back.push(seen(&b, n, "normal").await - w);
    }
    report("route written -> fleet page DOM updated, failover", over);
    report("route written -> fleet page DOM updated, failback", back);
    b.quit().await;
}
