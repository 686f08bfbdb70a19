//! The models of a spec directory: every process_model.json below it, its id the directory.

use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};

/// What a spec directory holds.
#[derive(Debug, Default, PartialEq)]
pub struct Models {
    /// `{"id", "display_name", "metadata_extraction_paths"}` a model, in id order.
    pub models: Vec<Value>,
    /// The model files that could not be read: (id, reason).
    pub unreadable: Vec<(String, String)>,
}

/// The models of the spec directory.
pub fn read_models(spec_dir: &Path) -> Result<Models, String> {
    let mut files = Vec::new();
    find_model_files(spec_dir, &mut files)
        .map_err(|e| format!("cannot read {}: {e}", spec_dir.display()))?;
    files.sort();
    let mut models = Vec::new();
    let mut unreadable = Vec::new();
    for file in files {
        let dir = file.parent().unwrap_or(spec_dir);
        let id = dir
            .strip_prefix(spec_dir)
            .unwrap_or(dir)
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        if id.is_empty() {
            unreadable.push((
                "process_model.json".to_owned(),
                "a model file directly in the spec directory has no model id".to_owned(),
            ));
            continue;
        }
        let text = match fs::read_to_string(&file) {
            // Removed since the directory was listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            text => text,
        };
        let parsed = text
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<Value>(&text).map_err(|e| e.to_string()));
        match parsed {
            Ok(Value::Object(model)) => models.push(json!({
                "id": id,
                "display_name": model.get("display_name").cloned().unwrap_or(Value::Null),
                "metadata_extraction_paths":
                    model.get("metadata_extraction_paths").cloned().unwrap_or(Value::Null),
            })),
            Ok(_) => unreadable.push((id, "process_model.json is not a JSON object".to_owned())),
            Err(why) => {
                unreadable.push((id, format!("process_model.json is not valid JSON: {why}")))
            }
        }
    }
    Ok(Models { models, unreadable })
}

/// Every process_model.json below `dir`, hidden directories (.git) left out.
pub fn find_model_files(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        let kind = entry.file_type()?;
        if kind.is_dir() && !hidden {
            match find_model_files(&path, found) {
                // Removed since its parent was listed (a watch sees the removal next).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                walked => walked?,
            }
        } else if kind.is_file() && entry.file_name() == "process_model.json" {
            found.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_found_by_directory_and_groups_skipped() {
        let dir = std::env::temp_dir().join(format!("sync-models-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("finance/invoice")).unwrap();
        fs::create_dir_all(dir.join(".git/x")).unwrap();
        fs::write(dir.join("finance/process_group.json"), "{}").unwrap();
        fs::write(
            dir.join("finance/invoice/process_model.json"),
            r#"{"display_name": "Invoice", "metadata_extraction_paths": [{"key": "n", "path": "a.b"}], "other": 1}"#,
        )
        .unwrap();
        fs::write(dir.join(".git/x/process_model.json"), "{}").unwrap();
        let Models { models, unreadable } = read_models(&dir).unwrap();
        assert_eq!(
            models,
            vec![json!({"id": "finance/invoice", "display_name": "Invoice",
                        "metadata_extraction_paths": [{"key": "n", "path": "a.b"}]})]
        );
        assert!(unreadable.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
