//! `backfill.preview` and `backfill.preview_summary`: what a backfill with some paths would
//! write, on a sample of a model's instances spread over its id range, computed by the batch's
//! own extraction (the same joins, the same `extract_values`), with the caller's privileges,
//! writing nothing.

use crate::batch::{is_instance_failure, latest_task_data_join};
use crate::job::{self, JobPath};
use crate::pg::error::{invalid_parameter, required};
use crate::pg::privilege::as_role;
use crate::pg::query;
use crate::pg::subxact::in_subtransaction;
use crate::pg::tables::{Table, Tables};
use crate::pg::version;
use pgrx::prelude::*;
use pgrx::JsonB;

/// The most instances one preview reads.
const MAX_SAMPLE: i32 = 100_000;

/// One key of one sampled instance.
struct Previewed {
    instance: i64,
    key: String,
    value: Option<String>,
    value_now: Option<String>,
    outcome: &'static str,
    error: Option<String>,
}

/// What a backfill of `paths` would write for a sample of `model`'s instances, next to the
/// rows there now. Returns nothing when the model has no instances.
#[pg_extern(stable)]
#[allow(clippy::type_complexity)]
fn preview(
    process_model_identifier: Option<&str>,
    paths: Option<JsonB>,
    sample: default!(Option<i32>, 20),
) -> TableIterator<
    'static,
    (
        name!(process_instance_id, i64),
        name!(key, String),
        name!(value, Option<String>),
        name!(value_now, Option<String>),
        name!(outcome, String),
        name!(error, Option<String>),
    ),
> {
    let rows = previewed("backfill.preview", process_model_identifier, paths, sample)
        .map_or_else(Vec::new, |sampled| sampled.rows);
    TableIterator::new(rows.into_iter().map(|r| {
        (
            r.instance,
            r.key,
            r.value,
            r.value_now,
            r.outcome.to_owned(),
            r.error,
        )
    }))
}

/// Per key, over a larger sample: how many sampled instances would get a value, get nothing,
/// or fail, and what that makes for the whole model.
#[pg_extern(stable)]
#[allow(clippy::type_complexity)]
fn preview_summary(
    process_model_identifier: Option<&str>,
    paths: Option<JsonB>,
    sample: default!(Option<i32>, 1000),
) -> TableIterator<
    'static,
    (
        name!(key, String),
        name!(sampled, i64),
        name!(with_value, i64),
        name!(without_value, i64),
        name!(errors, i64),
        name!(instances, i64),
        name!(estimated_with_value, i64),
    ),
> {
    let Some(Sampled {
        model,
        tables,
        reader,
        keys,
        rows,
    }) = previewed(
        "backfill.preview_summary",
        process_model_identifier,
        paths,
        sample,
    )
    else {
        return TableIterator::new(Vec::new());
    };
    let instances = as_role(reader, || {
        query::optional_value::<i64>(
            &format!(
                "SELECT count(*) FROM {} WHERE process_model_identifier = $1",
                tables.sql_name("process_instance")
            ),
            &[model.as_str().into()],
        )
    })
    .unwrap_or(0);
    let summary: Vec<_> = keys
        .into_iter()
        .map(|key| {
            let of_key: Vec<&Previewed> = rows.iter().filter(|r| r.key == key).collect();
            let sampled = of_key.len() as i64;
            let errors = of_key.iter().filter(|r| r.error.is_some()).count() as i64;
            let with_value = of_key
                .iter()
                .filter(|r| r.error.is_none() && r.value.is_some())
                .count() as i64;
            let estimated = if sampled == 0 {
                0
            } else {
                (with_value as f64 * instances as f64 / sampled as f64).round() as i64
            };
            (
                key,
                sampled,
                with_value,
                sampled - with_value - errors,
                errors,
                instances,
                estimated,
            )
        })
        .collect();
    TableIterator::new(summary)
}

/// A preview's sample: the model, its tables, the keys in the order of the paths, and a row
/// per sampled instance and key.
struct Sampled {
    model: String,
    tables: Tables,
    /// Whose privileges reading the tables has (`Tables::reader`).
    reader: pg_sys::Oid,
    keys: Vec<String>,
    rows: Vec<Previewed>,
}

