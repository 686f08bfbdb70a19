//! The paths a job fills: what a change of a model's `metadata_extraction_paths` asks for,
//! as stored in `backfill.job.paths`.

use crate::extract::jsonb::JsonbArg;
use crate::extract::paths::{parse_paths_checking, MetadataPath};
use crate::pg::error::invalid_parameter;
use pgrx::prelude::*;
use serde_json::{json, Value};

/// One path a job fills, and whether it replaces rows that already exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobPath {
    pub key: String,
    pub path: String,
    pub overwrite: bool,
}

impl JobPath {
    /// `path` as filled by a job, replacing existing rows or not.
    pub fn new(path: &MetadataPath, overwrite: bool) -> JobPath {
        JobPath {
            key: path.key.clone(),
            path: path.path.clone(),
            overwrite,
        }
    }

    pub fn to_json(paths: &[JobPath]) -> Value {
        Value::Array(
            paths
                .iter()
                .map(|p| json!({"key": p.key, "path": p.path, "overwrite": p.overwrite}))
                .collect(),
        )
    }

    /// Reads `job.paths`; written by this extension, so anything else is corruption.
    pub fn from_json(value: &Value) -> Vec<JobPath> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| JobPath {
                key: p["key"].as_str().unwrap_or_default().to_owned(),
                path: p["path"].as_str().unwrap_or_default().to_owned(),
                overwrite: p["overwrite"].as_bool().unwrap_or(false),
            })
            .collect()
    }

    /// What a change of `metadata_extraction_paths` from `old` to `new` asks for: keys that are
    /// new are filled where missing; keys whose path changed are filled with overwrite (their
    /// values came from the old path); removed or unchanged keys need nothing.
    pub fn changes(old: &[MetadataPath], new: &[MetadataPath]) -> Vec<JobPath> {
        new.iter()
            .filter_map(|n| {
                let overwrite = match old.iter().find(|o| o.key == n.key) {
                    None => false,
                    Some(o) if o.path != n.path => true,
                    Some(_) => return None,
                };
                Some(JobPath::new(n, overwrite))
            })
            .collect()
    }

    /// "invoice_number, customer_id (overwrite)" for log lines and notices.
    pub fn describe(paths: &[JobPath]) -> String {
        paths
            .iter()
            .map(|p| {
                if p.overwrite {
                    format!("{} (overwrite)", p.key)
                } else {
                    p.key.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    ModelUpdate,
    Manual,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::ModelUpdate => "model_update",
            Origin::Manual => "manual",
        }
    }
}

/// The elements of a `metadata_extraction_paths` value, or ERROR 22023 naming what is wrong.
/// Validation is linear and bounded (MAX_PATHS, MAX_PATH_BYTES) and checks for interrupts.
pub fn valid_paths(value: &Value) -> Vec<MetadataPath> {
    parse_paths_checking(value, || {
        pgrx::check_for_interrupts!();
    })
    .unwrap_or_else(|e| invalid_parameter(&e.to_string()))
}

/// The metadata_extraction_paths of `model` as stored (unvalidated), or ERROR 22023 when
/// there is no such model.
pub fn paths_of_model(model: &str) -> Value {
    models(Some(model))
        .pop()
        .map(|(_, paths)| paths)
        .unwrap_or_default()
}

/// Every model (or only `model`: ERROR 22023 when there is no such model) with its
/// metadata_extraction_paths as stored (unvalidated, converted with bounded work), in id order.
pub fn models(model: Option<&str>) -> Vec<(String, Value)> {
    let models = Spi::connect(|client| {
        client
            .select(
                "SELECT id, metadata_extraction_paths FROM backfill.process_model
                  WHERE $1::text IS NULL OR id = $1 ORDER BY id",
                None,
                &[model.into()],
            )?
            .map(|row| {
                Ok((
                    row.get::<String>(1)?.unwrap_or_default(),
                    // Converted in place, bounded however deep a value someone stored.
                    row.get::<JsonbArg>(2)?
                        .map(|paths| paths.to_serde_capped())
                        .unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| error!("backfill: could not read the process models: {e}"));
    if let (Some(model), true) = (model, models.is_empty()) {
        invalid_parameter(&format!("process model \"{model}\" does not exist"));
    }
    models
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp(key: &str, path: &str) -> MetadataPath {
        MetadataPath {
            key: key.into(),
            path: path.into(),
        }
    }

    fn jp(key: &str, path: &str, overwrite: bool) -> JobPath {
        JobPath {
            key: key.into(),
            path: path.into(),
            overwrite,
        }
    }

    #[test]
    fn changes_between_two_path_lists() {
        let old = [mp("a", "x.a"), mp("b", "x.b"), mp("c", "x.c")];
        let new = [
            mp("b", "y.b"),
            mp("a", "x.a"),
            mp("d", "x.d"),
            mp("e", "$.e"),
        ];
        assert_eq!(
            JobPath::changes(&old, &new),
            [
                jp("b", "y.b", true),
                jp("d", "x.d", false),
                jp("e", "$.e", false)
            ]
        );
        // Removal and reordering ask for nothing.
        assert!(JobPath::changes(&old, &[mp("c", "x.c"), mp("a", "x.a")]).is_empty());
        assert!(JobPath::changes(&old, &[]).is_empty());
    }

    #[test]
    fn job_paths_round_trip_through_json() {
        let paths = [jp("a", "x.a", false), jp("it's", "$.b[0]", true)];
        assert_eq!(JobPath::from_json(&JobPath::to_json(&paths)), paths);
        assert_eq!(JobPath::describe(&paths), "a, it's (overwrite)");
    }
}
