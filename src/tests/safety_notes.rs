//! Every `unsafe` in src/ (a block, an `unsafe fn`, an `unsafe impl`, an `unsafe` attribute)
//! says why it holds: a `SAFETY` comment on its line or in the four lines above it, or a
//! `# Safety` doc section.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // The tests may use unsafe freely (none does today).
            if path.file_name().is_some_and(|n| n != "tests") {
                rust_files(&path, found);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The lines of `source` (1-based) whose code (not a comment, not a string) says `unsafe`
/// with no SAFETY note near it.
fn unexplained(source: &str) -> Vec<usize> {
    let lines: Vec<&str> = source.lines().collect();
    let says_unsafe = |line: &str| {
        let code = line.split("//").next().unwrap_or("");
        // Drop string literals (a message may say "unsafe").
        let code: String = code.split('"').step_by(2).collect();
        code.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .any(|word| word == "unsafe")
    };
    (0..lines.len())
        .filter(|&i| says_unsafe(lines[i]))
        .filter(|&i| {
            !lines[i.saturating_sub(4)..=i]
                .iter()
                .any(|l| l.contains("SAFETY") || l.contains("# Safety"))
        })
        .map(|i| i + 1)
        .collect()
}

#[test]
fn every_unsafe_says_why_it_holds() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut missing = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).unwrap();
        for line in unexplained(&source) {
            missing.push(format!("{}:{line}", file.display()));
        }
    }
    assert!(files.len() > 20, "read only {files:?}");
    assert!(
        missing.is_empty(),
        "unsafe without a SAFETY note: {missing:#?}"
    );
}

#[test]
fn the_checker_sees_what_it_should() {
    let source = "fn a() {\n    unsafe { f() };\n}\n\n\n\n\n\n// SAFETY: g is fine.\nlet x = unsafe { g() };\nlog!(\"not unsafe\"); // unsafe\n";
    assert_eq!(unexplained(source), [2]);
}
