//! `failoverd plan PATH --drill NAME`: the exact VirtualService a fault drill's fault would
//! write, for each playbook of the drill, as a diff of the object in the store. Nothing is
//! written.

use std::path::Path;

use crate::playbook;
use crate::routing::fault::add_fault;
use crate::routing::{FileStore, istio};

use super::StoreSpec;

/// The run id shown in a plan: a real run writes its own (`dr-<unix seconds>-<hex>`).
pub const PLAN_RUN_ID: &str = "dr-plan";

pub(super) async fn plan_drill(path: &Path, store: &StoreSpec, drill: &str) -> anyhow::Result<()> {
    let paths = vec![path.to_path_buf()];
    let loaded = playbook::load_paths(&paths).map_err(|p| anyhow::anyhow!("{p}"))?;
    let drills =
        crate::drill::spec::load_paths(&paths, &loaded).map_err(|p| anyhow::anyhow!("{p}"))?;
    let def = drills.iter().find(|d| d.name() == drill).ok_or_else(|| {
        let known: Vec<&str> = drills.iter().map(|d| d.name()).collect();
        anyhow::anyhow!(
            "no drill named `{drill}` under {} (known: {})",
            path.display(),
            known.join(", ")
        )
    })?;
    let Some(inject) = def.drill.spec.inject.as_ref() else {
        anyhow::bail!(
            "drill `{drill}` ({}) has no spec.inject: it writes no fault (plan its playbooks' failover with `failoverd plan PLAYBOOK`)",
            def.file.display()
        );
    };
    for name in def.playbooks() {
        let pb = &loaded
            .iter()
            .find(|l| l.playbook.name() == name)
            .ok_or_else(|| anyhow::anyhow!("playbook `{name}` of drill `{drill}` is not loaded"))?
            .playbook;
        let (label, vs) = match store {
            StoreSpec::File(dir) => {
                let file = FileStore::new(dir).path(pb);
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                let label = file.display().to_string();
                let vs: serde_json::Value = serde_saphyr::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}", playbook::yaml_problem(&label, &e)))?;
                (label, vs)
            }
            StoreSpec::Kubernetes(options) => {
                let store = crate::routing::kube::KubeStore::connect(options.clone()).await?;
                let vs = store.object(pb).await?;
                (format!("kubernetes:{}", pb.spec.virtual_service), vs)
            }
        };
        let mut after = vs.clone();
        add_fault(&mut after, pb, PLAN_RUN_ID, &inject.value)?;
        if let Err(v) = istio::validate_virtual_service(&after) {
            anyhow::bail!(
                "the fault would make an invalid VirtualService: {}",
                v.join("; ")
            );
        }
        let before = serde_saphyr::to_string(&vs)?;
        let after_text = serde_saphyr::to_string(&after)?;
        println!(
            "# drill {drill}, playbook {name}: the fault a run writes (run id `{PLAN_RUN_ID}` here; a run uses its own), scope {}",
            format!("{:?}", inject.value.scope.value).to_lowercase()
        );
        let diff = similar::TextDiff::from_lines(&before, &after_text);
        print!(
            "{}",
            diff.unified_diff().context_radius(3).header(&label, &label)
        );
        println!("# the VirtualService with the fault:");
        print!("{after_text}");
    }
    Ok(())
}
