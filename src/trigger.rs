//! Triggers on `backfill.process_model`.

use crate::api::invalid_parameter;
use crate::paths::parse_paths;
use pgrx::prelude::*;
use pgrx::JsonB;
use std::fmt;

#[derive(Debug)]
pub enum TriggerError {
    NoRow(&'static str),
    Column(String),
}

impl fmt::Display for TriggerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TriggerError::NoRow(which) => write!(f, "backfill trigger fired without a {which} row"),
            TriggerError::Column(why) => {
                write!(f, "backfill trigger could not read a column: {why}")
            }
        }
    }
}

const PATHS_COLUMN: &str = "metadata_extraction_paths";

fn paths_of(row: &PgHeapTuple<'_, AllocatedByPostgres>) -> Result<Option<JsonB>, TriggerError> {
    row.get_by_name::<JsonB>(PATHS_COLUMN)
        .map_err(|e| TriggerError::Column(e.to_string()))
}

/// BEFORE INSERT OR UPDATE: rejects a malformed `metadata_extraction_paths` with 22023, so
/// the row stays as it was and nothing is enqueued.
#[pg_trigger]
fn validate_metadata_extraction_paths<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, TriggerError> {
    let new = trigger.new().ok_or(TriggerError::NoRow("NEW"))?;
    // NULL is left to the NOT NULL constraint, which reports it in its own words.
    if let Some(JsonB(paths)) = paths_of(&new)? {
        if let Err(e) = parse_paths(&paths) {
            invalid_parameter(&e.to_string());
        }
    }
    Ok(Some(new))
}
