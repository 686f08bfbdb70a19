//! The folders of src/ are the layers (docs/architecture.md): each may use only folders of a
//! lower layer, and inside a folder each file only files of a lower rank in it. Read from the
//! sources, so a new `use crate::...` or `super::...` that points up or sideways fails here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bottom to top: pure code, infrastructure, shared memory, the job queue, the batch engine,
/// and the entry points (SQL API; background workers), which never use each other.
const FOLDERS: &[&[&str]] = &[
    &["extract"],
    &["pg"],
    &["shmem"],
    &["job"],
    &["batch"],
    &["sql_api", "bgw"],
];

/// Each folder's files, bottom to top.
const FILES: &[(&str, &[&[&str]])] = &[
    (
        "extract",
        &[
            &["paths", "unicode_tables", "value"],
            &["python", "lexer", "document"],
            &["render"],
            &["found"],
            &["jsonb", "jsontext"],
        ],
    ),
    (
        "pg",
        &[
            &["error", "privilege", "subxact", "window"],
            &["settings", "query"],
            &["citus", "table_code", "version"],
            &["tables"],
            &["table_owners", "table_checks"],
        ],
    ),
    (
        "shmem",
        &[
            &["registry", "latch", "load"],
            &["turn", "lock_notes", "version_notes"],
            &["slots"],
            &["requests", "diagnostics"],
        ],
    ),
    (
        "job",
        &[
            &["state", "path", "claim", "active_hours"],
            &["store"],
            &["queue"],
        ],
    ),
    (
        "batch",
        &[
            &["coverage", "failure", "fast_path", "runner", "statements"],
            &["tables", "job_row", "batch_of"],
            &["finish", "distributed"],
            &["start", "run"],
        ],
    ),
    (
        "sql_api",
        &[
            &["attach", "catch_up", "extraction", "jobs", "preview", "run"],
            &["trigger"],
        ],
    ),
    (
        "bgw",
        &[
            &["launcher", "lock_waits", "session", "throttle", "trouble"],
            &["holds"],
            &["drain"],
            &["worker"],
        ],
    ),
];

fn folder_layer(folder: &str) -> Option<usize> {
    FOLDERS.iter().position(|layer| layer.contains(&folder))
}

fn file_rank(folder: &str, file: &str) -> Option<usize> {
    let (_, ranks) = FILES.iter().find(|(f, _)| *f == folder)?;
    ranks.iter().position(|rank| rank.contains(&file))
}

/// What `source` names: `crate::FOLDER` (with the file after it when there is one, as
/// `crate::FOLDER::FILE`), and `super::FILE`.
fn uses(source: &str) -> Vec<(Option<String>, String)> {
    let name = |at: &str| -> String {
        at.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    for (at, prefix) in source.match_indices("crate::") {
        // `pub(in crate::pg)` says who may see an item, not what it uses.
        if source[..at].ends_with("(in ") {
            continue;
        }
        let rest = &source[at + prefix.len()..];
        let folder = name(rest);
        let file = rest[folder.len()..]
            .strip_prefix("::")
            .map(name)
            .unwrap_or_default();
        found.push((Some(folder), file));
    }
    for (at, prefix) in source.match_indices("super::") {
        found.push((None, name(&source[at + prefix.len()..])));
    }
    found.sort();
    found.dedup();
    found
}

/// The source files of src/ by folder, the tests and lib.rs aside.
fn folders() -> BTreeMap<String, Vec<PathBuf>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name == "lib.rs" || name == "tests" {
            continue;
        }
        assert!(
            path.is_dir(),
            "src/{name} is outside the folders: every module belongs to a layer's folder"
        );
        let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect();
        files.sort();
        found.insert(name, files);
    }
    found
}

#[test]
fn folders_and_files_use_only_lower_layers() {
    let folders = folders();
    assert!(folders.len() >= 7, "read only {:?}", folders.keys());
    for (folder, files) in &folders {
        let layer = folder_layer(folder)
            .unwrap_or_else(|| panic!("src/{folder}/ is in no layer of FOLDERS: place it"));
        for path in files {
            let file = path.file_stem().unwrap().to_str().unwrap();
            let source = std::fs::read_to_string(path).unwrap();
            // Test code of a module may reach anywhere; only the module itself counts.
            let code = source.split("#[cfg(test)]").next().unwrap_or(&source);
            if file == "mod" {
                continue;
            }
            let rank = file_rank(folder, file)
                .unwrap_or_else(|| panic!("src/{folder}/{file}.rs has no rank in FILES: place it"));
            for (used_folder, used_file) in uses(code) {
                let here = format!("src/{folder}/{file}.rs");
                match used_folder {
                    Some(other) if other != *folder => {
                        let other_layer = folder_layer(&other)
                            .unwrap_or_else(|| panic!("{here} uses crate::{other}, in no layer"));
                        assert!(
                            other_layer < layer,
                            "{here} (layer {layer}) uses crate::{other} (layer {other_layer}): \
                             dependencies point down only"
                        );
                    }
                    _ => {
                        let used_rank = file_rank(folder, &used_file).unwrap_or_else(|| {
                            panic!(
                                "{here} uses {used_file} of its own folder, which is no file of it"
                            )
                        });
                        assert!(
                            used_rank < rank,
                            "{here} (rank {rank}) uses {folder}/{used_file} (rank {used_rank}): \
                             inside a folder too, dependencies point down only"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn every_file_is_placed_and_every_placed_file_exists() {
    let folders = folders();
    for (folder, ranks) in FILES {
        let files = &folders[*folder];
        for file in ranks.iter().flat_map(|rank| rank.iter()) {
            assert!(
                files.iter().any(|p| p.file_stem().unwrap() == *file),
                "FILES names src/{folder}/{file}.rs, which is not there"
            );
        }
    }
}

#[test]
fn the_use_scanner_finds_what_it_should() {
    assert_eq!(
        uses(
            "use crate::batch::{self, Batch};\nlet x = crate::shmem::sleep(d);\n\
             use super::store::X;\npub(in crate::pg) fn f() {}"
        ),
        [
            (None, "store".to_owned()),
            (Some("batch".to_owned()), String::new()),
            (Some("shmem".to_owned()), "sleep".to_owned()),
        ]
    );
}
