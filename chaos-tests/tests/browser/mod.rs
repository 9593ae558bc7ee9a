//! The console's rig for a real browser, shared by `tests/console_browser.rs` and
//! `benches/console.rs`: Debian's `chromium` driven over WebDriver by its `chromedriver`
//! (started here on a free loopback port), and the demo scenario with three playbooks, a
//! token file (operator and viewer) and the real `failoverd` binary.
//!
//! Nothing is downloaded: the browser and driver are the distribution's packages
//! (`scripts/test.sh` installs them); Chromium runs headless with the flags that keep it off
//! the network (no background networking, component updates or first-run fetches).

#![allow(dead_code)] // each user takes the parts it needs

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chaos_tests::{Daemon, Scenario, StandIn, free_addr};
use failoverd::auth::hash_token;
use serde_json::json;
use thirtyfour::prelude::*;

/// The operator: identity and token.
pub const OPERATOR: (&str, &str) = ("alice@oncall", "operator-token-alice");
/// The viewer: identity and token.
pub const VIEWER: (&str, &str) = ("bob@readonly", "viewer-token-bob");
/// The playbooks beside `demo`, each on its own healthy stand-ins.
pub const OTHERS: [&str; 2] = ["case-records", "intake"];

/// Where the browser and its driver are, or why they are not there.
pub fn browser_binaries() -> Result<(PathBuf, PathBuf), String> {
    let find = |name: &str| {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    };
    match (find("chromium"), find("chromedriver")) {
        (Some(c), Some(d)) => Ok((c, d)),
        (c, d) => Err(format!(
            "missing: {}{}",
            if c.is_none() { "chromium " } else { "" },
            if d.is_none() {
                "chromedriver (package chromium-driver)"
            } else {
                ""
            }
        )),
    }
}

/// True when this machine can install packages itself (root with apt-get): a missing browser
/// is then a setup fault, not a reason to skip.
pub fn can_install() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    root && Command::new("apt-get")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok()
}

