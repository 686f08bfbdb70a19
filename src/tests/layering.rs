//! The modules of src/ depend in one direction: each may use only modules of a lower layer
//! (docs/architecture.md). Read from the sources, so a new `use crate::...` that points up
//! or sideways fails here.

/// Bottom to top. Pure modules, then infrastructure, the job queue, the batch engine, and the
/// three entry points (SQL API, trigger, worker loop), which never use each other.
const LAYERS: &[&[&str]] = &[
    &["paths", "window", "unicode_tables"],
    &["python", "value"],
    &["render", "extract"],
    &["jsonb"],
    &["jsontext"],
    &["error", "subxact", "privilege", "settings"],
    &["query", "wake"],
    &["tables"],
    &["job", "coverage"],
    &["engine"],
    &["api", "preview", "trigger", "worker", "launcher"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The modules `source` names as `crate::NAME`.
fn uses(source: &str) -> Vec<String> {
    let mut found: Vec<String> = source
        .match_indices("crate::")
        .map(|(at, prefix)| {
            source[at + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

/// The source files of a module: `src/NAME.rs`, or every `.rs` file below the folder
/// `src/NAME/`.
fn sources(path: &std::path::Path) -> Vec<std::path::PathBuf> {
    if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .flat_map(|entry| sources(&entry.unwrap().path()))
            .collect();
        files.sort();
        files
    } else if path.extension().is_some_and(|e| e == "rs") {
        vec![path.to_owned()]
    } else {
        Vec::new()
    }
}

#[test]
fn modules_use_only_lower_layers() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let Some(module) = path.file_stem().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        // The crate root, and the tests (which may reach anywhere).
        if module == "lib" || module == "tests" {
            continue;
        }
        let files = sources(&path);
        if files.is_empty() {
            continue;
        }
        let layer = layer_of(&module)
            .unwrap_or_else(|| panic!("src/{module} is in no layer of LAYERS: place it"));
        for file in files {
            let source = std::fs::read_to_string(&file).unwrap();
            // Test code of a module may reach anywhere; only the module itself counts.
            let code = source.split("#[cfg(test)]").next().unwrap_or(&source);
            for used in uses(code).into_iter().filter(|used| *used != module) {
                let used_layer = layer_of(&used).unwrap_or_else(|| {
                    panic!("{} uses crate::{used}, in no layer", file.display())
                });
                assert!(
                    used_layer < layer,
                    "{} (module {module}, layer {layer}) uses crate::{used} (layer {used_layer}): \
                     dependencies point down only",
                    file.display()
                );
            }
        }
        seen.push(module);
    }
    assert!(seen.len() >= 15, "read only {seen:?}");
    assert!(
        seen.iter().any(|m| m == "job"),
        "the folder src/job/ was read: {seen:?}"
    );
}

#[test]
fn the_use_scanner_finds_what_it_should() {
    assert_eq!(
        uses("use crate::engine::{self, Batch};\nlet x = crate::wake::sleep(d);"),
        ["engine", "wake"]
    );
}
