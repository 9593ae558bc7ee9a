//! Fault-injection harness for failoverd's end-to-end scenarios.
//!
//! The scenarios run the real `failoverd` binary as a child process against stand-in HTTP
//! services on loopback ([`StandIn`]) and the `file` routing store in a temporary directory,
//! break and heal the stand-ins, and watch the VirtualService file and the audit log the way
//! a GitOps agent or an auditor would. Every wait is bounded.
//!
//! The binary is not built by `cargo test -p chaos-tests` (Cargo builds another package's
//! binaries only for that package's own tests): run `cargo build -p failoverd` first, or point
//! `FAILOVERD_BIN` at a binary. See [`failoverd_bin`].

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use failoverd::audit::{self, Record};
use failoverd::engine::Routing;
use failoverd::playbook::{self, Playbook};
use failoverd::routing::{FileStore, RoutingStore};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use failoverd::standin::StandIn;

pub mod kube_emulator;
pub mod load;
pub mod percentile;
pub mod prometheus;
pub mod proxy;
pub mod rig;
pub use percentile::percentile;
pub mod storm;
pub use prometheus::Prometheus;

/// The demo playbook (`playbooks/examples/demo.yaml`), with its stand-in URLs on
/// `127.0.0.1:18081` (primary) and `127.0.0.1:18082` (DR).
pub const DEMO_PLAYBOOK: &str = failoverd::demo::PLAYBOOK;
/// The VirtualService the demo playbook rewrites (`playbooks/examples/demo-virtualservice.yaml`).
pub const DEMO_VIRTUAL_SERVICE: &str = failoverd::demo::VIRTUAL_SERVICE;
/// The primary probe URL's address in [`DEMO_PLAYBOOK`], replaced by the primary stand-in's.
pub const DEMO_PRIMARY_ADDR: &str = "127.0.0.1:18081";
/// The DR probe URL's address in [`DEMO_PLAYBOOK`], replaced by the DR stand-in's.
pub const DEMO_DR_ADDR: &str = "127.0.0.1:18082";
/// Host of the demo's failover target.
pub const DR_HOST: &str = "web.demo-dr.svc.cluster.local";

/// Substitutions for a quick failback: healthy 2 s, dwell 1 s, all traffic back in one step.
pub const FAST_FAILBACK: &[(&str, &str)] = &[
    ("after: 5s", "after: 2s"),
    ("minDwell: 5s", "minDwell: 1s"),
    ("steps: [50, 100]", "steps: [100]"),
];

/// How often the harness polls files and endpoints: 10 ms keeps timing honest.
pub const POLL: Duration = Duration::from_millis(10);

/// The `failoverd` binary to test.
///
/// `FAILOVERD_BIN` when set; otherwise `failoverd` in the profile directory of the running
/// executable (tests and benches live in `target/<profile>/deps/`, binaries one level up), so
/// `cargo test` uses `target/debug/failoverd` and `cargo bench` uses `target/release/failoverd`.
///
/// # Panics
///
/// When the binary does not exist, with the command that builds it. Prints a warning (once)
/// when daemon or probe sources are newer than the binary: the tests would run stale code.
pub fn failoverd_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = locate_bin();
        warn_if_stale(&bin);
        bin
    })
    .clone()
}

fn locate_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FAILOVERD_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "FAILOVERD_BIN={} does not exist; build it with `cargo build -p failoverd` \
             (or `cargo build --release -p failoverd`)",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("cannot find the path of the running executable");
    let mut dir = exe
        .parent()
        .expect("the running executable has no parent directory")
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let bin = dir.join(format!("failoverd{}", std::env::consts::EXE_SUFFIX));
    let release = dir.file_name().is_some_and(|n| n == "release");
    assert!(
        bin.is_file(),
        "{} does not exist: the end-to-end tests run the real binary, which `cargo test -p \
         chaos-tests` does not build. Run `cargo build{} -p failoverd` first, or set \
         FAILOVERD_BIN to a failoverd binary.",
        bin.display(),
        if release { " --release" } else { "" }
    );
    bin
}

