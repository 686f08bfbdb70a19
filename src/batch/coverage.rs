//! How complete a model's metadata is, per key: its instances, those with a row, those with
//! a value. Counted exactly (one statement a model) after a job has filled the keys and when
//! an operator asks (`backfill.count_coverage`), and kept in `backfill.coverage_count`, which
//! the `backfill.coverage` view reads: the view answers at once on any number of instances,
//! and says when each figure was counted.

use crate::pg::privilege::{as_job_table_owner, as_role};
use crate::pg::tables::Tables;
use pgrx::pg_sys::Oid;
use pgrx::prelude::*;

/// The counts of one key.
pub struct Counted {
    pub key: String,
    pub instances: i64,
    pub with_row: i64,
    pub with_value: i64,
}

/// Counts `keys` of `model` in `tables` with the privileges of `role` (who must be able to
/// read them: the figures are no more than that role could count itself), and records them
/// as that role's count (the coverage view shows it to roles that have its privileges).
pub fn count_and_record(model: &str, keys: &[String], tables: &Tables, role: Oid) -> Vec<Counted> {
    let sql = format!(
        "SELECT k.key, n.instances, coalesce(c.with_row, 0), coalesce(c.with_value, 0)
           FROM unnest($2::text[]) AS k(key)
          CROSS JOIN (SELECT count(*) AS instances FROM {instances}
                       WHERE process_model_identifier = $1) AS n
           LEFT JOIN (SELECT m.key::text AS key, count(*) AS with_row, count(m.value) AS with_value
                        FROM {metadata} m
                        JOIN {instances} i ON i.id = m.process_instance_id
                       WHERE i.process_model_identifier = $1 AND m.key = ANY ($2::text[])
                       GROUP BY m.key) AS c ON c.key = k.key
          ORDER BY k.key",
        instances = tables.sql_name("process_instance"),
        metadata = tables.sql_name("process_instance_metadata"),
    );
    // Read-write SPI, for a snapshot of its own taken now, not the calling statement's.
    let counted: Vec<Counted> = as_role(role, || {
        Spi::connect_mut(|client| {
            client
                .update(&sql, None, &[model.into(), keys.to_vec().into()])?
                .map(|row| {
                    Ok(Counted {
                        key: row.get::<String>(1)?.unwrap_or_default(),
                        instances: row.get::<i64>(2)?.unwrap_or(0),
                        with_row: row.get::<i64>(3)?.unwrap_or(0),
                        with_value: row.get::<i64>(4)?.unwrap_or(0),
                    })
                })
                .collect::<Result<Vec<_>, pgrx::spi::Error>>()
        })
    })
    .unwrap_or_else(|e| error!("backfill: could not count the coverage of model {model}: {e}"));
    let column = |f: fn(&Counted) -> i64| counted.iter().map(f).collect::<Vec<i64>>();
    let keys: Vec<String> = counted.iter().map(|c| c.key.clone()).collect();
    as_job_table_owner(|| {
        Spi::run_with_args(
            "SELECT backfill.coverage_record($1::pg_catalog.text, $2::pg_catalog.text[], $3::pg_catalog.int8[], $4::pg_catalog.int8[], $5::pg_catalog.int8[], $6::pg_catalog.regrole)",
            &[
                model.into(),
                keys.into(),
                column(|c| c.instances).into(),
                column(|c| c.with_row).into(),
                column(|c| c.with_value).into(),
                role.into(),
            ],
        )
    })
    .unwrap_or_else(|e| error!("backfill: could not record the coverage of model {model}: {e}"));
    counted
}

/// Whether `model` has any instance in `tables`, read with the privileges of `role` (who must
/// be able to read the instance table).
pub fn has_instances(model: &str, tables: &Tables, role: Oid) -> bool {
    let sql = format!(
        "SELECT EXISTS (SELECT FROM {instances} WHERE process_model_identifier = $1)",
        instances = tables.sql_name("process_instance"),
    );
    as_role(role, || {
        Spi::get_one_with_args::<bool>(&sql, &[model.into()])
    })
    .unwrap_or_else(|e| error!("backfill: could not read the instances of model {model}: {e}"))
    .unwrap_or(false)
}
