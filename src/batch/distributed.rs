//! A batch on Citus-distributed tables (`Tables::citus`). Citus refuses a row lock on more
//! than one shard in a statement, and cannot join `json_data` (distributed by hash) to the
//! tasks of an instance (distributed by instance), so a batch is a few statements, each run
//! by Citus where its rows are:
//!
//! 1. the next instances of the job's model in id order, `batch_size` for each shard group
//!    (ids only, from every node);
//! 2. the ids grouped by shard (on the coordinator, from Citus's metadata);
//! 3. per shard group, one statement routed to its node locks its instances FOR SHARE;
//! 4. the hash of each locked instance's latest completed task (on each node, in a statement
//!    of its own: its snapshot is taken after the lock waits, as on one server);
//! 5. each document read on the node that holds it and its values extracted there
//!    (`extract_values_or_fault`: an instance whose data fails is skipped, not the batch);
//!    the values come to the coordinator;
//! 6. the rows inserted from there, a multi-row VALUES that Citus splits by shard and sends to
//!    the nodes at once: one for the keys filled and one for the keys replaced (the
//!    coordinator evaluates the metadata table's id default, a sequence, so the rows would
//!    pass through it anyway).
//!
//! Every statement is in one distributed transaction with the job's own row: a batch commits on
//! all nodes or on none (Citus's two-phase commit).

use super::batch_of::{BatchOf, INSERT_WAY, UNIQUE_VIOLATION};
use super::failure::{caught_unless_interrupt, is_instance_failure};
use super::fast_path::may_lock;
use super::job_row::Outcome;
use super::statements::{run_plan, transaction_start_epoch, Insert, Plan};
use crate::pg::privilege::as_role;
use crate::pg::subxact::Failure;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

/// How the rows of a batch are inserted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Conflict {
    /// No ON CONFLICT: the first try of keys filled where missing.
    Fail,
    /// ON CONFLICT DO NOTHING, after a row was in the way.
    Skip,
    /// ON CONFLICT DO UPDATE where the value differs: keys whose path the job replaces (in a
    /// statement of their own: Citus cannot send a parameter in an ON CONFLICT clause).
    Replace,
}

/// Rows an INSERT writes at most: three parameters each, within PostgreSQL's 65,535.
const ROWS_PER_INSERT: usize = 2_000;

/// Rows to insert, a column each.
#[derive(Default)]
struct Rows {
    ids: Vec<i64>,
    keys: Vec<String>,
    values: Vec<String>,
}