fn warn_if_stale(bin: &Path) {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for dir in ["daemon/src", "probes/src"] {
        newest_file(&root.join(dir), &mut newest);
    }
    if let Some((t, p)) = newest
        && t > built
    {
        eprintln!(
            "chaos-tests: warning: {} is newer than {}; rebuild with `cargo build -p failoverd` \
             or these tests run stale code",
            p.display(),
            bin.display()
        );
    }
}

fn newest_file(dir: &Path, newest: &mut Option<(SystemTime, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            newest_file(&p, newest);
        } else if let Ok(t) = e.metadata().and_then(|m| m.modified())
            && newest.as_ref().is_none_or(|(n, _)| t > *n)
        {
            *newest = Some((t, p));
        }
    }
}

/// `failoverd run` as one replica on a cluster: the `kubernetes` store through `kubeconfig`,
/// `config` and `playbooks`, listening on `addr`, auditing to `audit`, JSON logs, `POD_NAME`
/// set to `pod` (its identity for leader election) and stdin closed. The caller adds what
/// else the replica needs (a state file, tokens) and where its output goes.
pub fn kube_replica_command(
    config: &Path,
    playbooks: &Path,
    kubeconfig: &Path,
    addr: SocketAddr,
    audit: &Path,
    pod: &str,
) -> Command {
    let mut cmd = Command::new(failoverd_bin());
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .arg("--playbooks")
        .arg(playbooks)
        .args(["--store", "kubernetes", "--kubeconfig"])
        .arg(kubeconfig)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--audit")
        .arg(audit)
        .args(["--log-format", "json"])
        .env("POD_NAME", pod)
        .env_remove("FAILOVERD_LOG")
        .stdin(Stdio::null());
    cmd
}

/// A free loopback address: binds `127.0.0.1:0` and releases the port again.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// Asserts that `failoverd audit verify FILE` (the real CLI, an oracle independent of the
/// daemon that wrote the log) exits 0, with its output in the panic message otherwise.
pub fn assert_audit_verifies(path: &Path) {
    let out = run_cli(
        [
            std::ffi::OsStr::new("audit"),
            "verify".as_ref(),
            path.as_os_str(),
        ],
        Duration::from_secs(10),
    )
    .expect("running failoverd audit verify");
    assert!(
        out.status.success(),
        "audit verify failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `failoverd ARGS...` to completion (at most `timeout`; killed after that) and
/// returns its exit status and output.
pub fn run_cli<I, S>(args: I, timeout: Duration) -> anyhow::Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut child = Command::new(failoverd_bin())
        .args(args)
        .env_remove("FAILOVERD_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning failoverd")?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("failoverd did not exit within {timeout:?}");
        }
        std::thread::sleep(POLL);
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Where a daemon reads and writes.
#[derive(Clone, Debug)]
pub struct DaemonPaths {
    /// `--playbooks`: directory (or file) of playbooks.
    pub playbooks: PathBuf,
    /// `--store file:DIR`: the file store's root.
    pub store: PathBuf,
    /// `--audit`: the audit log.
    pub audit: PathBuf,
    /// Where the daemon's stdout and stderr are captured.
    pub logs: PathBuf,
}

/// A running `failoverd run` process; killed (SIGKILL) when dropped.
///
/// Its stdout and stderr go to files (`<name>.stdout`, `<name>.stderr` in
/// [`DaemonPaths::logs`]) so a failing test can print them with [`Daemon::logs`].
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    status: Option<ExitStatus>,
    /// The HTTP listener (`/healthz`, `/readyz`, `/metrics`).
    pub addr: SocketAddr,
    /// Captured stdout.
    pub stdout: PathBuf,
    /// Captured stderr (the JSON log).
    pub stderr: PathBuf,
}

impl Daemon {
    /// Starts `failoverd run --playbooks DIR --store file:DIR --listen 127.0.0.1:PORT --audit FILE
    /// --log-format json` on a free port; `name` names the log files.
    pub fn spawn(paths: &DaemonPaths, name: &str) -> anyhow::Result<Self> {
        Self::spawn_with(paths, name, &[] as &[&str])
    }

