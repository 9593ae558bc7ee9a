//! Polling the peers: one task per peer, one request in flight each, every request bounded
//! by the exchange interval. Nothing here is awaited by the controller.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::{Report, Vantages};

/// A report larger than this is refused: a few hundred bytes per playbook, so 4 MiB covers
/// thousands of playbooks while a broken peer cannot make this replica buffer without end.
const MAX_REPORT_BYTES: usize = 4 << 20;

/// The least time between two asks of one peer.
const MIN_SPACING: Duration = Duration::from_millis(100);

/// This replica as a vantage point from its settings, polling the peers until `stop` turns
/// true. Errors only when the HTTP client cannot be built (a CA file that does not load).
pub fn start(
    settings: &super::VantageSettings,
    metrics: &super::VantageMetrics,
    stop: watch::Receiver<bool>,
) -> Result<Arc<Vantages>, String> {
    let v = Arc::new(Vantages::new(settings, metrics.clone()));
    spawn(
        v.clone(),
        settings.token_file.clone(),
        settings.ca_file.clone(),
        settings.peers.clone(),
        stop,
    )?;
    Ok(v)
}

/// Starts polling every peer in `peers` until `stop` turns true.
pub fn spawn(
    vantages: Arc<Vantages>,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    peers: Vec<String>,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    if peers.is_empty() {
        return Ok(());
    }
    let mut builder = reqwest::Client::builder()
        // A long poll is held up to one interval; one more for the round trip. A peer that
        // does not answer by then is asked again: its report stops counting after three.
        .timeout(vantages.interval.saturating_mul(2))
        .connect_timeout(vantages.interval)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = &ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| format!("vantage.caFile: cannot read {}: {e}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("vantage.caFile: {}: {e}", ca.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    let client = builder
        .build()
        .map_err(|e| format!("vantage: cannot build the HTTP client: {e}"))?;
    info!(peers = peers.len(), interval = ?vantages.interval, vantage = %vantages.identity.name, "exchanging verdicts with the other vantages");
    for url in peers {
        tokio::spawn(poll_peer(
            vantages.clone(),
            client.clone(),
            url,
            token_file.clone(),
            stop.clone(),
        ));
    }
    Ok(())
}

async fn poll_peer(
    v: Arc<Vantages>,
    client: reqwest::Client,
    url: String,
    token_file: Option<PathBuf>,
    mut stop: watch::Receiver<bool>,
) {
    // Long polls follow each other at once; this floor keeps a peer whose verdicts change at
    // every probe result (a streak counting up) from being asked more than 10 times a second.
    let mut floor = tokio::time::interval(MIN_SPACING);
    floor.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    let mut seen: Option<u64> = None;
    loop {
        tokio::select! {
            _ = floor.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let result = tokio::select! {
            r = exchange(&client, &url, token_file.as_deref(), seen, v.interval.saturating_mul(2)) => r,
            _ = stop.changed() => return,
        };
        match result {
            Ok(r) if r.vantage.name == v.identity.name => {
                debug!(%url, "this is this replica's own entry in vantage.peers: not polled");
                v.mark_self(&url);
                return;
            }
            Ok(r) => {
                if failing {
                    info!(%url, vantage = %r.vantage.name, "peer vantage answers again");
                    failing = false;
                }
                v.metrics.exchange(&url, "ok");
                seen = Some(r.version);
                v.accept(&url, r, Instant::now());
            }
            Err(e) => {
                if !failing {
                    warn!(%url, error = %e, "cannot read a peer vantage's verdicts; retried every interval (its report stops counting after three)");
                    failing = true;
                }
                v.metrics.exchange(&url, "error");
                v.failed(&url, e);
                seen = None;
                // A refusing or dead peer is asked again one interval later, not in a loop.
                tokio::select! {
                    _ = tokio::time::sleep(v.interval) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

/// One `GET {url}/v1/vantage`, bounded in time (the client's timeout) and size.
async fn exchange(
    client: &reqwest::Client,
    url: &str,
    token_file: Option<&std::path::Path>,
    seen: Option<u64>,
    budget: Duration,
) -> Result<Report, String> {
    let mut req = match seen {
        Some(v) => client.get(format!("{url}/v1/vantage?wait={v}")),
        // The first ask (or after an error) is answered at once.
        None => client.get(format!("{url}/v1/vantage")),
    };
    if let Some(f) = token_file {
        // Read at every exchange: a projected service-account token is rotated in place.
        let token = std::fs::read_to_string(f)
            .map_err(|e| format!("vantage.tokenFile {}: {e}", f.display()))?;
        req = req.bearer_auth(token.trim());
    }
    let deadline = Instant::now() + budget;
    let mut resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = tokio::time::timeout_at(deadline, resp.chunk())
        .await
        .map_err(|_| "the report did not arrive within the interval".to_string())?
        .map_err(|e| e.to_string())?
    {
        if body.len() + chunk.len() > MAX_REPORT_BYTES {
            return Err(format!(
                "the report is larger than {MAX_REPORT_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(format!(
            "{status}: {}",
            text.chars().take(200).collect::<String>()
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("not a vantage report: {e}"))
}
