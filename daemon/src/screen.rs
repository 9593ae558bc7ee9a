//! Reading configuration files safely, before any loader parses them: only regular files
//! (a FIFO would block a reader forever), at most [`MAX_FILE_BYTES`], invalid UTF-8 located,
//! YAML anchors and aliases held to a small budget so an alias bomb ("billion laughs") is
//! refused in milliseconds with bounded memory, and directory walks that cut symlink loops.
//! The gate ([`crate::validate`]), the config loader and the reload watcher all read through
//! here.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::playbook::{self, Problem};

/// Largest configuration file read: playbooks, drills, the config and token files are a few
/// kilobytes; a megabyte is room for a large fleet file and still cheap to hold.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Alias replays allowed in one file. Anchors for shared probe blocks replay a few hundred
/// events; a billion-laughs bomb needs millions. The parser's own default (1,000,000) would
/// let one file cost ~100 MB, most of the daemon's memory limit.
const MAX_REPLAYED_EVENTS: usize = 20_000;

pub(crate) fn problem(
    file: impl Into<String>,
    line: u64,
    column: u64,
    field: &str,
    message: String,
) -> Problem {
    Problem {
        file: file.into(),
        line,
        column,
        field: field.into(),
        message,
    }
}

/// Reads a configuration file that must be a regular file of at most [`MAX_FILE_BYTES`].
///
/// The file is opened non-blocking, so a FIFO or device swapped in never blocks the caller,
/// and its type is checked on the open descriptor (no window between check and read).
pub fn read_regular(path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "cannot read: not a regular file ({}); only regular files are read",
            kind(&meta)
        ));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "file is {} bytes; a configuration file may be at most {MAX_FILE_BYTES}",
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // Bounded even if the file grows while it is read.
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "file grew past {MAX_FILE_BYTES} bytes while being read"
        ));
    }
    Ok(bytes)
}

pub(crate) fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}

/// Reads a configuration file as text: [`read_regular`], then UTF-8 with the first invalid
/// byte located, then the YAML resource screen ([`screen_yaml`]).
pub fn read_text(path: &Path) -> Result<String, Problem> {
    let file = path.display().to_string();
    let bytes = read_regular(path).map_err(|m| problem(&file, 0, 0, "", m))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let good = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let (line, column) = position(&String::from_utf8_lossy(&bytes[..good]));
        problem(
            &file,
            line,
            column,
            "",
            format!(
                "invalid UTF-8 (byte 0x{:02x} at offset {good}); YAML files must be UTF-8",
                bytes.get(good).copied().unwrap_or(0)
            ),
        )
    })?;
    screen_yaml(&file, &text)?;
    Ok(text)
}

/// 1-based line and column just after `before` (columns count characters).
pub(crate) fn position(before: &str) -> (u64, u64) {
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[start..].chars().count() + 1;
    (line as u64, column as u64)
}

/// Walks the YAML once under a tight resource budget. Only resource refusals (alias
/// replay, anchors, nesting, sizes) are reported here; syntax and schema errors are left to
/// the loaders, which word them for the document kind.
pub fn screen_yaml(file: &str, text: &str) -> Result<(), Problem> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_aliases: 2_000,
            max_anchors: 2_000,
            max_recorded_anchor_events: 50_000,
            max_recorded_anchor_bytes: 1024 * 1024,
            max_total_scalar_bytes: 4 * 1024 * 1024,
            max_depth: 64,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_REPLAYED_EVENTS,
            max_replay_stack_depth: 16,
        },
    };
    // Every document of the stream, as the loaders may read more than one kind.
    let Err(e) = serde_saphyr::from_multiple_with_options::<serde::de::IgnoredAny>(text, options)
    else {
        return Ok(());
    };
    let mut inner = &e;
    while let serde_saphyr::Error::WithSnippet { error, .. }
    | serde_saphyr::Error::AliasError { error, .. } = inner
    {
        inner = error;
    }
    use serde_saphyr::Error as E;
    let resource = matches!(
        inner,
        E::Budget { .. }
            | E::AliasReplayCounterOverflow { .. }
            | E::AliasReplayLimitExceeded { .. }
            | E::AliasExpansionLimitExceeded { .. }
            | E::AliasReplayStackDepthExceeded { .. }
    );
    if resource {
        let mut p = playbook::yaml_problem(file, &e);
        let why = inner.to_string();
        let why = why.split(" at line ").next().unwrap_or_default();
        p.message = format!(
            "refused: YAML anchors, aliases or nesting exceed the budget for a configuration file ({why})"
        );
        return Err(p);
    }
    Ok(())
}

/// Every file the loaders read under `paths`, sorted as they read them: each path that is a
/// file, and below each directory every `*.yaml`/`*.yml` file and every folder, skipping
/// hidden entries (a mounted ConfigMap's `..data` farm). A directory that leads back to one
/// of its own ancestors (a symlink loop) is a problem and is not entered: two such links
/// would otherwise make the walk exponential.
pub fn files(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<Problem>) {
    fn walk(
        p: &Path,
        ancestors: &mut Vec<PathBuf>,
        out: &mut Vec<PathBuf>,
        problems: &mut Vec<Problem>,
    ) {
        if !p.is_dir() {
            if p.exists() {
                out.push(p.to_path_buf());
            } else {
                problems.push(problem(
                    p.display().to_string(),
                    0,
                    0,
                    "",
                    "no such file or directory (or a dangling symlink)".into(),
                ));
            }
            return;
        }
        let real = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if ancestors.contains(&real) {
            problems.push(problem(
                p.display().to_string(),
                0,
                0,
                "",
                format!("directory loop: leads back to {}", real.display()),
            ));
            return;
        }
        let entries = match std::fs::read_dir(p) {
            Ok(e) => e,
            Err(e) => {
                problems.push(problem(
                    p.display().to_string(),
                    0,
                    0,
                    "",
                    format!("cannot read directory: {e}"),
                ));
                return;
            }
        };
        let mut ps: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        ps.sort();
        ancestors.push(real);
        for q in ps {
            let hidden = q
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            let yaml = matches!(q.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
            if !hidden && (q.is_dir() || yaml) {
                walk(&q, ancestors, out, problems);
            }
        }
        ancestors.pop();
    }
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for p in paths {
        walk(p, &mut Vec::new(), &mut out, &mut problems);
    }
    (out, problems)
}

/// Every file under the playbook paths that a loader would read, each screened. A missing
/// path, a directory loop, an unreadable or special file, a file too large, invalid UTF-8
/// or a YAML bomb is a problem; nothing else is parsed until these pass.
pub(crate) fn screen_paths(paths: &[PathBuf]) -> Vec<Problem> {
    let (files, mut problems) = files(paths);
    for f in &files {
        if let Err(p) = read_text(f) {
            problems.push(p);
        }
    }
    problems
}