    /// [`Daemon::spawn`] with more `failoverd run` arguments, e.g. `["--prometheus", URL]`.
    pub fn spawn_with<S: AsRef<std::ffi::OsStr>>(
        paths: &DaemonPaths,
        name: &str,
        extra: &[S],
    ) -> anyhow::Result<Self> {
        let store = format!("file:{}", paths.store.display());
        Self::spawn_store(paths, name, &store, extra)
    }

    /// [`Daemon::spawn_with`] on another store, e.g. `kubernetes` (with `--kubeconfig` in
    /// `extra`); [`DaemonPaths::store`] is then unused.
    pub fn spawn_store<S: AsRef<std::ffi::OsStr>>(
        paths: &DaemonPaths,
        name: &str,
        store: &str,
        extra: &[S],
    ) -> anyhow::Result<Self> {
        Self::spawn_store_env(paths, name, store, extra, &[])
    }

    /// [`Daemon::spawn_store`] with environment variables set (e.g. `POD_NAME`, a replica's
    /// identity under leader election).
    pub fn spawn_store_env<S: AsRef<std::ffi::OsStr>>(
        paths: &DaemonPaths,
        name: &str,
        store: &str,
        extra: &[S],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&paths.logs)?;
        let addr = free_addr()?;
        let stdout = paths.logs.join(format!("{name}.stdout"));
        let stderr = paths.logs.join(format!("{name}.stderr"));
        let child = Command::new(failoverd_bin())
            .arg("run")
            .arg("--playbooks")
            .arg(&paths.playbooks)
            .arg("--store")
            .arg(store)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--audit")
            .arg(&paths.audit)
            .args(["--log-format", "json"])
            .args(extra)
            .envs(env.iter().copied())
            .env_remove("FAILOVERD_LOG")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?)
            .spawn()
            .context("spawning failoverd run")?;
        Ok(Self {
            child,
            status: None,
            addr,
            stdout,
            stderr,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// The captured stderr (the log), or an empty string.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Captured stdout and stderr, labelled, for a failure message.
    pub fn logs(&self) -> String {
        format!(
            "--- failoverd stdout ({}) ---\n{}\n--- failoverd stderr ({}) ---\n{}",
            self.stdout.display(),
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            self.stderr.display(),
            self.stderr_text()
        )
    }

    /// The log's JSON lines (lines that do not parse are skipped).
    pub fn log_lines(&self) -> Vec<Value> {
        self.stderr_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// `GET path` on the daemon's listener (HTTP/1.0, bounded to 2 s): status code and body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.addr, path, Duration::from_secs(2)).await
    }

    /// Waits until `/readyz` answers 200 (first probe round in). Fails early, with the log,
    /// when the process exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_status()? {
                bail!(
                    "failoverd exited ({s}) before it was ready\n{}",
                    self.logs()
                );
            }
            if let Ok((200, _)) = self.get("/readyz").await {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("failoverd not ready within {timeout:?}\n{}", self.logs());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends SIGTERM (`kill -TERM PID`) and waits up to `timeout` for the exit; SIGKILLs and
    /// fails when the process does not stop in time.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(s) = self.try_status()? {
            return Ok(s);
        }
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .context("running kill -TERM")?;
        if !sent.success() {
            bail!("kill -TERM {} failed: {sent}", self.pid());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                self.kill()?;
                bail!(
                    "failoverd did not exit within {timeout:?} of SIGTERM\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL: the process dies without draining anything. Returns the exit status.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(s) = self.try_status()? {
            return Ok(s);
        }
        self.child.kill().context("killing failoverd")?;
        let s = self.child.wait()?;
        self.status = Some(s);
        Ok(s)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Every line of a JSON-lines file (the audit log), parsed here with `serde_json` rather than
/// through failoverd's own reader; a missing file is empty. Panics on a line that is not JSON.
pub fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("{}: a line that is not JSON ({e}): {l}", path.display())
            })
        })
        .collect()
}