/// A headless Chromium session and the chromedriver serving it (both ended on drop).
pub struct Browser {
    /// The WebDriver session.
    pub driver: WebDriver,
    chromedriver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver --port=N` on loopback and a headless Chromium session on it.
    pub async fn start() -> anyhow::Result<Self> {
        // reqwest (ours and thirtyfour's) is built without a provider: ring, as everywhere.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (chromium, chromedriver) = browser_binaries().map_err(anyhow::Error::msg)?;
        let port = free_addr()?.port();
        let mut child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reqwest::get(format!("{url}/status")).await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("chromedriver did not answer on {url} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir()?;
        let mut caps = DesiredCapabilities::chrome();
        caps.set_binary(&chromium.display().to_string())?;
        for arg in [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--metrics-recording-only",
            "--hide-scrollbars",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.path().display()),
        ] {
            caps.add_arg(arg)?;
        }
        let driver = match WebDriver::new(url, caps).await {
            Ok(d) => d,
            Err(e) => {
                let _ = child.kill();
                return Err(e.into());
            }
        };
        Ok(Self {
            driver,
            chromedriver: child,
            _profile: profile,
        })
    }

    /// A viewport of `width` × `height` CSS pixels (a phone's at 360 wide).
    pub async fn viewport(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.driver
            .cdp()
            .send_raw(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600 }),
            )
            .await?;
        Ok(())
    }

    /// Signs in with `token` through the form; waits for the fleet page and its live stream.
    pub async fn sign_in(&self, base: &str, token: &str) -> anyhow::Result<()> {
        self.driver.goto(format!("{base}/ui/sign-in")).await?;
        self.driver
            .find(By::Id("token"))
            .await?
            .send_keys(token)
            .await?;
        self.driver
            .find(By::Css("form[action='/ui/sign-in'] button"))
            .await?
            .click()
            .await?;
        self.wait_live().await
    }

    /// Finds `by`, waiting up to 10 s for it: a click on a form's submit button returns
    /// before the browser has loaded the page it navigates to, so a plain `find` right after
    /// one can look at the old page.
    pub async fn wait_find(&self, by: By) -> anyhow::Result<WebElement> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.driver.find(by.clone()).await {
                Ok(el) => return Ok(el),
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "{by:?} not on the page within 10 s ({e}): {}",
                        self.driver.source().await.unwrap_or_default()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Waits until the page says its live stream is up.
    pub async fn wait_live(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(el) = self.driver.find(By::Id("live-status")).await
                && el.text().await.unwrap_or_default() == "Live"
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the page never showed its live stream up: {}",
                    self.driver.source().await.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Signs out (the sign-out form) so another identity can sign in.
    pub async fn sign_out(&self) -> anyhow::Result<()> {
        self.driver
            .find(By::Css("form[action='/ui/sign-out'] button"))
            .await?
            .click()
            .await?;
        // Signed out once the sign-in page has loaded (else a `goto` right after could cancel
        // the sign-out's own navigation).
        self.wait_find(By::Id("token")).await?;
        Ok(())
    }

    /// Ends the session and the driver.
    pub async fn quit(mut self) {
        let _ = self.driver.clone().quit().await;
        let _ = self.chromedriver.kill();
        let _ = self.chromedriver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.chromedriver.kill();
    }
}

/// The demo scenario with [`OTHERS`] beside it, a token file, and the daemon running with it.
pub struct Console {
    /// The demo scenario (its primary is the one that fails).
    pub scenario: Scenario,
    /// The other playbooks' stand-ins (kept alive: healthy throughout).
    pub others: Vec<StandIn>,
    /// The daemon.
    pub daemon: Daemon,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Console {
    /// Sets it up with `subs` applied to the demo playbook and waits until the daemon is ready.
    pub async fn start(subs: &[(&str, &str)], extra_args: &[&str]) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let scenario = Scenario::new(subs).await?;
        let mut others = Vec::new();
        for name in OTHERS {
            let loopback = ([127, 0, 0, 1], 0).into();
            let p = StandIn::start(&format!("{name}-primary"), loopback).await?;
            let d = StandIn::start(&format!("{name}-dr"), loopback).await?;
            let text = scenario
                .playbook_text
                .replace(&scenario.primary.addr().to_string(), &p.addr().to_string())
                .replace(&scenario.dr.addr().to_string(), &d.addr().to_string())
                .replacen("  name: demo", &format!("  name: {name}"), 1)
                .replacen(
                    "{ namespace: demo, name: web }",
                    &format!("{{ namespace: demo, name: {name} }}"),
                    1,
                );
            std::fs::write(scenario.paths.playbooks.join(format!("{name}.yaml")), text)?;
            let vs = chaos_tests::DEMO_VIRTUAL_SERVICE.replacen(
                "  name: web\n",
                &format!("  name: {name}\n"),
                1,
            );
            std::fs::write(
                scenario
                    .paths
                    .store
                    .join("demo")
                    .join(format!("{name}.yaml")),
                vs,
            )?;
            others.extend([p, d]);
        }
        let tokens = scenario.dir.path().join("tokens.yaml");
        std::fs::write(
            &tokens,
            [(OPERATOR, "operator"), (VIEWER, "viewer")]
                .iter()
                .map(|((id, tok), role)| {
                    format!(
                        "- {{ identity: \"{id}\", role: {role}, sha256: \"{}\" }}\n",
                        hash_token(tok)
                    )
                })
                .collect::<String>(),
        )?;
        let mut args = vec!["--tokens".to_string(), tokens.display().to_string()];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let mut daemon = Daemon::spawn_with(&scenario.paths, "console", &args)?;
        daemon
            .wait_ready(Duration::from_secs(30))
            .await
            .with_context(|| daemon.logs())?;
        let base = format!("http://{}", daemon.addr);
        Ok(Self {
            scenario,
            others,
            daemon,
            base,
        })
    }

    /// `GET {path}` on the API as `token`, parsed.
    pub async fn api(&self, path: &str, token: &str) -> anyhow::Result<serde_json::Value> {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        let status = r.status();
        let body: serde_json::Value = r.json().await?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {body}");
        }
        Ok(body)
    }
}