/// The arguments checked and the sample read; None when `paths` is empty.
fn previewed(
    function: &str,
    process_model_identifier: Option<&str>,
    paths: Option<JsonB>,
    sample: Option<i32>,
) -> Option<Sampled> {
    version::require_current_objects();
    let model = required(
        process_model_identifier,
        function,
        "process_model_identifier",
    );
    let sample = required(sample, function, "sample");
    if !(1..=MAX_SAMPLE).contains(&sample) {
        invalid_parameter(&format!(
            "sample must be between 1 and {MAX_SAMPLE}, not {sample}"
        ));
    }
    let paths = job::valid_paths(&required(paths, function, "paths").0);
    // A key whose path differs from the model's current one would be overwritten, as a model
    // update to these paths would do; any other key is filled where it has no row.
    let current = crate::extract::paths::parse_paths_lenient(&job::paths_of_model(model));
    let overwritten: Vec<String> = JobPath::changes(&current, &paths)
        .into_iter()
        .filter(|p| p.overwrite)
        .map(|p| p.key)
        .collect();
    if paths.is_empty() {
        return None;
    }
    // Read as a job of the caller's would read them (its own privileges, or the tables'
    // owner's).
    let (tables, reader) = Tables::current_for_caller(&Table::ALL);
    let ids = as_role(reader, || sample_ids(&tables, model, sample));
    let keys: Vec<String> = paths.iter().map(|p| p.key.clone()).collect();
    let texts: Vec<String> = paths.iter().map(|p| p.path.clone()).collect();
    let read = |ids: &[i64]| as_role(reader, || read_rows(&tables, ids, &keys, &texts));
    // A failure of the data of an instance (what a job counts as an instance error) is shown
    // on that instance; any other (a privilege, a cancel) is the caller's.
    let rows = match in_subtransaction(|| read(&ids)) {
        Ok(rows) => rows,
        Err(failure) if !is_instance_failure(&failure) => failure.rethrow(),
        Err(_) => ids
            .iter()
            .flat_map(|&id| match in_subtransaction(|| read(&[id])) {
                Ok(rows) => rows,
                Err(failure) if !is_instance_failure(&failure) => failure.rethrow(),
                Err(failure) => keys
                    .iter()
                    .map(|key| Read {
                        instance: id,
                        key: key.clone(),
                        value: None,
                        value_now: None,
                        has_row: false,
                        error: Some(failure.to_string()),
                    })
                    .collect(),
            })
            .collect(),
    };
    let rows = rows
        .into_iter()
        .map(|r| {
            let outcome = if r.error.is_some() {
                "error"
            } else if r.has_row {
                if overwritten.contains(&r.key) && r.value.is_some() && r.value != r.value_now {
                    "replace"
                } else {
                    "keep"
                }
            } else if r.value.is_none() && tables.value_not_null {
                "none"
            } else {
                "insert"
            };
            Previewed {
                instance: r.instance,
                key: r.key,
                value: r.value,
                value_now: r.value_now,
                outcome,
                error: r.error,
            }
        })
        .collect();
    Some(Sampled {
        model: model.to_owned(),
        tables,
        reader,
        keys,
        rows,
    })
}

/// Up to `sample` instances of `model`, spread evenly over its id range: for each of `sample`
/// evenly spaced ids between its smallest and its largest, the first instance at or after it.
/// One index probe each, however many instances the model has.
fn sample_ids(tables: &Tables, model: &str, sample: i32) -> Vec<i64> {
    let instances = tables.sql_name("process_instance");
    let sql = format!(
        "SELECT coalesce(array_agg(DISTINCT s.id ORDER BY s.id), '{{}}')
           FROM (SELECT min(id)::bigint AS lo, max(id)::bigint AS hi FROM {instances}
                  WHERE process_model_identifier = $1) AS r,
                generate_series(0, $2 - 1) AS k,
                LATERAL (SELECT i.id::bigint AS id FROM {instances} i
                          WHERE i.process_model_identifier = $1
                            AND i.id >= r.lo + ((r.hi - r.lo + 1)::numeric * k / $2)::bigint
                          ORDER BY i.id LIMIT 1) AS s"
    );
    query::optional_value::<Vec<i64>>(&sql, &[model.into(), sample.into()]).unwrap_or_default()
}

struct Read {
    instance: i64,
    key: String,
    value: Option<String>,
    value_now: Option<String>,
    has_row: bool,
    error: Option<String>,
}

/// The values the paths give for `ids` (rendered by the batch's own `extract_values`) and
/// the rows there now.
fn read_rows(tables: &Tables, ids: &[i64], keys: &[String], paths: &[String]) -> Vec<Read> {
    let sql = format!(
        "SELECT b.id, e.key, e.value, m.value::text, m.process_instance_id IS NOT NULL
           FROM unnest($1::bigint[]) WITH ORDINALITY AS b(id, n)
           {latest}
          CROSS JOIN LATERAL (
                SELECT unnest($2::text[]) AS key,
                       unnest(backfill.extract_values(coalesce(d.data, '{{}}')::{data_type}, $3::pg_catalog.text[])) AS value,
                       generate_series(1, cardinality($2::text[])) AS k) AS e
           LEFT JOIN {metadata} m ON m.process_instance_id = b.id AND m.key = e.key
          ORDER BY b.n, e.k",
        latest = latest_task_data_join(tables, "b.id"),
        metadata = tables.sql_name("process_instance_metadata"),
        data_type = tables.data_type_sql(),
    );
    Spi::connect(|client| {
        client
            .select(
                &sql,
                None,
                &[
                    ids.to_vec().into(),
                    keys.to_vec().into(),
                    paths.to_vec().into(),
                ],
            )?
            .map(|row| {
                Ok(Read {
                    instance: row.get::<i64>(1)?.unwrap_or(0),
                    key: row.get::<String>(2)?.unwrap_or_default(),
                    value: row.get::<String>(3)?,
                    value_now: row.get::<String>(4)?,
                    has_row: row.get::<bool>(5)?.unwrap_or(false),
                    error: None,
                })
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| error!("backfill: could not read the sampled instances: {e}"))
}
