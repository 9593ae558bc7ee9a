//! The one gate for the whole configuration set.
//!
//! Start (`failoverd run`), reload (the playbook watcher) and `failoverd validate --config`
//! all go through [`check`], so a set that passes here is a set `run` accepts: a reload
//! never drains and re-executes into a configuration the new process would refuse.
//!
//! Every file is screened before any loader parses it (see [`crate::screen`]).

use std::path::{Path, PathBuf};

use crate::auth::Tokens;
use crate::config::{Settings, StoreSpec};
use crate::drill::LoadedDrill;
use crate::notify::Resolved;
use crate::playbook::{self, Loaded, Problem, Problems};
pub use crate::screen::{MAX_FILE_BYTES, files, read_regular, read_text, screen_yaml};
use crate::screen::{kind, position, problem, screen_paths};

mod fence;
pub use fence::unreachable_targets;

/// Everything `run` needs from the configuration set, checked.
#[derive(Debug)]
pub struct ValidSet {
    /// The playbooks (never empty).
    pub playbooks: Vec<Loaded>,
    /// The drills, each naming loaded playbooks only.
    pub drills: Vec<LoadedDrill>,
    /// The token file's callers (none configured: every protected call is refused).
    pub tokens: Tokens,
    /// The notification sinks, resolved (secret files read).
    pub notify: Option<Resolved>,
}

/// Playbooks and drills under `paths`, the way `failoverd validate PATH...` checks them: the
/// screen, every playbook, every drill against those playbooks. No SLO or drill server
/// check (with no config there is no default Prometheus to judge them by).
pub fn check_paths(paths: &[PathBuf]) -> Result<(Vec<Loaded>, Vec<LoadedDrill>), Problems> {
    let screened = screen_paths(paths);
    if !screened.is_empty() {
        return Err(Problems(screened));
    }
    let loaded = playbook::load_paths(paths)?;
    let drills = crate::drill::spec::load_paths(paths, &loaded)?;
    Ok((loaded, drills))
}

/// The whole configuration set as `run` needs it: playbooks (at least one), drills (each
/// naming loaded playbooks), every Prometheus SLO and drill error budget with a server, the
/// file store's directory or the `kubernetes` store's kubeconfig (and context), the token
/// file and the notification sinks (URLs, templates, secret files). The config file's own
/// keys are checked when [`Settings`] are built (`RunArgs::checked_settings`).
///
/// A set whose files do not screen or load is refused with those problems alone (nothing
/// else can be judged on it); otherwise every remaining problem is returned together.
pub fn check(settings: &Settings) -> Result<ValidSet, Problems> {
    let (mut playbooks, drills) = check_paths(&settings.playbooks)?;
    let mut problems = Vec::new();
    let daemon_allowed = settings.fence.allowed.as_deref();
    for l in &mut playbooks {
        let file = l.file.display().to_string();
        problems.extend(l.playbook.residency_within(&file, daemon_allowed));
        // Fenced by the daemon's rules or its own: every target then needs the cluster's
        // word before traffic may go there.
        l.playbook.fenced = settings.fence.is_set() || l.playbook.spec.residency.is_some();
    }
    if playbooks.is_empty() {
        let dir = settings
            .playbooks
            .first()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        problems.push(problem(
            &dir,
            0,
            0,
            "",
            "no playbooks here: failoverd needs at least one".into(),
        ));
    }
    let default = settings.prometheus.as_deref();
    for l in &playbooks {
        for (i, s) in l.playbook.spec.slos.iter().enumerate() {
            if crate::slo::needs_server(s) && crate::slo::server_for(s, default).is_none() {
                problems.push(problem(
                    l.file.display().to_string(),
                    s.name.referenced.line(),
                    s.name.referenced.column(),
                    &format!("spec.slos[{i}].server"),
                    format!(
                        "playbook `{}` SLO `{}` has no Prometheus server: set `server:` or pass --prometheus URL",
                        l.playbook.name(),
                        s.name.value
                    ),
                ));
            }
        }
    }
    problems.extend(crate::drill::spec::check_servers(&drills, default));
    if let StoreSpec::File(dir) = &settings.store
        && !dir.is_dir()
    {
        let mut p = config_problem(
            settings.config.as_deref(),
            "store",
            format!("store directory {} does not exist", dir.display()),
        );
        if p.line == 0 {
            // Not in the config file: it came from the flag.
            p.file = "--store".into();
        }
        problems.push(p);
    }
    // The kubeconfig the `kubernetes` store would load (read and parsed only; the cluster
    // is not contacted, so an API server outage never refuses a reload).
    if let StoreSpec::Kubernetes(o) = &settings.store
        && let Some(path) = &o.kubeconfig
    {
        let file = path.display().to_string();
        match read_text(path).map(|_| kube::config::Kubeconfig::read_from(path)) {
            Err(p) => problems.push(p),
            Ok(Err(e)) => {
                problems.push(problem(&file, 0, 0, "", format!("invalid kubeconfig: {e}")))
            }
            Ok(Ok(k)) => {
                if let Some(ctx) = &o.context
                    && !k.contexts.iter().any(|c| &c.name == ctx)
                {
                    problems.push(problem(
                        &file,
                        0,
                        0,
                        "contexts",
                        format!("no context `{ctx}` in this kubeconfig"),
                    ));
                }
            }
        }
    }
    if let Some(n) = settings.write_concurrency
        && !crate::shared::WRITE_CONCURRENCY_RANGE.contains(&n)
    {
        let mut p = config_problem(
            settings.config.as_deref(),
            "writeConcurrency",
            format!(
                "writeConcurrency is {n}: it must be between {} and {} (routing writes in flight at once; default {})",
                crate::shared::WRITE_CONCURRENCY_RANGE.start(),
                crate::shared::WRITE_CONCURRENCY_RANGE.end(),
                crate::shared::DEFAULT_WRITE_CONCURRENCY
            ),
        );
        if p.line == 0 {
            // Not in the config file: it came from the flag.
            p.file = "--write-concurrency".into();
        }
        problems.push(p);
    }
    // The API listener's certificate and key, loaded as the start would load them (a pair
    // that does not load refuses the start, so it must refuse the reload too).
    if let Some(files) = &settings.tls
        && let Err(e) =
            crate::tls::server_config_with(files.clone(), settings.tls_client_ca.as_deref())
    {
        let mut p = config_problem(settings.config.as_deref(), "tls", e);
        if p.line == 0 {
            p.file = "--tls-cert".into();
        }
        problems.push(p);
    }
    if settings.tls_client_ca.is_some() && settings.tls.is_none() {
        let mut p = config_problem(
            settings.config.as_deref(),
            "tls",
            "tls.clientCAFile needs tls.certFile and tls.keyFile: client certificates are presented over HTTPS".into(),
        );
        if p.line == 0 {
            p.file = "--tls-client-ca".into();
        }
        problems.push(p);
    }
    let tokens = match &settings.tokens {
        None => Some(Tokens::none()),
        Some(path) => match read_text(path).and_then(|_| Tokens::load(path)) {
            Ok(t) => Some(t),
            Err(p) => {
                problems.push(p);
                None
            }
        },
    };
    let notify = match &settings.notify {
        None => Some(None),
        Some(n) => match n.resolve() {
            Ok(r) => Some(Some(r)),
            Err(e) => {
                problems.push(config_problem(
                    settings.config.as_deref(),
                    &e.field,
                    e.message,
                ));
                None
            }
        },
    };
    match (tokens, notify) {
        (Some(tokens), Some(notify)) if problems.is_empty() => Ok(ValidSet {
            playbooks,
            drills,
            tokens,
            notify,
        }),
        _ => Err(Problems(problems)),
    }
}

