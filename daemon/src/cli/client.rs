//! The override API's command-line client: `failoverd status | failover | failback | freeze |
//! resume | why`. Reads `FAILOVERD_URL` and `FAILOVERD_TOKEN`; without a token, a client
//! certificate or the kubeconfig's token (`credentials`).
//!
//! Exit codes scripts can rely on: 0 done; 1 refused (a safety rule, unknown playbook, bad
//! request); 3 not authenticated or not allowed; 4 failoverd unreachable or failing.

use std::process::ExitCode;
use std::time::Duration;

use clap::ValueEnum;
use serde_json::{Value, json};

/// Output format.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// Tables and sentences for people.
    Table,
    /// The API's JSON, for scripts.
    Json,
}

/// Connection settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// failoverd's address.
    #[arg(
        long,
        env = "FAILOVERD_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// Bearer token (prefer the environment variable: flags show in `ps`).
    #[arg(long, env = "FAILOVERD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// Kubeconfig token, client certificate, server CA.
    #[command(flatten)]
    pub creds: Box<super::credentials::Credentials>,
}

/// Exit code: refused by failoverd.
pub const EXIT_REFUSED: u8 = 1;
/// Exit code: not authenticated or not allowed.
pub const EXIT_AUTH: u8 = 3;
/// Exit code: unreachable or server error.
pub const EXIT_UNAVAILABLE: u8 = 4;

struct Failure {
    code: u8,
    message: String,
}

async fn call(
    conn: &Conn,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, Failure> {
    let (client, token) =
        conn.creds
            .build(&conn.url, conn.token.as_deref())
            .map_err(|message| Failure {
                code: EXIT_AUTH,
                message,
            })?;
    let url = format!("{}{path}", conn.url.trim_end_matches('/'));
    let mut req = client.request(method, &url);
    if let Some(t) = &token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| Failure {
        code: EXIT_UNAVAILABLE,
        message: format!("cannot reach failoverd at {}: {e}", conn.url),
    })?;
    let status = resp.status();
    let value: Value = resp.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(value);
    }
    let error = value
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("error");
    let detail = match value.get("detail") {
        Some(Value::Null) | None => String::new(),
        Some(Value::String(s)) => format!(" ({s})"),
        Some(v) => format!(" ({v})"),
    };
    let code = match status.as_u16() {
        401 | 403 => EXIT_AUTH,
        400..=499 => EXIT_REFUSED,
        _ => EXIT_UNAVAILABLE,
    };
    Err(Failure {
        code,
        message: format!("{status}: {error}{detail}"),
    })
}

