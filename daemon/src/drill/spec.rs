//! Drill documents at the daemon's edge. The model, parsing and checks are
//! [`failoverd_core::drill::spec`], re-exported here so `crate::drill::spec::...` paths hold;
//! this file adds loading them from files and directories.

use std::path::PathBuf;

pub use failoverd_core::drill::spec::*;

pub use crate::playbook::is_drill_file;
use crate::playbook::{Loaded, Problem, Problems};

/// Loads and checks every Drill under the given files and directories against the loaded
/// playbooks. Like playbooks, the set is all or nothing, and names are unique.
pub fn load_paths(paths: &[PathBuf], playbooks: &[Loaded]) -> Result<Vec<LoadedDrill>, Problems> {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for p in paths {
        crate::playbook::collect_files(p, &mut files, &mut problems);
    }
    // A missing path is the playbook loader's to report; repeated here it would only
    // double the message.
    problems.clear();
    let names: Vec<&str> = playbooks.iter().map(|l| l.playbook.name()).collect();
    let mut loaded: Vec<LoadedDrill> = Vec::new();
    for f in files.iter().filter(|f| is_drill_file(f)) {
        let file = f.display().to_string();
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem {
                    file,
                    line: 0,
                    column: 0,
                    field: String::new(),
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        let drill = match parse(&file, &text) {
            Ok(d) => d,
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        match drill.check(f, &names) {
            Ok(d) => {
                if let Some(first) = loaded.iter().find(|l| l.name() == d.name()) {
                    let n = &d.drill.metadata.name;
                    problems.push(Problem {
                        file,
                        line: n.referenced.line(),
                        column: n.referenced.column(),
                        field: "metadata.name".into(),
                        message: format!(
                            "duplicate drill name `{}` (also in {})",
                            n.value,
                            first.file.display()
                        ),
                    });
                } else {
                    loaded.push(d);
                }
            }
            Err(mut ps) => problems.append(&mut ps),
        }
    }
    if problems.is_empty() {
        Ok(loaded)
    } else {
        Err(Problems(problems))
    }
}