/// The event names of a drill run's report (`GET /v1/drills/{name}/runs/{id}`), in order.
pub fn drill_events(report: &serde_json::Value) -> Vec<String> {
    report["timeline"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .filter_map(|s| s["event"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts a drill report's events (see [`drill_events`]) hold `names`, in this order.
pub fn assert_events_in_order(ev: &[String], names: &[&str]) {
    let at = |name: &str| {
        ev.iter()
            .position(|e| e == name)
            .unwrap_or_else(|| panic!("no {name} in {ev:?}"))
    };
    for pair in names.windows(2) {
        assert!(
            at(pair[0]) < at(pair[1]),
            "{} before {}: {ev:?}",
            pair[0],
            pair[1]
        );
    }
}

/// The run id `failoverd drill run` (without `--wait`) printed; panics, with the daemon's
/// `logs`, when the command failed or printed none.
pub fn drill_run_id(out: &std::process::Output, logs: &str) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "drill run failed: {text}\n{}\n{logs}",
        String::from_utf8_lossy(&out.stderr),
    );
    text.split_whitespace()
        .skip_while(|w| *w != "run")
        .nth(1)
        .unwrap_or_else(|| panic!("no run id in {text:?}"))
        .to_string()
}

/// A minimal HTTP/1.0 `GET` over a raw TCP connection (the server closes after answering).
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    http_request(addr, "GET", path, None, timeout).await
}

/// [`http_get`] with `Authorization: Bearer <token>` (what the API's tests send).
pub async fn http_get_as(
    addr: SocketAddr,
    path: &str,
    token: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    http_request(addr, "GET", path, Some(token), timeout).await
}

/// One HTTP/1.0 request without a body over a raw TCP connection (the server closes after
/// answering), bounded by `timeout`: status and body.
async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| {
            anyhow::anyhow!("{method} {path} on {addr}: no answer within {timeout:?}")
        })??;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            anyhow::anyhow!("{method} {path} on {addr}: not an HTTP answer: {text:?}")
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// One end-to-end set-up: a temporary directory holding a file store with the demo
/// VirtualService, a playbook directory with the demo playbook pointed at two stand-ins,
/// and the stand-ins themselves (primary and DR, both healthy).
///
/// ```text
/// <dir>/playbooks/demo.yaml      the playbook
/// <dir>/routes/demo/web.yaml     the VirtualService (file store)
/// <dir>/audit.jsonl              the audit log
/// <dir>/logs/                    captured daemon output
/// ```
#[derive(Debug)]
pub struct Scenario {
    /// The temporary directory (removed on drop).
    pub dir: TempDir,
    /// Daemon paths inside `dir`.
    pub paths: DaemonPaths,
    /// The playbook file.
    pub playbook_path: PathBuf,
    /// The playbook's text as written.
    pub playbook_text: String,
    /// The parsed playbook.
    pub playbook: Playbook,
    /// The VirtualService file.
    pub vs_path: PathBuf,
    /// The primary's stand-in.
    pub primary: StandIn,
    /// The DR target's stand-in (`failover[0]`).
    pub dr: StandIn,
}