fn finish(conn: &Conn, r: Result<Value, Failure>, show: impl FnOnce(&Value)) -> ExitCode {
    match r {
        Ok(v) => {
            match conn.output {
                Output::Json => {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())
                }
                Output::Table => show(&v),
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("failoverd: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn routing_text(v: &Value) -> String {
    match v.get("to").and_then(Value::as_str) {
        Some("primary") => "primary".into(),
        Some("failover") => format!("failover[{}]", s(&v["target"])),
        Some("split") => format!(
            "primary {}% / failover[{}]",
            s(&v["primaryPercent"]),
            s(&v["target"])
        ),
        _ => "-".into(),
    }
}

/// `failoverd status [NAME]`.
pub async fn status(conn: &Conn, name: Option<&str>) -> ExitCode {
    match name {
        None => {
            let r = call(conn, reqwest::Method::GET, "/v1/playbooks", None).await;
            finish(conn, r, |v| {
                println!(
                    "{:<24} {:<12} {:<28} {:<9} EXPLAIN",
                    "PLAYBOOK", "PHASE", "ROUTING", "OVERRIDES"
                );
                for p in v["playbooks"].as_array().into_iter().flatten() {
                    println!(
                        "{:<24} {:<12} {:<28} {:<9} {}{}",
                        s(&p["name"]),
                        s(&p["phase"]),
                        routing_text(&p["routing"]),
                        s(&p["overrides"]),
                        s(&p["explain"]),
                        p["error"]
                            .as_str()
                            .map(|e| format!("  [error: {e}]"))
                            .unwrap_or_default()
                    );
                }
            })
        }
        Some(n) => why(conn, n).await,
    }
}

/// `failoverd why NAME`: state, signals, recent moves and the audit trail of one playbook.
pub async fn why(conn: &Conn, name: &str) -> ExitCode {
    let r = call(
        conn,
        reqwest::Method::GET,
        &format!("/v1/playbooks/{name}"),
        None,
    )
    .await;
    let audit = if conn.output == Output::Table && r.is_ok() {
        call(
            conn,
            reqwest::Method::GET,
            &format!("/v1/audit?playbook={name}&limit=10"),
            None,
        )
        .await
        .ok()
    } else {
        None
    };
    finish(conn, r, |v| {
        let st = &v["status"];
        println!(
            "playbook   {}  (VirtualService {})",
            s(&v["name"]),
            s(&v["virtualService"])
        );
        println!("phase      {}", s(&st["phase"]["phase"]));
        println!("routing    {}", routing_text(&st["routing"]));
        println!("why        {}", s(&st["explain"]));
        if let Some(e) = st["error"].as_str() {
            println!("error      {e}");
        }
        println!("signals:");
        for o in st["signals"].as_array().into_iter().flatten() {
            println!(
                "  {:<20} {:<12} {:<10} streak {:<4} {}",
                s(&o["signal"]),
                s(&o["target"]),
                s(&o["health"]["state"]),
                s(&o["streak"]),
                // A cleared fence verdict has no reason; its detail says where the target is.
                o["health"]["reason"]
                    .as_str()
                    .or(o["detail"].as_str())
                    .unwrap_or("")
            );
        }
        println!("overrides:");
        for o in v["overrides"].as_array().into_iter().flatten() {
            println!(
                "  {} {} by {} until {}: {}",
                s(&o["id"]),
                s(&o["kind"]),
                s(&o["actor"]),
                s(&o["until"]),
                s(&o["reason"])
            );
        }
        println!("recent moves:");
        for t in st["transitions"].as_array().into_iter().flatten() {
            println!(
                "  {} {:<17} {} -> {} by {}: {}",
                s(&t["time"]),
                s(&t["kind"]),
                routing_text(&t["from"]),
                routing_text(&t["to"]),
                s(&t["actor"]),
                s(&t["reason"])
            );
        }
        if let Some(a) = &audit {
            println!("audit (last 10):");
            for r in a["records"].as_array().into_iter().flatten() {
                println!(
                    "  #{} {} {:<18} {:<10} {}: {}",
                    s(&r["seq"]),
                    s(&r["time"]),
                    s(&r["action"]),
                    s(&r["actor"]),
                    s(&r["outcome"]),
                    s(&r["reason"])
                );
            }
        }
    })
}

/// `failoverd failover|failback|freeze|resume NAME --reason ...`.
pub async fn act(conn: &Conn, action: &str, name: &str, body: Value) -> ExitCode {
    let r = call(
        conn,
        reqwest::Method::POST,
        &format!("/v1/playbooks/{name}/{action}"),
        Some(body),
    )
    .await;
    finish(conn, r, |v| {
        if let Some(id) = v["id"].as_str() {
            // A break-glass request: nothing moved yet.
            println!(
                "{name}: break-glass {id} requested for failover[{}]; a different admin runs `failoverd approve {id} --reason ...` before {}",
                s(&v["target"]),
                s(&v["expiresAt"])
            );
            return;
        }
        println!("{name}: {}", s(&v["message"]));
        if let Some(id) = v["overrideId"].as_str() {
            println!("override id: {id}");
        }
    })
}

/// `failoverd approve ID --reason ...`: the second admin of a break-glass.
pub async fn approve(conn: &Conn, id: &str, reason: &str) -> ExitCode {
    let r = call(
        conn,
        reqwest::Method::POST,
        &format!("/v1/breakglass/{id}/approve"),
        Some(json!({ "reason": reason })),
    )
    .await;
    finish(conn, r, |v| {
        println!("{id}: approved: {}", s(&v["message"]));
        if let Some(o) = v["overrideId"].as_str() {
            println!("override id: {o}");
        }
    })
}

/// Builds an action body, leaving out what was not given.
pub fn body(reason: &str, ttl: Option<&str>, target: Option<&str>, force: bool) -> Value {
    let mut b = json!({ "reason": reason });
    if let Some(t) = ttl {
        b["ttl"] = json!(t);
    }
    if let Some(t) = target {
        b["target"] = match t.parse::<u64>() {
            Ok(n) => json!(n),
            Err(_) => json!(t),
        };
    }
    if force {
        b["force"] = json!(true);
    }
    b
}

/// Exit code: the drill ran but did not pass (failed, aborted or skipped).
pub const EXIT_DRILL_NOT_PASSED: u8 = 2;

/// Longest `drill run --wait`: the longest hold (1h) plus generous failover and failback.
const DRILL_WAIT: Duration = Duration::from_secs(2 * 3600);

/// `failoverd drill run NAME [--wait]`: starts a drill; with `wait`, polls its report until
/// the verdict and prints it (Markdown, or the JSON with `-o json`). Exit 0 when started
/// (or, with `wait`, passed), 2 when it did not pass.
pub async fn drill_run(
    conn: &Conn,
    name: &str,
    reason: Option<&str>,
    force: bool,
    wait: bool,
) -> ExitCode {
    let mut b = json!({});
    if let Some(r) = reason {
        b["reason"] = json!(r);
    }
    if force {
        b["force"] = json!(true);
    }
    let started = call(
        conn,
        reqwest::Method::POST,
        &format!("/v1/drills/{name}/run"),
        Some(b),
    )
    .await;
    let id = match &started {
        Ok(v) => s(&v["runId"]).to_string(),
        Err(_) => String::new(),
    };
    if !wait || started.is_err() {
        return finish(conn, started, |v| {
            println!(
                "drill {name}: {} run {} started; report at {}",
                s(&v["mode"]),
                s(&v["runId"]),
                s(&v["report"])
            );
        });
    }
    let path = format!("/v1/drills/{name}/runs/{id}");
    let deadline = std::time::Instant::now() + DRILL_WAIT;
    let report = loop {
        match call(conn, reqwest::Method::GET, &path, None).await {
            Ok(v) if v["result"] != "running" => break Ok(v),
            Ok(_) => {}
            Err(f) => break Err(f),
        }
        if std::time::Instant::now() >= deadline {
            break Err(Failure {
                code: EXIT_UNAVAILABLE,
                message: format!("drill {name} run {id} still running after {DRILL_WAIT:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let passed = report
        .as_ref()
        .is_ok_and(|v| v["result"].as_str() == Some("passed"));
    let code = finish(conn, report, |v| {
        match serde_json::from_value::<crate::drill::Run>(v.clone()) {
            Ok(run) => print!("{}", run.markdown()),
            Err(_) => println!("{v}"),
        }
    });
    if code == ExitCode::SUCCESS && !passed {
        return ExitCode::from(EXIT_DRILL_NOT_PASSED);
    }
    code
}
