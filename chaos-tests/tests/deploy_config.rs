//! The wiring in `deploy/`: mounts match the config file's paths, the config file and the
//! playbooks load in failoverd itself, the container arguments parse with failoverd's own
//! CLI; the Dockerfile builds locked and runs as non-root. Shared rendering: `support::deploy`.

use clap::Parser as _;
use serde_json::{Value, json};

mod support;

use support::deploy::{
    arr, config_map, kind, name, ns, playbooks_of, renders, root, s, strs, workload, write_data,
};

/// The config file, the playbooks and the container arguments are what failoverd accepts,
/// and the paths in the config file are where the volumes are mounted.
#[test]
fn config_and_playbooks_load_in_failoverd() {
    let renders = renders();
    for r in renders {
        let who = &r.name;
        let (w, tpl) = workload(r);
        let c = &tpl["spec"]["containers"][0];
        let mounts = arr(c.get("volumeMounts"));
        let volumes = arr(tpl.pointer("/spec/volumes"));
        // The mount (path, volume) that holds `path`.
        let mount_of = |path: &str| -> (&str, &str, bool) {
            let m = mounts
                .iter()
                .filter(|m| path.starts_with(&format!("{}/", s(m, "/mountPath"))))
                .max_by_key(|m| s(m, "/mountPath").len())
                .unwrap_or_else(|| panic!("{who}: nothing mounted at {path}"));
            (
                s(m, "/mountPath"),
                s(m, "/name"),
                m["readOnly"] == json!(true),
            )
        };
        let volume = |vol: &str| volumes.iter().find(|v| s(v, "/name") == vol);

        // Container arguments: failoverd's own CLI parses them.
        let mut argv = vec!["failoverd".to_string()];
        argv.extend(strs(c.get("args")).into_iter().map(String::from));
        failoverd::cli::Cli::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("{who}: container args {argv:?}: {e}"));
        let config_path = argv
            .windows(2)
            .find(|a| a[0] == "--config")
            .map(|a| a[1].clone())
            .expect("--config in the args");

        // The config file comes from the config ConfigMap at that path, and loads.
        let (mount, vol, ro) = mount_of(&config_path);
        assert!(ro, "{who}: config mounted read-only");
        let cm = config_map(r, "failoverd-config");
        assert_eq!(
            volume(vol).map(|v| s(v, "/configMap/name")),
            Some(name(cm)),
            "{who}: {config_path} comes from {}",
            name(cm)
        );
        let key = config_path.trim_start_matches(&format!("{mount}/"));
        let tmp = tempfile::tempdir().expect("tempdir");
        write_data(cm, tmp.path());
        let cfg = failoverd::config::FileConfig::load(&tmp.path().join(key))
            .unwrap_or_else(|e| panic!("{who}: config does not load: {e}"));
        assert_eq!(cfg.store.as_deref(), Some("kubernetes"), "{who}: store");
        // More than one replica must elect a leader: two writers would race on every route.
        let replicas = w
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let election = cfg
            .leader_election
            .as_ref()
            .map(|l| l.resolve(false))
            .transpose()
            .unwrap_or_else(|e| panic!("{who}: leaderElection: {e}"))
            .flatten();
        assert!(
            replicas <= 1 || election.is_some(),
            "{who}: {replicas} replicas without leaderElection.enabled"
        );
        assert_eq!(
            cfg.listen.as_deref(),
            Some("0.0.0.0:8080"),
            "{who}: listen on the container port"
        );

        // Playbooks: the playbooks ConfigMap, read-only.
        let pb = cfg.playbooks.expect("playbooks in the config");
        let (_, vol, ro) = mount_of(&format!("{}/x", pb.display()));
        assert!(ro, "{who}: playbooks read-only");
        assert_eq!(
            volume(vol).map(|v| s(v, "/configMap/name")),
            Some(name(config_map(r, "failoverd-playbooks"))),
            "{who}: playbooks volume"
        );
        // Tokens: a Secret, read-only.
        let tokens = cfg.tokens.expect("tokens in the config");
        let (_, vol, ro) = mount_of(&tokens.display().to_string());
        assert!(
            ro && volume(vol).is_some_and(|v| v.get("secret").is_some()),
            "{who}: tokens from a Secret, read-only"
        );
        // Audit log and override state: on the replica's own persistent volume.
        for (what, p) in [
            ("audit", cfg.audit.expect("audit in the config")),
            ("state", cfg.state.expect("state in the config")),
        ] {
            let (_, vol, ro) = mount_of(&p.display().to_string());
            assert!(!ro, "{who}: {what} writable");
            assert!(
                arr(w.pointer("/spec/volumeClaimTemplates"))
                    .iter()
                    .any(|t| s(t, "/metadata/name") == vol),
                "{who}: {what} on a per-replica PersistentVolumeClaim"
            );
        }

        // Playbooks load in failoverd; each overlay copy equals its source in playbooks/;
        // failoverd may rewrite VirtualServices in each guarded namespace.
        let loaded = playbooks_of(r);
        if r.name.contains("example") || r.name == "deploy" {
            assert!(!loaded.is_empty(), "{who}: the example has playbooks");
        }
        let cm = config_map(r, "failoverd-playbooks");
        for (k, v) in cm
            .get("data")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let source = root().join("playbooks").join(k);
            let source = std::fs::read_to_string(&source)
                .unwrap_or_else(|e| panic!("{who}: {k} has no source in playbooks/: {e}"));
            assert_eq!(
                v.as_str(),
                Some(source.as_str()),
                "{who}: {k} differs from playbooks/{k}; copy it again"
            );
        }
        let sa_ns = ns(w);
        for p in &loaded {
            let vs_ns = &p.playbook.spec.virtual_service.namespace;
            let bound = r.objects.iter().any(|b| {
                (kind(b) == "ClusterRoleBinding" || (kind(b) == "RoleBinding" && ns(b) == vs_ns))
                    && s(b, "/roleRef/name") == "failoverd-virtualservices"
                    && arr(b.get("subjects"))
                        .iter()
                        .any(|sub| s(sub, "/namespace") == sa_ns)
            });
            assert!(
                bound,
                "{who}: playbook {} rewrites a VirtualService in {vs_ns}, but no RoleBinding there",
                p.file.display()
            );
        }
    }
}

/// What the manifests assume about the image: it runs as 65532, built from the lock file.
#[test]
fn dockerfile_builds_locked_and_runs_non_root() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile at the root");
    let stages: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let runtime = stages.last().copied().unwrap_or_default();
    // The binary links glibc (x86_64-unknown-linux-gnu): distroless `static` has none.
    assert!(
        runtime.contains("distroless/cc-debian12:nonroot"),
        "runtime image: {runtime}"
    );
    assert!(
        text.contains("cargo build --release -p failoverd --locked"),
        "locked release build"
    );
    assert!(text.contains("USER 65532:65532"), "non-root user");
    let builder = stages[0];
    assert!(
        builder.contains("rust:1.95") && builder.contains("bookworm"),
        "builder on Debian 12 like the runtime (glibc): {builder}"
    );
}
