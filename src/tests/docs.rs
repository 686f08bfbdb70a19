//! The documentation's shape: a short README that links every page of docs/, links that lead
//! somewhere, and an architecture page that names every module there is.

use std::path::{Path, PathBuf};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages
}

/// The targets of the Markdown links `[text](target)` in `text`, anchors dropped, web links
/// left out.
fn local_links(text: &str) -> Vec<String> {
    text.match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &text[at + 2..];
            let target = &rest[..rest.find(')')?];
            let file = target.split('#').next().unwrap_or("");
            (!file.is_empty() && !file.contains("://")).then(|| file.to_owned())
        })
        .collect()
}

#[test]
fn the_readme_is_short_and_links_every_page() {
    let readme = read(&repo().join("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines; the rest belongs in docs/"
    );
    let links = local_links(&readme);
    let pages = pages();
    assert!(pages.len() >= 6, "{pages:?}");
    for page in pages {
        let name = format!("docs/{}", page.file_name().unwrap().to_str().unwrap());
        assert!(links.contains(&name), "README.md does not link {name}");
    }
}

#[test]
fn every_link_leads_to_a_file() {
    let mut documents = vec![repo().join("README.md")];
    documents.extend(pages());
    for document in documents {
        let dir = document.parent().unwrap();
        for link in local_links(&read(&document)) {
            assert!(
                dir.join(&link).exists(),
                "{} links {link}, which is not there",
                document.display()
            );
        }
    }
}

/// Every module of src/: `name` for a file src/name.rs or a folder src/name/, and
/// `folder/name` for each file in a folder (its mod.rs aside).
fn modules() -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(repo().join("src")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        if name == "lib" || name == "tests" {
            continue;
        }
        if path.is_dir() {
            for file in std::fs::read_dir(&path).unwrap() {
                let file = file.unwrap().path();
                let stem = file.file_stem().unwrap().to_str().unwrap();
                if file.extension().is_some_and(|e| e == "rs") && stem != "mod" {
                    found.push(format!("{name}/{stem}"));
                }
            }
            found.push(format!("{name}/"));
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(name);
        }
    }
    found.sort();
    found
}

/// The modules the architecture page's table names: `folder/` in its second column (kept for
/// the rows below that leave it empty), a file of it in the third.
fn named_modules(page: &str) -> Vec<String> {
    let mut folder = String::new();
    let mut named = Vec::new();
    for row in page.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (Some(folder_cell), Some(file_cell)) = (cells.get(2), cells.get(3)) else {
            continue;
        };
        if let Some(name) = folder_cell
            .strip_prefix('`')
            .and_then(|c| c.strip_suffix("/`"))
        {
            folder = name.to_owned();
            named.push(format!("{folder}/"));
        }
        if let Some(file) = file_cell
            .strip_prefix('`')
            .and_then(|c| c.strip_suffix('`'))
        {
            named.push(format!("{folder}/{file}"));
        }
    }
    named.sort();
    named.dedup();
    named
}

#[test]
fn the_architecture_page_names_every_module() {
    let page = read(&repo().join("docs/architecture.md"));
    let modules = modules();
    assert!(modules.len() >= 20, "{modules:?}");
    let named = named_modules(&page);
    let missing: Vec<&String> = modules.iter().filter(|m| !named.contains(m)).collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md does not name {missing:?}"
    );
    let stale: Vec<&String> = named.iter().filter(|m| !modules.contains(m)).collect();
    assert!(
        stale.is_empty(),
        "docs/architecture.md names {stale:?}, which are not in src/"
    );
}

#[test]
fn the_table_reader_finds_what_it_should() {
    let page = "| layer | folder | file | owns |\n|---|---|---|---|\n\
                | pure | `extract/` | `paths` | x |\n| | | `value` | y |\n| infra | `pg/` | `error` | z |";
    assert_eq!(
        named_modules(page),
        [
            "extract/",
            "extract/paths",
            "extract/value",
            "pg/",
            "pg/error"
        ]
    );
}

#[test]
fn the_link_reader_finds_what_it_should() {
    assert_eq!(
        local_links("[a](docs/x.md) [b](https://e.org) [c](y.md#part) [d](#here)"),
        ["docs/x.md", "y.md"]
    );
}
