//! One-shot commands that check things and exit: `validate`, `audit verify`, `plan`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::RunArgs;
use crate::audit;
use crate::config::StoreSpec;
use crate::engine::Routing;
use crate::playbook::{self, Problems};
use crate::routing::{self, FileStore};

pub(super) async fn validate(
    paths: &[PathBuf],
    config: Option<PathBuf>,
    prometheus: Option<&str>,
) -> ExitCode {
    let checked = match config {
        // Exactly what `run --config FILE [--prometheus URL]` checks before it starts.
        Some(config) => RunArgs {
            config: Some(config),
            prometheus: prometheus.map(String::from),
            ..RunArgs::default()
        }
        .checked_settings()
        .and_then(|s| {
            let set = crate::validate::check(&s)?;
            let warnings = crate::validate::unreachable_targets(&s, &set.playbooks);
            Ok((set.playbooks, set.drills, warnings))
        }),
        None => crate::validate::check_paths(paths).map(|(l, d)| (l, d, Vec::new())),
    };
    let (loaded, drills, warnings) = match checked {
        Ok(set) => set,
        Err(problems) => {
            eprintln!("{problems}");
            eprintln!("{} problem(s)", problems.0.len());
            return ExitCode::FAILURE;
        }
    };
    for l in &loaded {
        println!("{}: ok ({})", l.file.display(), l.playbook.name());
    }
    for d in &drills {
        println!("{}: ok (drill {})", d.file.display(), d.name());
    }
    // Not a problem (the set is valid), but the fence will refuse every move it has.
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let has_slos = loaded.iter().any(|l| !l.playbook.spec.slos.is_empty());
    if prometheus.is_some() && has_slos {
        let http = match reqwest::Client::builder().build() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot build an HTTP client: {e}");
                return ExitCode::FAILURE;
            }
        };
        let problems =
            crate::slo::check_live(&loaded, prometheus, &crate::slo::PromClient::new(http)).await;
        for (pb, slo, p) in &problems {
            eprintln!("playbook {pb}: slos {slo}: {p}");
        }
        if !problems.is_empty() {
            eprintln!("{} problem(s) against the live Prometheus", problems.len());
            return ExitCode::FAILURE;
        }
        println!("every SLO query runs on the live Prometheus");
    }
    ExitCode::SUCCESS
}

pub(super) fn verify(files: &[PathBuf], key: Option<&std::path::Path>) -> ExitCode {
    match (files, key) {
        ([file], None) => verify_one(file),
        _ => verify_many(files, key),
    }
}