/// What a restart into `new` would still refuse that [`check`] cannot judge while `running`
/// holds the same resources: a changed listen address that cannot be bound, a changed
/// audit log whose chain is broken, a changed override state file that is corrupt. The
/// reload gate adds these, so a config edit that passes [`check`] but would fail at the
/// re-executed start is refused before the drain.
pub fn check_restart(running: &Settings, new: &Settings) -> Vec<Problem> {
    let cfg = new.config.as_deref();
    let mut problems = Vec::new();
    if new.listen != running.listen
        && let Err(e) = std::net::TcpListener::bind(new.listen)
    {
        problems.push(config_problem(
            cfg,
            "listen",
            format!("cannot listen on {}: {e}", new.listen),
        ));
    }
    // Both are read whole by their openers; anything but a regular file is refused first
    // (a FIFO would block the gate). Their size is not capped here: a long audit log is
    // normal.
    let special = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .filter(|m| !m.is_file())
            .map(|m| format!("{}: not a regular file ({})", p.display(), kind(&m)))
    };
    let mut unreadable = Vec::new();
    for (key, old, new) in [
        ("audit", &running.audit, &new.audit),
        ("state", &running.state, &new.state),
    ] {
        if new != old
            && let Some(m) = special(new)
        {
            unreadable.push(config_problem(cfg, key, m));
        }
    }
    if !unreadable.is_empty() {
        problems.extend(unreadable);
        return problems;
    }
    if new.audit != running.audit
        && new.audit.exists()
        && let Err(e) = crate::audit::verify(&new.audit)
    {
        problems.push(config_problem(
            cfg,
            "audit",
            format!("the audit log {} would not open: {e}", new.audit.display()),
        ));
    }
    if new.state != running.state
        && let Err(e) = crate::overrides::OverrideStore::open(&new.state)
    {
        problems.push(config_problem(cfg, "state", format!("{e:#}")));
    }
    problems
}