impl BatchOf<'_> {
    /// One attempt on distributed tables; see the module's comment.
    pub(super) fn attempt_distributed(&self) -> Result<Outcome, Failure> {
        let ids = caught_unless_interrupt(|| self.next_instances())?;
        let Some(&last) = ids.last() else {
            return Ok(Outcome::default());
        };
        let for_share = may_lock(self.role, self.tables.instances);
        let locked = caught_unless_interrupt(|| {
            let mut locked = Vec::with_capacity(ids.len());
            for group in self.shard_groups(&ids) {
                locked.extend(self.lock_group(&group, for_share));
            }
            locked
        })?;
        let (with_task, hashes) = caught_unless_interrupt(|| self.latest_hashes(&locked))?;
        let mut outcome = Outcome::default();
        self.write_or_halve(&with_task, &hashes, &mut outcome)?;
        outcome.instances = locked.len() as i64;
        // Past every instance looked at, the deleted ones included.
        outcome.cursor = Some(last);
        Ok(outcome)
    }

    /// Writes the rows of `ids`; when an instance's data fails the statement, writes each half
    /// again (a batch here is up to 3,200 instances, too many to write one by one), down to
    /// the instance that fails, which is counted and skipped.
    fn write_or_halve(
        &self,
        ids: &[i64],
        hashes: &[String],
        outcome: &mut Outcome,
    ) -> Result<(), Failure> {
        // All of it or nothing: rows of keys filled must not stay when those replaced fail.
        let written = caught_unless_interrupt(|| match self.write_distributed(ids, hashes) {
            Ok(written) => written,
            Err(failure) => failure.rethrow(),
        });
        match written {
            Ok((updated, faults)) => {
                outcome.updated += updated;
                for (id, fault) in faults {
                    outcome.skip(self.job.id, id, &fault);
                }
            }
            Err(failure) if is_instance_failure(&failure) && ids.len() > 1 => {
                let half = ids.len() / 2;
                self.write_or_halve(&ids[..half], &hashes[..half], outcome)?;
                self.write_or_halve(&ids[half..], &hashes[half..], outcome)?;
            }
            Err(failure) if is_instance_failure(&failure) => {
                outcome.skip(self.job.id, ids[0], &failure)
            }
            Err(failure) => return Err(failure),
        }
        Ok(())
    }

    /// The next instances of the job after its cursor, in id order (no lock: Citus has none
    /// for many shards at once).
    fn next_instances(&self) -> Vec<i64> {
        let plan = Plan::LockInstances {
            tables: self.tables.clone(),
            for_share: false,
        };
        let args = [
            self.job.model.as_str().into(),
            self.first_after(self.job.cursor).into(),
            self.max_id.into(),
            self.limit.into(),
        ];
        as_role(self.role, || {
            run_plan(plan, &args, |row| match row {
                Some(row) => Ok(row.get::<Vec<i64>>(1)?.unwrap_or_default()),
                None => Ok(Vec::new()),
            })
        })
    }

    /// `ids` in groups that are each in one shard of process_instance (and so, co-located, of
    /// task and process_instance_metadata), in id order within each.
    fn shard_groups(&self, ids: &[i64]) -> Vec<Vec<i64>> {
        let sql = format!(
            "SELECT pg_catalog.array_agg(id ORDER BY shard, id), pg_catalog.array_agg(shard ORDER BY shard, id)
               FROM (SELECT id, pg_catalog.get_shard_id_for_distribution_column(
                                    $2::pg_catalog.oid::pg_catalog.regclass, id::{}) AS shard
                       FROM pg_catalog.unnest($1::pg_catalog.int8[]) AS id) ids",
            self.id_type()
        );
        let (ids, shards) = one_row(&sql, &[ids.to_vec().into(), self.tables.instances.into()]);
        let mut groups: Vec<Vec<i64>> = Vec::new();
        let mut current = None;
        for (id, shard) in ids.into_iter().zip(shards) {
            if current != Some(shard) {
                groups.push(Vec::new());
                current = Some(shard);
            }
            if let Some(group) = groups.last_mut() {
                group.push(id);
            }
        }
        groups
    }

    /// Locks the instances of `group` (one shard group) that are still the job's, FOR SHARE when
    /// the job's role may lock them, in one statement Citus routes to their node; their ids.
    fn lock_group(&self, group: &[i64], for_share: bool) -> Vec<i64> {
        let sql = format!(
            "SELECT pg_catalog.array_agg(b.id ORDER BY b.id), NULL::pg_catalog.int8[] FROM (
                 SELECT i.id::bigint AS id FROM {} i
                  WHERE i.id = ANY ($1::{}[]) AND i.process_model_identifier = $2{}) b",
            self.tables.sql_name("process_instance"),
            self.id_type(),
            if for_share { " FOR SHARE OF i" } else { "" }
        );
        as_role(self.role, || {
            one_row(
                &sql,
                &[group.to_vec().into(), self.job.model.as_str().into()],
            )
            .0
        })
    }

    /// The hash of the latest completed task of each of `ids` that has one (latest as
    /// `statements::latest_task_data_join` says), in id order: the ids and their hashes.
    fn latest_hashes(&self, ids: &[i64]) -> (Vec<i64>, Vec<String>) {
        if ids.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let sql = format!(
            "SELECT i.id::bigint, h.hash FROM {} i
               JOIN LATERAL (SELECT t.json_data_hash::text AS hash FROM {} t
                              WHERE t.process_instance_id = i.id AND t.state = 'COMPLETED'
                              ORDER BY t.end_in_seconds DESC NULLS LAST, t.guid DESC
                              LIMIT 1) h ON true
              WHERE i.id = ANY ($1::{}[])",
            self.tables.sql_name("process_instance"),
            self.tables.sql_name("task"),
            self.id_type()
        );
        let mut found: Vec<(i64, String)> = as_role(self.role, || {
            Spi::connect_mut(|client| {
                client
                    .update(&sql, None, &[ids.to_vec().into()])?
                    .map(|row| {
                        Ok((
                            row.get::<i64>(1)?.unwrap_or_default(),
                            row.get::<String>(2)?.unwrap_or_default(),
                        ))
                    })
                    .collect::<Result<Vec<_>, pgrx::spi::Error>>()
            })
        })
        .unwrap_or_else(|e| error!("backfill: could not read the instances' latest tasks: {e}"));
        found.sort_unstable();
        found.into_iter().unzip()
    }

    /// Extracts and writes the rows of `ids` (whose latest task data is the document of the
    /// same place in `hashes`): each document read on its node, its values brought to the
    /// coordinator, then inserted (keys filled where missing, and keys the job replaces). The
    /// number of instances that got a row written, and the instances whose data failed, with
    /// their errors (they get no row).
    fn write_distributed(
        &self,
        ids: &[i64],
        hashes: &[String],
    ) -> Result<(i64, Vec<(i64, String)>), Failure> {
        if ids.is_empty() {
            return Ok((0, Vec::new()));
        }
        let paths: Vec<String> = self.job.paths.iter().map(|p| p.path.clone()).collect();
        let extracted = caught_unless_interrupt(|| self.extract(ids, hashes, &paths))?;
        let mut filled = Rows::default();
        let mut replaced = Rows::default();
        let mut faults = Vec::new();
        for (id, mut values) in extracted {
            if let Some(fault) = values.pop().flatten() {
                faults.push((id, fault));
                continue;
            }
            for (path, value) in self.job.paths.iter().zip(values) {
                let Some(value) = value else { continue };
                let rows = if path.overwrite {
                    &mut replaced
                } else {
                    &mut filled
                };
                rows.ids.push(id);
                rows.keys.push(path.key.clone());
                rows.values.push(value);
            }
        }
        let mut written = self.insert(&filled, false)?;
        written.extend(self.insert(&replaced, true)?);
        written.sort_unstable();
        written.dedup();
        Ok((written.len() as i64, faults))
    }

    /// The values of `paths` in each instance's document, with extract_values_or_fault's
    /// error element last, read where the documents are (`json_data` joined to the hashes
    /// given: Citus sends the hashes to each of its shards).
    fn extract(
        &self,
        ids: &[i64],
        hashes: &[String],
        paths: &[String],
    ) -> Vec<(i64, Vec<Option<String>>)> {
        let sql = format!(
            "SELECT u.id, backfill.extract_values_or_fault(d.data::{}, $3::pg_catalog.text[])
               FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]),
                               pg_catalog.unnest($2::pg_catalog.text[])) AS u(id, hash)
               JOIN {} d ON d.hash = u.hash",
            self.tables.data_type_sql(),
            self.tables.sql_name("json_data")
        );
        let args = [
            ids.to_vec().into(),
            hashes.to_vec().into(),
            paths.to_vec().into(),
        ];
        as_role(self.role, || {
            Spi::connect_mut(|client| {
                client
                    .update(&sql, None, &args)?
                    .map(|row| {
                        Ok((
                            row.get::<i64>(1)?.unwrap_or_default(),
                            row.get::<Vec<Option<String>>>(2)?.unwrap_or_default(),
                        ))
                    })
                    .collect::<Result<Vec<_>, pgrx::spi::Error>>()
            })
        })
        .unwrap_or_else(|e| error!("backfill: could not read the instances' task data: {e}"))
    }

    /// Inserts `rows`: replacing where the value differs (`replace`), or else filling where
    /// missing (without ON CONFLICT until a row is in the way, then skipping what is there);
    /// the instances that got a row written. A multi-row VALUES, which Citus splits by shard
    /// and sends to each node at once (an INSERT ... SELECT from arrays would be collected on
    /// the coordinator and copied to each shard in turn, twenty times slower).
    fn insert(&self, rows: &Rows, replace: bool) -> Result<Vec<i64>, Failure> {
        let mut written = Vec::new();
        for start in (0..rows.ids.len()).step_by(ROWS_PER_INSERT) {
            let end = (start + ROWS_PER_INSERT).min(rows.ids.len());
            written.extend(self.insert_some(rows, start..end, replace)?);
        }
        Ok(written)
    }

    fn insert_some(
        &self,
        rows: &Rows,
        range: std::ops::Range<usize>,
        replace: bool,
    ) -> Result<Vec<i64>, Failure> {
        let mut conflict = if replace {
            Conflict::Replace
        } else {
            match INSERT_WAY.get() {
                Some((job, _)) if job == self.job.id => Conflict::Skip,
                _ => Conflict::Fail,
            }
        };
        loop {
            let mut args: Vec<DatumWithOid> = Vec::with_capacity(1 + 3 * range.len());
            args.push(transaction_start_epoch().into());
            for i in range.clone() {
                args.push(rows.ids[i].into());
                args.push(rows.keys[i].as_str().into());
                args.push(rows.values[i].as_str().into());
            }
            let sql = self.insert_sql(conflict, range.len());
            let tried = caught_unless_interrupt(|| as_role(self.role, || one_row(&sql, &args).0));
            match tried {
                Err(failure)
                    if failure.sqlstate == UNIQUE_VIOLATION && conflict == Conflict::Fail =>
                {
                    // The rest of this job's batches in this process skip what is there.
                    INSERT_WAY.set(Some((self.job.id, Insert::OnConflict)));
                    conflict = Conflict::Skip;
                }
                other => return other,
            }
        }
    }

    /// The INSERT of `rows` rows: $1 the write time, then (id, key, value) a row.
    fn insert_sql(&self, conflict: Conflict, rows: usize) -> String {
        let on_conflict = match conflict {
            Conflict::Fail => "",
            Conflict::Skip => "ON CONFLICT (process_instance_id, key) DO NOTHING",
            Conflict::Replace => {
                "ON CONFLICT (process_instance_id, key) DO UPDATE
                   SET value = EXCLUDED.value, updated_at_in_seconds = EXCLUDED.updated_at_in_seconds
                 WHERE m.value IS DISTINCT FROM EXCLUDED.value"
            }
        };
        let values: Vec<String> = (0..rows)
            .map(|row| {
                let at = 2 + 3 * row;
                format!(
                    "(${at}::pg_catalog.int8, ${}::pg_catalog.text, ${}::pg_catalog.text, $1, $1)",
                    at + 1,
                    at + 2
                )
            })
            .collect();
        // The ids come back through a CTE: SPI counts the rows of an INSERT Citus runs apart
        // from those it returns, and fails the statement.
        format!(
            "WITH written AS (
             INSERT INTO {} AS m
                    (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
             VALUES {}
             {on_conflict}
             RETURNING m.process_instance_id::bigint AS id)
             SELECT pg_catalog.array_agg(DISTINCT id), NULL::pg_catalog.int8[] FROM written",
            self.tables.sql_name("process_instance_metadata"),
            values.join(", ")
        )
    }

    /// The id column's type, for SQL text: Citus routes by a value of the column's own type.
    fn id_type(&self) -> &'static str {
        if self.tables.instance_id_is_int4 {
            "pg_catalog.int4"
        } else {
            "pg_catalog.int8"
        }
    }
}

/// The two int8[] columns of the one row `sql` returns (empty for NULL).
fn one_row(sql: &str, args: &[DatumWithOid]) -> (Vec<i64>, Vec<i64>) {
    Spi::connect_mut(|client| {
        let table = client.update(sql, Some(1), args)?;
        if table.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let row = table.first();
        Ok((
            row.get::<Vec<i64>>(1)?.unwrap_or_default(),
            row.get::<Vec<i64>>(2)?.unwrap_or_default(),
        ))
    })
    .unwrap_or_else(|e: pgrx::spi::Error| error!("backfill: batch statement failed: {e}"))
}
