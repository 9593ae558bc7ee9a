//! The serving daemon wired together: the runtime loop, the HTTP API (with its drills and
//! refusal log) and the listener, running until `shutdown` turns true.
//!
//! This sits below both entry points: `failoverd run` builds the pieces from its
//! configuration and `failoverd demo` from the bundled example, and both call [`serve`];
//! the demo does not go through the command line, and nothing here imports either.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::api::ApiState;
use crate::auth::Tokens;
use crate::control::{self, Runtime};
use crate::drill::LoadedDrill;
use crate::server::ListenerOptions;
use crate::shared::Shared;

/// What [`serve`] can do beyond the runtime and the API; the default is what the demo and
/// most tests want: no drills, the default connection cap, plain HTTP.
#[derive(Debug, Default)]
pub struct ServeOptions {
    /// Drill definitions and the directory for their reports; `None` turns drills off.
    pub drills: Option<(Vec<LoadedDrill>, PathBuf)>,
    /// A cap on API connections (default [`crate::server::DEFAULT_MAX_CONNECTIONS`],
    /// lowered to fit the open-file limit) and TLS.
    pub listener: ListenerOptions,
    /// Cluster identities (TokenReview and SubjectAccessReview); None: token file only.
    pub kube_auth: Option<Arc<crate::api::kube_auth::KubeAuth>>,
    /// The on-call console under `/ui/` (on by default).
    pub console: crate::console::ConsoleOptions,
}

/// Runs the daemon with an HTTP listener until `shutdown` turns true.
pub async fn serve(
    rt: Runtime,
    shared: Arc<Shared>,
    tokens: Arc<Tokens>,
    audit_path: PathBuf,
    listener: tokio::net::TcpListener,
    shutdown: watch::Receiver<bool>,
    options: ServeOptions,
) -> anyhow::Result<()> {
    let ServeOptions {
        drills,
        listener: listener_options,
        kube_auth,
        console,
    } = options;
    // A certificate that does not load refuses the start, naming the file.
    let tls = listener_options
        .tls
        .clone()
        .map(|f| crate::tls::server_config_with(f, listener_options.client_ca.as_deref()))
        .transpose()
        .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
    // Operator calls are rare and each waits for its answer; a small queue is plenty.
    let (control_tx, control_rx) = mpsc::channel(64);
    let mut api = ApiState::new(
        shared.clone(),
        tokens,
        control_tx,
        rt.store.clone(),
        rt.audit.clone(),
        audit_path,
    );
    api.kube_auth = kube_auth;
    if let Some((defs, dir)) = drills {
        // Error budgets are read like SLOs: the `prometheusClient` settings, else a plain
        // client.
        let prometheus = match rt.prometheus_client.clone() {
            Some(c) => c,
            None => crate::slo::PromClient::new(
                reqwest::Client::builder()
                    .build()
                    .map_err(|e| anyhow::anyhow!("cannot build the Prometheus client: {e}"))?,
            ),
        };
        let d = crate::drill::Drills::new(
            defs,
            &dir,
            shared.clone(),
            api.control.clone(),
            rt.store.clone(),
            rt.audit.clone(),
            shutdown.clone(),
            prometheus,
            rt.prometheus.clone(),
        );
        d.start();
        api.drills = Some(d);
    }
    {
        // Aggregate refusal lines for windows that ended when a flood stopped.
        let refusals = api.refusals.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = tick.tick() => refusals.flush(),
                    _ = stop.wait_for(|v| *v) => break,
                }
            }
        });
    }
    // Connection cap, header-read timeout, per-connection peer address (server.rs).
    let limits = crate::server::ListenerLimits::for_process(listener_options.max_connections);
    let console = console.enabled.then(|| {
        crate::console::ConsoleState::new(api.clone(), console, tls.is_some(), shutdown.clone())
            .with_stream_cap(limits.max_connections / 4)
    });
    let mut app = crate::server::router(shared.clone(), api);
    if let Some(console) = console {
        app = app.merge(crate::console::routes(console));
    }
    let http = tokio::spawn(crate::server::serve(
        listener,
        app,
        limits,
        tls,
        shutdown.clone(),
    ));
    let result = control::run(rt, shared, control_rx, shutdown).await;
    http.await??;
    info!("stopped");
    result
}
