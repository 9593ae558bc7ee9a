//! The fault catalogue's set-up: a [`Scenario`] with quick probes, the real daemon, a routing
//! [`Proxy`] following its VirtualService and a steady [`Load`] through the proxy, so each
//! scenario measures what users felt as well as what failoverd wrote.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use failoverd::audit::Record;
use failoverd::engine::Routing;

use crate::load::{Load, LoadConfig, Report};
use crate::proxy::{Proxy, ProxyConfig, RouteSource};
use crate::{DR_HOST, Daemon, Scenario, run_cli};

/// Host of the demo's primary (subset `v1`).
pub const PRIMARY_HOST: &str = "web.demo.svc.cluster.local";

/// Rewrites the scenario's playbook for quick probes: every `interval: 1s` becomes `interval`
/// and every `timeout: 500ms` becomes `timeout` (the demo's probes are 1 s / 500 ms).
pub fn quick_probes(s: &Scenario, interval: &str, timeout: &str) -> anyhow::Result<()> {
    let text = s
        .playbook_text
        .replace("interval: 1s", &format!("interval: {interval}"))
        .replace("timeout: 500ms", &format!("timeout: {timeout}"));
    std::fs::write(&s.playbook_path, text)
        .with_context(|| format!("writing {}", s.playbook_path.display()))
}

/// A proxy on the scenario's `primary` route: the primary subset `v1` to the primary stand-in,
/// the DR host to the DR stand-in, upstream timeout 1 s, no push delay.
pub async fn proxy_for(s: &Scenario) -> anyhow::Result<Proxy> {
    proxy_following(s, RouteSource::File(s.vs_path.clone())).await
}

/// [`proxy_for`] with the VirtualService read from `source` (e.g. the Kubernetes emulator).
pub async fn proxy_following(s: &Scenario, source: RouteSource) -> anyhow::Result<Proxy> {
    Proxy::start(
        ProxyConfig::with_source(source, Some("primary".into()))
            .upstream(PRIMARY_HOST, Some("v1"), s.primary.addr())
            .upstream(DR_HOST, None, s.dr.addr()),
    )
    .await
}

/// Scenario, daemon, proxy and load together.
#[derive(Debug)]
pub struct Rig {
    /// Stand-ins, store, playbook, audit log.
    pub s: Scenario,
    /// The running daemon.
    pub d: Daemon,
    /// The routing proxy.
    pub proxy: Proxy,
}

impl Rig {
    /// Sets up the demo scenario with `subs` (see [`Scenario::new`]), probes every `interval`
    /// with timeout `timeout`, starts the daemon (with `extra` arguments) and waits until it is
    /// ready, and starts the proxy.
    pub async fn start(
        name: &str,
        subs: &[(&str, &str)],
        interval: &str,
        timeout: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let s = Scenario::new(subs).await?;
        quick_probes(&s, interval, timeout)?;
        let mut d = Daemon::spawn_with(&s.paths, name, extra)?;
        d.wait_ready(Duration::from_secs(15)).await?;
        let proxy = proxy_for(&s).await?;
        Ok(Self { s, d, proxy })
    }

    /// Starts a steady load of `rate` requests/s through the proxy (bounded to `max`).
    pub fn load(&self, rate: u32, max: Duration) -> Load {
        Load::start(
            self.proxy.addr(),
            LoadConfig {
                rate,
                max_duration: max,
                timeout: Duration::from_secs(3),
            },
        )
    }

    /// Waits for the route to satisfy `pred`; the error carries the daemon's logs.
    pub async fn wait_routing(
        &self,
        pred: impl Fn(Routing) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Routing> {
        match self.s.wait_routing(pred, timeout).await {
            Ok((r, _)) => Ok(r),
            Err(e) => bail!("{e:#}\n{}", self.d.logs()),
        }
    }

    /// Waits until the proxy routes as the store says (the push landed).
    pub async fn wait_proxy(&self, host: &str, timeout: Duration) -> anyhow::Result<()> {
        crate::wait_for("the proxy to route to the new host", timeout, || {
            let c = self.proxy.current();
            (c.len() == 1 && c.iter().all(|d| d.host == host)).then_some(())
        })
        .await
    }

    /// The audit records now.
    pub fn audit(&self) -> Vec<Record> {
        self.s.audit()
    }

    /// Fails unless `failoverd audit verify` passes on the audit log.
    pub fn verify_audit(&self) -> anyhow::Result<()> {
        verify_audit(&self.s.paths.audit)
    }
}

/// Runs `failoverd audit verify FILE`; fails with its output unless it exits 0.
pub fn verify_audit(path: &Path) -> anyhow::Result<()> {
    let out = run_cli(
        ["audit".as_ref(), "verify".as_ref(), path.as_os_str()],
        Duration::from_secs(20),
    )?;
    if !out.status.success() {
        bail!(
            "audit verify failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Records of `action` with `outcome`.
pub fn count(records: &[Record], action: &str, outcome: &str) -> usize {
    records
        .iter()
        .filter(|r| r.action == action && r.outcome == outcome)
        .count()
}

/// `action:outcome` of every record, for failure messages.
pub fn actions(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| format!("{}:{}", r.action, r.outcome))
        .collect()
}

/// Keeps `dir` unwritable (immutable as root, where a mode would not stop writes; mode 0555
/// otherwise) until dropped or [`ReadOnly::release`]d.
#[derive(Debug)]
pub struct ReadOnly {
    dir: std::path::PathBuf,
    root: bool,
    held: bool,
}

impl ReadOnly {
    /// Makes `dir` unwritable and checks that a file can no longer be created in it.
    pub fn hold(dir: &Path) -> anyhow::Result<Self> {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let ok = if root {
            std::process::Command::new("chattr")
                .arg("+i")
                .arg(dir)
                .status()
                .context("running chattr +i")?
                .success()
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).is_ok()
        };
        if !ok {
            bail!("cannot make {} read-only", dir.display());
        }
        let guard = Self {
            dir: dir.to_path_buf(),
            root,
            held: true,
        };
        let probe = dir.join(".write-probe");
        if std::fs::write(&probe, b"x").is_ok() {
            let _ = std::fs::remove_file(&probe);
            bail!("{} is still writable", dir.display());
        }
        Ok(guard)
    }

    /// Makes the directory writable again.
    pub fn release(&mut self) -> anyhow::Result<()> {
        if !self.held {
            return Ok(());
        }
        self.held = false;
        if self.root {
            let s = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&self.dir)
                .status()?;
            if !s.success() {
                bail!("chattr -i {} failed", self.dir.display());
            }
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// The error window and failed count of a run after `fault`, and a summary line.
pub fn window(report: &Report, fault: Instant) -> (Duration, usize, String) {
    (
        report.error_window(fault),
        report.failed_after(fault),
        report.summary(fault),
    )
}