/// `audit verify --cluster`: the cluster's copy of the deployment's chain checked whole, and
/// `file` a prefix of it (see [`crate::trail::ClusterChain::verify_against`]).
pub(super) async fn verify_cluster(
    file: &std::path::Path,
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    namespace: &str,
    lease: &str,
) -> ExitCode {
    let options = crate::routing::kube::KubeOptions {
        kubeconfig,
        context,
        ..Default::default()
    };
    let client = match crate::routing::kube::KubeStore::connect(options).await {
        Ok(s) => s.client().clone(),
        Err(e) => {
            eprintln!("--cluster: cannot reach the cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    let chain = crate::trail::ClusterChain::new(
        client,
        namespace,
        lease,
        "failoverd-audit-verify",
        std::sync::Arc::new(crate::leader::Leadership::elected()),
        crate::trail::DEFAULT_RETENTION,
    );
    match chain.verify_against(file).await {
        Ok(report) => {
            println!("cluster: {report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("cluster: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Several files as one chain (see [`failoverd_core::audit::multi`]), and with a key every
/// checkpoint.
fn verify_many(files: &[PathBuf], key: Option<&std::path::Path>) -> ExitCode {
    use failoverd_core::audit::multi::{Start, Verifier};
    let key = match key.map(audit::read_key).transpose() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("--key {e}");
            return ExitCode::FAILURE;
        }
    };
    // Each file read forward once: memory is a hash per record, never a whole file.
    let mut v = Verifier::default();
    for f in files {
        let mut lines = match audit::Lines::open(f) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{}: cannot read: {e}", f.display());
                return ExitCode::FAILURE;
            }
        };
        v.add(&f.display().to_string(), &mut lines);
        if let Some(e) = lines.error {
            eprintln!("{}: read error: {e}", f.display());
            return ExitCode::FAILURE;
        }
        if let Some(n) = lines.torn {
            println!(
                "{}: torn last line ({n} bytes) left out: a write cut short by a crash",
                f.display()
            );
        }
    }
    let (chain, problems) = v.finish();
    for s in &chain.spans {
        let what = match &s.start {
            Start::Empty => "no records".to_string(),
            Start::Genesis => format!("records {}..{} from the first", s.first, s.last),
            Start::Linked { to } => format!(
                "records {}..{}, continuing seq {} held by {to}",
                s.first,
                s.last,
                s.first - 1
            ),
            Start::Unlinked => format!(
                "records {}..{}; its first prev is NOT checked: no given file holds seq {}",
                s.first,
                s.last,
                s.first - 1
            ),
        };
        let behind = chain
            .head
            .as_ref()
            .filter(|h| s.last > 0 && h.seq > s.last)
            .map(|h| format!(" ({} behind the head)", h.seq - s.last))
            .unwrap_or_default();
        let repeats = match s.repeats {
            0 => String::new(),
            n => format!(", {n} re-shipped repeat(s) skipped"),
        };
        println!("{}: {what}{behind}{repeats}", s.name);
    }
    for (a, b) in &chain.missing {
        println!("records {a}..{b}: in no given file");
    }
    match &chain.head {
        Some(h) => println!("head: seq {}, hash {}", h.seq, h.hash),
        None => println!("head: none (no records)"),
    }
    let mut bad_checkpoints = Vec::new();
    if let Some(key) = &key {
        bad_checkpoints = checkpoints(&chain, key);
    }
    let problems: Vec<String> = problems
        .iter()
        .map(ToString::to_string)
        .chain(bad_checkpoints)
        .collect();
    if problems.is_empty() {
        println!("{} files: one chain, no fork", files.len());
        ExitCode::SUCCESS
    } else {
        for p in &problems {
            eprintln!("{p}");
        }
        eprintln!("{} problem(s): not one whole chain", problems.len());
        ExitCode::FAILURE
    }
}

/// Checks every checkpoint the copies hold (each record once) and prints how far the
/// records are proved complete; returns the bad ones.
fn checkpoints(
    chain: &failoverd_core::audit::multi::OneChain,
    key: &failoverd_core::audit::checkpoint::Key,
) -> Vec<String> {
    use failoverd_core::audit::checkpoint;
    let mut seen = std::collections::BTreeSet::new();
    let mut bad = Vec::new();
    // The highest signed seq that checked: (its seq, the checkpoint record's seq, time).
    let mut best: Option<(u64, u64, String)> = None;
    for (file, line, text) in chain.checkpoint_lines() {
        let rec: audit::Record = match serde_json::from_slice(text) {
            Ok(r) => r,
            Err(e) => {
                bad.push(format!("{file}:{line}: checkpoint is not a record: {e}"));
                continue;
            }
        };
        if rec.action != checkpoint::ACTION || !seen.insert(rec.seq) {
            continue;
        }
        match checkpoint::check(key, &rec, |s| chain.hash_at(s)) {
            Ok(Some(i)) => {
                if best.as_ref().is_none_or(|b| i.seq > b.0) {
                    best = Some((i.seq, rec.seq, i.time));
                }
            }
            Ok(None) => {
                let signed = rec.inputs.get("seq").and_then(serde_json::Value::as_u64);
                println!(
                    "checkpoint record {} signs seq {}, which no given file holds: its hash is not checked",
                    rec.seq,
                    signed.map_or_else(|| "?".into(), |s| s.to_string())
                );
            }
            Err(e) => bad.push(format!("{file}:{line}: {e}")),
        }
    }
    println!(
        "checkpoints: {} found, key {}, {} bad",
        seen.len(),
        key.id(),
        bad.len()
    );
    let Some((n, record, time)) = best else {
        println!("no checkpoint holds: completeness is not proven");
        return bad;
    };
    // Proved from the record after the last gap below n (seq 1 when nothing is missing).
    let from = chain
        .missing
        .iter()
        .filter(|(a, _)| *a <= n)
        .map(|(_, b)| b.saturating_add(1))
        .max()
        .unwrap_or(1);
    let after = chain
        .head
        .as_ref()
        .map_or(0, |h| h.seq.saturating_sub(record));
    if from == 1 {
        println!("complete through seq {n} (checkpoint at {time})");
    } else {
        println!(
            "records {from}..{n} complete through seq {n} (checkpoint at {time}); records 1..{} are in no given file",
            from - 1
        );
    }
    println!("{after} record(s) follow the last checkpoint (record {record}): not yet signed");
    bad
}

/// `audit export`: the exact lines from the first record at or after `since` to the end.
/// Contiguous from there (a record with an earlier time after it, a clock stepped back, is
/// kept), so the export verifies as a part of the chain.
pub(super) fn export(
    since: &str,
    log: &std::path::Path,
    out: Option<&std::path::Path>,
) -> ExitCode {
    let since = match parse_since(since) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("--since {since}: {e}");
            return ExitCode::from(2);
        }
    };
    // The whole chain first: never hand an auditor lines of a broken log without saying so.
    if let Err(e) = audit::verify(log) {
        eprintln!("{e}");
        eprintln!("not exported: the audit log's chain is broken");
        return ExitCode::FAILURE;
    }
    let written = match out {
        None => export_to(log, since, &mut std::io::stdout().lock()),
        Some(path) => {
            let tmp = path.with_extension("export-tmp");
            let r = std::fs::File::create(&tmp)
                .and_then(|f| {
                    let mut w = std::io::BufWriter::new(f);
                    let n = export_to(log, since, &mut w)?;
                    let f = w
                        .into_inner()
                        .map_err(std::io::IntoInnerError::into_error)?;
                    f.sync_all()?;
                    Ok(n)
                })
                .and_then(|n| std::fs::rename(&tmp, path).map(|()| n));
            if r.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            r
        }
    };
    match written {
        Ok((n, first)) => {
            match first {
                Some(f) => eprintln!("{n} records exported (seq {f}..{})", f + (n - 1)),
                None => eprintln!("no record at or after {since}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot export: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Copies the whole lines from the first record at or after `since`; (count, first seq).
fn export_to(
    log: &std::path::Path,
    since: jiff::Timestamp,
    w: &mut dyn std::io::Write,
) -> std::io::Result<(u64, Option<u64>)> {
    use std::io::BufRead;
    let mut r = std::io::BufReader::new(std::fs::File::open(log)?);
    let (mut n, mut first, mut buf) = (0u64, None, Vec::new());
    loop {
        buf.clear();
        if r.read_until(b'\n', &mut buf)? == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        if first.is_none() {
            let Ok(rec) = serde_json::from_slice::<audit::Record>(&buf[..buf.len() - 1]) else {
                continue;
            };
            if rec.time < since {
                continue;
            }
            first = Some(rec.seq);
        }
        w.write_all(&buf)?;
        n += 1;
    }
    w.flush()?;
    Ok((n, first))
}

/// An RFC 3339 time, or a span (`30d`, `12h`) back from now.
fn parse_since(s: &str) -> Result<jiff::Timestamp, String> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    let span = humantime::parse_duration(s)
        .map_err(|e| format!("neither an RFC 3339 time nor a span like `30d`: {e}"))?;
    let span = jiff::SignedDuration::try_from(span).map_err(|e| e.to_string())?;
    jiff::Timestamp::now()
        .checked_sub(span)
        .map_err(|e| e.to_string())
}

fn verify_one(file: &std::path::Path) -> ExitCode {
    match audit::verify(file) {
        Ok(v) => {
            println!("{}: {} records, chain intact", file.display(), v.records);
            if let Some(n) = v.torn_tail {
                println!(
                    "{}: torn last line ({n} bytes): a write cut short by a crash; failoverd removes it (and records that) when it next opens the log",
                    file.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

pub(super) async fn plan(
    path: &std::path::Path,
    store: &StoreSpec,
    failback: bool,
    target: Option<usize>,
) -> anyhow::Result<()> {
    let loaded = playbook::load_file(path).map_err(|p| anyhow::anyhow!("{}", Problems(p)))?;
    let pb = &loaded.playbook;
    let (name, mut vs) = match store {
        StoreSpec::File(dir) => {
            let file = FileStore::new(dir).path(pb);
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let name = file.display().to_string();
            let vs: serde_json::Value = serde_saphyr::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}", playbook::yaml_problem(&name, &e)))?;
            (name, vs)
        }
        StoreSpec::Kubernetes(options) => {
            let store = crate::routing::kube::KubeStore::connect(options.clone()).await?;
            let vs = store.object(pb).await?;
            (format!("kubernetes:{}", pb.spec.virtual_service), vs)
        }
    };
    if let StoreSpec::File(dir) = store {
        print_fence(pb, dir);
    }
    let text = serde_saphyr::to_string(&vs)?;
    let current = routing::view(&vs, pb)?;
    let to = if failback {
        Routing::Primary
    } else {
        let t = target.unwrap_or(0);
        if pb.destination(playbook::Target::Failover(t)).is_none() {
            anyhow::bail!("failover[{t}] does not exist in {}", path.display());
        }
        Routing::Failover { target: t }
    };
    routing::apply(&mut vs, pb, to, None)?;
    let before = serde_saphyr::to_string(&serde_saphyr::from_str::<serde_json::Value>(&text)?)?;
    let after = serde_saphyr::to_string(&vs)?;
    println!("# playbook {}: {} -> {to}", pb.name(), current.routing);
    if !failback {
        println!(
            "# at run time the first failover target known healthy wins; this plans failover[{}]",
            target.unwrap_or(0)
        );
    }
    if before == after {
        println!("# no change: the store already holds this routing");
        return Ok(());
    }
    let diff = similar::TextDiff::from_lines(&before, &after);
    print!(
        "{}",
        diff.unified_diff().context_radius(3).header(&name, &name)
    );
    Ok(())
}

/// `plan` on the file store: each target's jurisdiction and mesh-policy verdict from
/// `<store>/_cluster/`, judged by the playbook's own `spec.residency` (the daemon's set is not
/// known here) and strict mTLS.
fn print_fence(pb: &playbook::Playbook, dir: &std::path::Path) {
    if !dir.join("_cluster").is_dir() {
        return;
    }
    let view = match crate::mesh::read_file_store(dir) {
        Ok(v) => v,
        Err(e) => {
            println!(
                "# residency and policy: cannot read {}/_cluster: {e}",
                dir.display()
            );
            return;
        }
    };
    let fence = crate::mesh::Fence {
        allowed: pb
            .allowed_jurisdictions(None)
            .map(|v| v.into_iter().collect()),
        require_strict_mtls: true,
    };
    println!("# residency and policy (from {}/_cluster):", dir.display());
    for (target, d) in pb.destinations() {
        let v = crate::mesh::judge_destination(&view, pb, d, &fence);
        let verdict = v
            .violation
            .map_or_else(|| "allowed".to_string(), |r| format!("REFUSED: {r}"));
        println!(
            "#   {target} {}: jurisdiction {}; {verdict} ({})",
            v.host,
            v.jurisdiction.as_deref().unwrap_or("unknown"),
            v.detail
        );
    }
}