impl Scenario {
    /// Sets up the scenario with the demo playbook, after replacing each `(from, to)` in
    /// `subs` (each `from` must occur exactly once), e.g. [`FAST_FAILBACK`].
    ///
    /// Needs a tokio runtime (the stand-ins serve on it).
    pub async fn new(subs: &[(&str, &str)]) -> anyhow::Result<Self> {
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let primary = StandIn::start("primary", loopback).await?;
        let dr = StandIn::start("dr", loopback).await?;
        let mut text = DEMO_PLAYBOOK
            .replace(DEMO_PRIMARY_ADDR, &primary.addr().to_string())
            .replace(DEMO_DR_ADDR, &dr.addr().to_string());
        for (from, to) in subs {
            let n = text.matches(from).count();
            if n != 1 {
                bail!("playbook substitution `{from}` matches {n} times, not once");
            }
            text = text.replacen(from, to, 1);
        }
        let dir = tempfile::tempdir()?;
        let paths = DaemonPaths {
            playbooks: dir.path().join("playbooks"),
            store: dir.path().join("routes"),
            audit: dir.path().join("audit.jsonl"),
            logs: dir.path().join("logs"),
        };
        std::fs::create_dir_all(&paths.playbooks)?;
        std::fs::create_dir_all(paths.store.join("demo"))?;
        let playbook_path = paths.playbooks.join("demo.yaml");
        std::fs::write(&playbook_path, &text)?;
        let playbook = playbook::load_file(&playbook_path)
            .map_err(|p| anyhow::anyhow!("{}", playbook::Problems(p)))?
            .playbook;
        let vs_path = FileStore::new(&paths.store).path(&playbook);
        std::fs::write(&vs_path, DEMO_VIRTUAL_SERVICE)?;
        Ok(Self {
            dir,
            paths,
            playbook_path,
            playbook_text: text,
            playbook,
            vs_path,
            primary,
            dr,
        })
    }

    /// Starts `failoverd run` on this scenario; `name` names its log files.
    pub fn spawn(&self, name: &str) -> anyhow::Result<Daemon> {
        Daemon::spawn(&self.paths, name)
    }

    /// Starts `failoverd run --prometheus URL` on this scenario; `name` names its log files.
    pub fn spawn_with_prometheus(&self, name: &str, url: &str) -> anyhow::Result<Daemon> {
        Daemon::spawn_with(&self.paths, name, &["--prometheus", url])
    }

    /// The VirtualService as it started (parsed).
    pub fn original_vs() -> anyhow::Result<Value> {
        Ok(serde_saphyr::from_str(DEMO_VIRTUAL_SERVICE)?)
    }

    /// The VirtualService file's bytes now.
    pub fn vs_bytes(&self) -> anyhow::Result<Vec<u8>> {
        std::fs::read(&self.vs_path).with_context(|| format!("reading {}", self.vs_path.display()))
    }

    /// The VirtualService file parsed.
    pub fn read_vs(&self) -> anyhow::Result<Value> {
        read_yaml(&self.vs_path)
    }

    /// The audit log's intact records (empty when it does not exist yet).
    pub fn audit(&self) -> Vec<Record> {
        audit::read_all(&self.paths.audit).unwrap_or_default()
    }

    /// Waits until [`wait_routing`] sees `pred` hold on this scenario's route.
    pub async fn wait_routing(
        &self,
        pred: impl Fn(Routing) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<(Routing, Duration)> {
        wait_routing(&self.paths.store, &self.playbook, pred, timeout).await
    }

    /// Waits until the audit log holds a record matching `pred`; returns it.
    pub async fn wait_audit(
        &self,
        what: &str,
        pred: impl Fn(&Record) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Record> {
        wait_for(what, timeout, || self.audit().into_iter().find(|r| pred(r))).await
    }
}

/// Parses a YAML file into JSON values.
pub fn read_yaml(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Polls `f` every [`POLL`] until it returns `Some`, at most `timeout`; the error names `what`.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls the playbook's VirtualService in the file store under `store_dir` every [`POLL`]
/// (through [`FileStore::read`], i.e. failoverd's own reading of the state annotation) until
/// `pred` holds for its routing. Returns the routing and the time waited; fails after
/// `timeout`, naming the last routing or read error seen.
pub async fn wait_routing(
    store_dir: &Path,
    playbook: &Playbook,
    pred: impl Fn(Routing) -> bool,
    timeout: Duration,
) -> anyhow::Result<(Routing, Duration)> {
    let store = FileStore::new(store_dir);
    let start = Instant::now();
    loop {
        let last = match store.read(playbook).await {
            Ok(v) if pred(v.routing) => return Ok((v.routing, start.elapsed())),
            Ok(v) => format!("routing {}", v.routing),
            Err(e) => format!("read error: {e}"),
        };
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for the route to change (last: {last})");
        }
        tokio::time::sleep(POLL).await;
    }
}