/// The files the config file names besides playbooks (webhook secrets, Prometheus client
/// credentials and CA, the kubeconfig), each checked to be a regular file before anything
/// reads it: their readers would block on a FIFO (the reload gate with them). A missing
/// file is left to its reader, which names it in its own words.
pub fn screen_named_files(file: &crate::config::FileConfig, config: Option<&Path>) -> Vec<Problem> {
    let mut named: Vec<(String, &Path)> = Vec::new();
    if let Some(n) = &file.notify {
        for (i, w) in n.webhooks.iter().enumerate() {
            named.push((format!("notify.webhooks[{i}].secretFile"), &w.secret_file));
        }
    }
    if let Some(c) = &file.prometheus_client {
        if let Some(p) = &c.bearer_token_file {
            named.push(("prometheusClient.bearerTokenFile".into(), p));
        }
        if let Some(p) = &c.ca_file {
            named.push(("prometheusClient.caFile".into(), p));
        }
        if let Some(b) = &c.basic_auth {
            named.push((
                "prometheusClient.basicAuth.passwordFile".into(),
                &b.password_file,
            ));
        }
    }
    if let Some(p) = &file.kubeconfig {
        named.push(("kubeconfig".into(), p));
    }
    named
        .into_iter()
        .filter(|(_, p)| p.exists())
        .filter_map(|(field, p)| {
            read_regular(p)
                .err()
                .map(|m| config_problem(config, &field, format!("{}: {m}", p.display())))
        })
        .collect()
}

/// A problem with a config key (`listen`, `notify.webhooks[0].secretFile`), located in the
/// config file when there is one and the key is found there.
pub fn config_problem(config: Option<&Path>, field: &str, message: String) -> Problem {
    let Some(config) = config else {
        return problem("--config", 0, 0, field, message);
    };
    let (line, column) = read_text(config).map_or((0, 0), |t| locate(&t, field));
    problem(config.display().to_string(), line, column, field, message)
}

/// The tracing problem of a start, if any: located in the config file (`config`), or naming
/// the `OTEL_*` variable it came from.
pub fn tracing_problem(pre: &crate::config::Preloaded, config: Option<&Path>) -> Option<Problem> {
    let e = pre.tracing.as_ref().err()?;
    Some(if e.field.starts_with("OTEL_") || config.is_none() {
        problem(e.field.clone(), 0, 0, &e.field, e.message.clone())
    } else {
        config_problem(config, &e.field, e.message.clone())
    })
}

/// `vantage:` resolved (identity from `POD_NAME`, else the Lease identity); a bad key is a
/// problem located in the config file (the defaults stand in so the other keys are checked).
pub fn vantage(
    file: &crate::config::FileConfig,
    election: Option<&crate::leader::ElectionConfig>,
    config: Option<&Path>,
    problems: &mut Vec<Problem>,
) -> crate::vantage::VantageSettings {
    let raw = file.vantage.clone().unwrap_or_default();
    raw.resolve(election.map(|e| e.identity.as_str()))
        .unwrap_or_else(|e| {
            let (field, message) = e.split_once(": ").unwrap_or(("vantage", e.as_str()));
            problems.push(config_problem(config, field, message.to_string()));
            Default::default()
        })
}

/// 1-based line and column of a dotted field path (`notify.webhooks[1].secretFile`) in a
/// block-style YAML text: each key is searched after its parent, `[i]` steps to the i-th
/// `- ` item of the list. (0, 0) when the first key is not found; otherwise the deepest
/// part found, so a missing key points at its parent.
pub fn locate(text: &str, path: &str) -> (u64, u64) {
    let mut from = 0usize;
    let mut found: Option<usize> = None;
    for seg in path.split('.') {
        let (key, index) = match seg.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        let Some(at) = find_key(text, from, key) else {
            break;
        };
        found = Some(at);
        from = at + key.len();
        if let Some(i) = index {
            match nth_item(text, from, i) {
                Some(item) => {
                    found = Some(item);
                    from = item + 1;
                }
                None => break,
            }
        }
    }
    found.map_or((0, 0), |i| position(&text[..i]))
}

/// Byte offset of `key:` (at the start of a line's content, or after `{`, `,` or `- `) at
/// or after `from`.
fn find_key(text: &str, from: usize, key: &str) -> Option<usize> {
    let mut start = from;
    while let Some(rel) = text.get(start..)?.find(key) {
        let at = start + rel;
        let before = text[..at].trim_end_matches([' ', '\t']);
        let boundary = before.is_empty() || before.ends_with(['\n', '{', ',', '-']);
        let after = text[at + key.len()..].trim_start_matches([' ', '\t']);
        if boundary && after.starts_with(':') {
            return Some(at);
        }
        start = at + key.len();
    }
    None
}

/// Byte offset of the `i`-th (0-based) `- ` item of the list that starts after `from`.
fn nth_item(text: &str, from: usize, i: usize) -> Option<usize> {
    let mut indent: Option<usize> = None;
    let mut seen = 0usize;
    let mut offset = from;
    for line in text.get(from..)?.split_inclusive('\n') {
        let here = offset;
        offset += line.len();
        let content = line.trim_start_matches(' ');
        let depth = line.len() - content.len();
        if !content.starts_with("- ") && content.trim().is_empty() {
            continue;
        }
        if here == from {
            // The rest of the key's own line (a flow list there is not stepped into).
            continue;
        }
        if content.starts_with('-') {
            let d = *indent.get_or_insert(depth);
            if depth == d {
                if seen == i {
                    return Some(here + depth);
                }
                seen += 1;
            }
        } else if indent.is_none_or(|d| depth <= d) && !content.starts_with('#') {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests;
