//! Loading playbooks from files and directories: the I/O around the core's `parse` and
//! `validate_with`, which also runs the probe library's option checks (CA files are read
//! here, where files are loaded, not in the model).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use failoverd_core::manifest;

use super::{Loaded, ObjectRef, Problem, Problems, Validate, parse};

/// Why a file in a playbook directory is not a playbook (None: it is, claims to be, or cannot
/// be read, which `load_file` then reports).
fn foreign_document(path: &Path) -> Option<String> {
    manifest::not_a_playbook(&std::fs::read_to_string(path).ok()?)
}

/// True when the file is a failoverd Drill document (by its `kind`; unreadable: no).
pub fn is_drill_file(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| manifest::is_drill(&t))
}

/// Reads and validates one playbook file.
pub fn load_file(path: &Path) -> Result<Loaded, Vec<Problem>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Problem {
            file: file.clone(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read: {e}"),
        }]
    })?;
    let playbook = parse(&file, &text).map_err(|p| vec![p])?;
    let problems = playbook.validate(&file);
    if problems.is_empty() {
        Ok(Loaded {
            file: path.to_path_buf(),
            playbook,
        })
    } else {
        Err(problems)
    }
}

fn is_yaml(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

pub(crate) fn collect_files(path: &Path, out: &mut Vec<PathBuf>, problems: &mut Vec<Problem>) {
    if path.is_dir() {
        let entries = match std::fs::read_dir(path) {
            Ok(e) => e,
            Err(e) => {
                problems.push(Problem {
                    file: path.display().to_string(),
                    line: 0,
                    column: 0,
                    field: String::new(),
                    message: format!("cannot read directory: {e}"),
                });
                return;
            }
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            // Hidden entries include the `..data` symlink farm of a mounted ConfigMap.
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if p.is_dir() || is_yaml(&p) {
                collect_files(&p, out, problems);
            }
        }
    } else if path.exists() {
        out.push(path.to_path_buf());
    } else {
        problems.push(Problem {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            field: String::new(),
            message: "no such file or directory".into(),
        });
    }
}

/// Loads every playbook under the given files and directories (recursively, `*.yaml`/`*.yml`).
///
/// The set is all or nothing: any problem in any file refuses the whole set, so a half-valid
/// directory never runs. Names must be unique, and no two playbooks may rewrite the same route.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Loaded>, Problems> {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for p in paths {
        collect_files(p, &mut files, &mut problems);
    }
    let mut loaded = Vec::new();
    for f in &files {
        // A directory may hold other manifests (an example VirtualService): only files that
        // say `apiVersion: failoverd.dev/...` are ours. A file named explicitly is always
        // checked. Drills, named or not, are the drill loader's (`crate::drill::spec::load_paths`).
        if is_drill_file(f) {
            continue;
        }
        let explicit = paths.iter().any(|p| p == f);
        if !explicit && let Some(other) = foreign_document(f) {
            tracing::info!(file = %f.display(), "skipped: {other}");
            continue;
        }
        match load_file(f) {
            Ok(l) => loaded.push(l),
            Err(mut ps) => problems.append(&mut ps),
        }
    }
    let mut names: HashMap<String, &Loaded> = HashMap::new();
    let mut routes: HashMap<(ObjectRef, Option<String>), &Loaded> = HashMap::new();
    for l in &loaded {
        let name = &l.playbook.metadata.name;
        if let Some(first) = names.insert(name.value.clone(), l) {
            problems.push(Problem {
                file: l.file.display().to_string(),
                line: name.referenced.line(),
                column: name.referenced.column(),
                field: "metadata.name".into(),
                message: format!(
                    "duplicate playbook name `{}` (also in {})",
                    name.value,
                    first.file.display()
                ),
            });
        }
        let key = (
            l.playbook.spec.virtual_service.clone(),
            l.playbook.spec.route.as_ref().map(|r| r.value.clone()),
        );
        if let Some(first) = routes.insert(key, l) {
            problems.push(Problem {
                file: l.file.display().to_string(),
                line: name.referenced.line(),
                column: name.referenced.column(),
                field: "spec.virtualService".into(),
                message: format!(
                    "playbook `{}` rewrites the same route as `{}` ({}): one route, one owner",
                    name.value,
                    first.playbook.name(),
                    first.file.display()
                ),
            });
        }
    }
    if problems.is_empty() {
        Ok(loaded)
    } else {
        Err(Problems(problems))
    }
}
