#![allow(clippy::unwrap_used)]
use super::*;
use std::net::SocketAddr;

/// A valid playbook guarding `svc`, probing loopback (never contacted here).
const PLAYBOOK: &str = "apiVersion: failoverd.dev/v1alpha1
kind: Playbook
metadata:
  name: svc
spec:
  virtualService: { namespace: ns, name: svc }
  primary: { host: svc.ns.svc.cluster.local }
  failover:
    - host: svc.ns-dr.svc.cluster.local
  probes:
    - name: primary-health
      target: primary
      http: { url: \"http://127.0.0.1:1/healthz\" }
    - name: dr-health
      target: failover[0]
      tcp: { address: \"127.0.0.1:2\" }
  trigger:
    failureThreshold: 3
";

/// A valid plan-mode drill of `svc`.
const DRILL: &str = "apiVersion: failoverd.dev/v1alpha1
kind: Drill
metadata:
  name: nightly
spec:
  playbooks: [ svc ]
  schedule: \"0 15 6 * * *\"
  mode: plan
";

/// A Prometheus SLO with no `server:` of its own.
const SLO: &str = "  slos:
    - name: error-ratio
      target: primary
      prometheus:
        query: vector(0)
        above: 0.05
";

/// A drill error-budget floor with no `server:` of its own.
const BUDGET: &str = "  abort:
    errorBudget:
      query: vector(0)
      objective: 99.5
      floor: 25
";

/// A billion-laughs document: nine levels of nine aliases each.
fn bomb() -> String {
    let mut s = String::from("apiVersion: failoverd.dev/v1alpha1\nkind: Playbook\n");
    s.push_str("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        s.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    s
}

/// 1-based line and column where `needle` starts in `text`.
fn at(text: &str, needle: &str) -> (u64, u64) {
    position(&text[..text.find(needle).unwrap()])
}

/// 1-based line and column of the value written right after `key` in `text`.
fn at_value(text: &str, key: &str) -> (u64, u64) {
    let (line, column) = at(text, key);
    (line, column + key.chars().count() as u64)
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A playbooks directory with the valid playbook and drill, a store directory.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pb/drills")).unwrap();
        std::fs::create_dir_all(dir.path().join("routes")).unwrap();
        std::fs::write(dir.path().join("pb/svc.yaml"), PLAYBOOK).unwrap();
        std::fs::write(dir.path().join("pb/drills/nightly.yaml"), DRILL).unwrap();
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &[u8]) -> PathBuf {
        let p = self.path(rel);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn settings(&self) -> Settings {
        let listen: SocketAddr = ([127, 0, 0, 1], 8080).into();
        Settings {
            config: None,
            playbooks: vec![self.path("pb")],
            store: StoreSpec::File(self.path("routes")),
            listen,
            audit: self.path("audit.jsonl"),
            tokens: None,
            console: Default::default(),
            state: self.path("overrides.json"),
            prometheus: None,
            prometheus_client: None,
            notify: None,
            external_url: "http://127.0.0.1:8080".into(),
            max_concurrent_failovers: 0,
            leader_election: None,
            max_connections: None,
            write_concurrency: None,
            tls: None,
            audit_trail: Default::default(),
            fence: Default::default(),
            kube_auth: None,
            tls_client_ca: None,
            vantage: Default::default(),
        }
    }
}

/// The valid fixture passes, with its playbook and drill.
#[test]
fn valid_set_passes() {
    let f = Fixture::new();
    let set = check(&f.settings()).unwrap();
    assert_eq!(set.playbooks.len(), 1);
    assert_eq!(set.drills.len(), 1);
}

/// Each bad set is refused, and the refusal names the file and the line (and column)
/// of the offending spot: the table's expected location is computed from the fixture
/// text, not from the checker.
#[test]
fn bad_sets_name_file_and_line() {
    type Setup = Box<dyn Fn(&Fixture, &mut Settings) -> (PathBuf, (u64, u64))>;
    let cases: Vec<(&str, Setup)> = vec![
        (
            "bad playbook",
            Box::new(|f, _| {
                let text = PLAYBOOK.replace("failureThreshold: 3", "failureThreshold: 0");
                let p = f.write("pb/svc.yaml", text.as_bytes());
                (p, at_value(&text, "failureThreshold: "))
            }),
        ),
        (
            "bad drill",
            Box::new(|f, _| {
                let text = DRILL.replace("mode: plan", "mode: plan\n  holdd: 2m");
                let p = f.write("pb/drills/nightly.yaml", text.as_bytes());
                (p, at(&text, "holdd"))
            }),
        ),
        (
            "drill naming a missing playbook",
            Box::new(|f, _| {
                let text = DRILL.replace("[ svc ]", "[ svc, ghost ]");
                let p = f.write("pb/drills/nightly.yaml", text.as_bytes());
                (p, at(&text, "ghost"))
            }),
        ),
        (
            "playbook removed under a drill",
            Box::new(|f, _| {
                let other = PLAYBOOK
                    .replace("name: svc", "name: other")
                    .replace("name: svc }", "name: other }");
                f.write("pb/other.yaml", other.as_bytes());
                std::fs::remove_file(f.path("pb/svc.yaml")).unwrap();
                (f.path("pb/drills/nightly.yaml"), at(DRILL, "svc"))
            }),
        ),
        (
            "SLO without a server",
            Box::new(|f, _| {
                let text = format!("{PLAYBOOK}{SLO}");
                let p = f.write("pb/svc.yaml", text.as_bytes());
                (p, at(&text, "error-ratio"))
            }),
        ),
        (
            "drill error budget without a server",
            Box::new(|f, _| {
                let text = format!("{DRILL}{BUDGET}");
                let p = f.write("pb/drills/nightly.yaml", text.as_bytes());
                (p, at(&text, "vector(0)"))
            }),
        ),
        (
            "invalid UTF-8",
            Box::new(|f, _| {
                let mut bytes = PLAYBOOK.as_bytes().to_vec();
                let i = PLAYBOOK.find("name: svc\n").unwrap() + "name: sv".len();
                bytes[i] = 0xff;
                let p = f.write("pb/svc.yaml", &bytes);
                (p, at(PLAYBOOK, "c\nspec:"))
            }),
        ),
        (
            "YAML bomb",
            Box::new(|f, _| {
                let text = bomb();
                let p = f.write("pb/bomb.yaml", text.as_bytes());
                // Refused somewhere in the alias levels: checked below by file only,
                // with a line inside the document.
                (p, (0, 0))
            }),
        ),
        (
            "token file not a list",
            Box::new(|f, s| {
                let text = "identity: alice\n";
                let p = f.write("tokens.yaml", text.as_bytes());
                s.tokens = Some(p.clone());
                (p, (1, 1))
            }),
        ),
        (
            "webhook secret file missing",
            Box::new(|f, s| {
                let secret = f.write("secret", b"k");
                let text = format!(
                    "playbooks: {}\nnotify:\n  webhooks:\n    - name: a\n      url: \"https://hooks.example/x\"\n      secretFile: {}\n    - name: b\n      url: \"https://hooks.example/y\"\n      secretFile: /nonexistent/secret\n",
                    f.path("pb").display(),
                    secret.display()
                );
                let p = f.write("failoverd.yaml", text.as_bytes());
                let cfg: crate::config::FileConfig = serde_saphyr::from_str(&text).unwrap();
                s.config = Some(p.clone());
                s.notify = cfg.notify;
                (p, at(&text, "secretFile: /nonexistent"))
            }),
        ),
        (
            "writeConcurrency out of bounds",
            Box::new(|f, s| {
                let text = format!(
                    "playbooks: {}\nwriteConcurrency: 0\n",
                    f.path("pb").display()
                );
                let p = f.write("failoverd.yaml", text.as_bytes());
                let cfg: crate::config::FileConfig = serde_saphyr::from_str(&text).unwrap();
                s.config = Some(p.clone());
                s.write_concurrency = cfg.write_concurrency;
                (p, at(&text, "writeConcurrency"))
            }),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, setup) in cases {
        let f = Fixture::new();
        let mut s = f.settings();
        let (file, (line, column)) = setup(&f, &mut s);
        let problems = match check(&s) {
            Ok(_) => panic!("{what}: accepted"),
            Err(p) => p,
        };
        let file = file.display().to_string();
        let hit = problems
            .0
            .iter()
            .find(|p| p.file == file)
            .unwrap_or_else(|| panic!("{what}: no problem names {file}: {problems}"));
        if line > 0 {
            if (hit.line, hit.column) != (line, column) {
                wrong.push(format!("{what}: expected {line}:{column}: {problems}"));
            }
        } else if hit.line == 0 {
            wrong.push(format!("{what}: no line: {problems}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `--write-concurrency` outside 1..=256 is refused naming the flag and the bounds; the
/// bounds themselves and the default pass.
#[test]
fn write_concurrency_bounds() {
    let f = Fixture::new();
    for bad in [0, 257, 100_000] {
        let mut s = f.settings();
        s.write_concurrency = Some(bad);
        let problems = check(&s).err().unwrap_or_else(|| panic!("{bad} accepted"));
        let p = problems
            .0
            .iter()
            .find(|p| p.file == "--write-concurrency")
            .unwrap_or_else(|| panic!("{bad}: no problem names the flag: {problems}"));
        assert!(
            p.message.contains(&format!("writeConcurrency is {bad}"))
                && p.message.contains("between 1 and 256"),
            "{p:?}"
        );
    }
    for good in [None, Some(1), Some(16), Some(256)] {
        let mut s = f.settings();
        s.write_concurrency = good;
        assert!(check(&s).is_ok(), "{good:?} refused");
    }
}

/// Files that are not regular, missing or too large are refused by name, without
/// blocking (a FIFO with no writer would block a plain read forever).
#[test]
fn special_files_are_refused_without_blocking() {
    let f = Fixture::new();
    let fifo = f.path("pb/fifo.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let e = check(&f.settings()).unwrap_err();
    assert!(
        e.0.iter()
            .any(|p| p.file == fifo.display().to_string() && p.message.contains("FIFO")),
        "{e}"
    );
    std::fs::remove_file(&fifo).unwrap();

    let dangling = f.path("pb/dangling.yaml");
    std::os::unix::fs::symlink(f.path("nowhere"), &dangling).unwrap();
    let e = check(&f.settings()).unwrap_err();
    assert!(
        e.0.iter().any(|p| p.file == dangling.display().to_string()),
        "{e}"
    );
    std::fs::remove_file(&dangling).unwrap();

    let big = f.write(
        "pb/big.yaml",
        &vec![b'#'; usize::try_from(MAX_FILE_BYTES).unwrap() + 1],
    );
    let e = check(&f.settings()).unwrap_err();
    assert!(
        e.0.iter()
            .any(|p| p.file == big.display().to_string() && p.message.contains("at most")),
        "{e}"
    );
    std::fs::remove_file(&big).unwrap();

    // Two links back to the playbooks directory: a walk that followed them would visit
    // 2^40 directories before the kernel's symlink limit stopped it.
    std::os::unix::fs::symlink(f.path("pb"), f.path("pb/loop-a")).unwrap();
    std::os::unix::fs::symlink(f.path("pb"), f.path("pb/loop-b")).unwrap();
    let e = check(&f.settings()).unwrap_err();
    assert!(
        e.0.iter()
            .any(|p| p.file.ends_with("loop-a") && p.message.contains("directory loop")),
        "{e}"
    );
    assert_eq!(e.0.len(), 2, "one problem per link: {e}");
    std::fs::remove_file(f.path("pb/loop-a")).unwrap();
    std::fs::remove_file(f.path("pb/loop-b")).unwrap();

    std::fs::remove_dir_all(f.path("routes")).unwrap();
    let e = check(&f.settings()).unwrap_err();
    assert!(
        e.to_string().contains("store directory"),
        "missing store directory: {e}"
    );
}

/// The `kubernetes` store's kubeconfig is read and its context looked up (no cluster
/// is contacted): a missing file or an unknown context is refused by file.
#[test]
fn kubeconfig_is_checked_without_a_cluster() {
    let f = Fixture::new();
    let kubeconfig = f.write(
            "kubeconfig",
            b"apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters:\n- name: c\n  cluster: { server: \"https://127.0.0.1:1\" }\nusers:\n- name: u\n  user: { token: t }\ncontexts:\n- name: a\n  context: { cluster: c, user: u }\n",
        );
    let mut s = f.settings();
    let with = |path: &Path, context: Option<&str>| {
        StoreSpec::Kubernetes(crate::routing::kube::KubeOptions::default()).with_kube(
            Some(path.to_path_buf()),
            context.map(String::from),
            None,
            None,
        )
    };
    s.store = with(&kubeconfig, Some("a"));
    check(&s).unwrap();
    s.store = with(&kubeconfig, Some("b"));
    let e = check(&s).unwrap_err();
    assert!(
        e.0.iter()
            .any(|p| p.file == kubeconfig.display().to_string() && p.message.contains("`b`")),
        "{e}"
    );
    let gone = f.path("nope");
    s.store = with(&gone, None);
    let e = check(&s).unwrap_err();
    assert!(
        e.0.iter().any(|p| p.file == gone.display().to_string()),
        "{e}"
    );
}

/// A TLS certificate or key that would not load refuses the set, as it refuses the start;
/// a pair that loads passes.
#[test]
fn tls_files_are_loaded_by_the_gate() {
    let f = Fixture::new();
    let mut s = f.settings();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = f.write("cert.pem", ck.cert.pem().as_bytes());
    let key = f.write("key.pem", ck.signing_key.serialize_pem().as_bytes());
    s.tls = Some(crate::tls::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
    });
    check(&s).unwrap();
    s.tls = Some(crate::tls::TlsFiles {
        cert: f.path("missing.pem"),
        key,
    });
    let e = check(&s).unwrap_err();
    assert!(e.0.iter().any(|p| p.field == "tls"), "{e}");
}

/// A client CA bundle (`tls.clientCAFile`) is loaded by the gate too: one that is missing or
/// holds no certificate refuses the set, and one without `tls` (no HTTPS) is refused.
#[test]
fn client_ca_is_loaded_by_the_gate() {
    let f = Fixture::new();
    let mut s = f.settings();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = f.write("cert.pem", ck.cert.pem().as_bytes());
    let key = f.write("key.pem", ck.signing_key.serialize_pem().as_bytes());
    s.tls_client_ca = Some(cert.clone());
    let e = check(&s).unwrap_err();
    assert!(e.to_string().contains("needs tls.certFile"), "{e}");
    s.tls = Some(crate::tls::TlsFiles {
        cert: cert.clone(),
        key,
    });
    check(&s).unwrap();
    for bad in [f.path("missing.pem"), f.write("empty.pem", b"")] {
        s.tls_client_ca = Some(bad);
        let e = check(&s).unwrap_err();
        assert!(e.to_string().contains("tls.clientCAFile"), "{e}");
    }
}

/// A config edit that passes the set check but would fail the re-executed start is
/// refused at its key: a listen address in use, a broken audit log, a corrupt state file.
/// Unchanged resources (held by the running process) are not re-checked.
#[test]
fn restart_resources_are_checked_when_changed() {
    let f = Fixture::new();
    let running = f.settings();
    assert!(check_restart(&running, &running).is_empty());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let audit = f.write("other-audit.jsonl", b"not a record\n{}\n");
    let state = f.write("other-state.json", b"{ not json");
    let text = format!(
        "listen: {addr}\naudit: {}\nstate: {}\n",
        audit.display(),
        state.display()
    );
    let cfg = f.write("failoverd.yaml", text.as_bytes());
    let mut new = f.settings();
    new.config = Some(cfg.clone());
    new.listen = addr;
    new.audit = audit;
    new.state = state;
    let problems = check_restart(&running, &new);
    let file = cfg.display().to_string();
    // A FIFO at a new state path is refused by type, never opened (it would block).
    let fifo = f.path("state-fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let mut piped = new.clone();
    piped.state = fifo;
    let refused = check_restart(&running, &piped);
    assert!(
        refused
            .iter()
            .any(|p| p.field == "state" && p.message.contains("FIFO")),
        "{refused:?}"
    );
    for (key, needle) in [
        ("listen", "listen:"),
        ("audit", "audit:"),
        ("state", "state:"),
    ] {
        let p = problems
            .iter()
            .find(|p| p.field == key)
            .unwrap_or_else(|| panic!("no {key} problem: {problems:?}"));
        assert_eq!(
            (p.file.as_str(), (p.line, p.column)),
            (file.as_str(), at(&text, needle))
        );
    }
}

/// A directory with no playbook is not a set `run` can start.
#[test]
fn empty_set_is_refused() {
    let f = Fixture::new();
    std::fs::remove_file(f.path("pb/svc.yaml")).unwrap();
    std::fs::remove_file(f.path("pb/drills/nightly.yaml")).unwrap();
    let e = check(&f.settings()).unwrap_err();
    assert!(e.to_string().contains("no playbooks"), "{e}");
}

/// Anchors a real playbook would use (a shared probe block) pass the screen.
#[test]
fn modest_anchors_pass_the_screen() {
    let text = "a: &h { url: \"http://x\" }\nb: [*h, *h, *h, *h]\n";
    screen_yaml("f.yaml", text).unwrap();
    let e = screen_yaml("f.yaml", &bomb()).unwrap_err();
    assert!(e.message.contains("refused"), "{e}");
}

/// `locate` finds nested keys and list items in block YAML.
#[test]
fn locate_finds_nested_fields() {
    let text = "notify:\n  webhooks:\n    - name: a\n      url: u\n    - name: b\n      secretFile: s\nlisten: x\n";
    assert_eq!(locate(text, "listen"), (7, 1));
    assert_eq!(locate(text, "notify.webhooks[1].secretFile"), (6, 7));
    assert_eq!(locate(text, "notify.webhooks[1]"), (5, 5));
    assert_eq!(locate(text, "notify.webhooks[0].url"), (4, 7));
    assert_eq!(locate(text, "nothere"), (0, 0));
}
