//! The per-batch statements: their texts, built for the job's tables, and the cache that
//! prepares each once per process.

use crate::job::store::{self};
use crate::pg::tables::Tables;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiHeapTupleData};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The batch statement, for the job's tables: for each instance, the data of its latest
/// completed task (latest by end_in_seconds, then guid; a completed task without an end
/// counts as earlier than any with one), the paths extracted in Rust once per instance, and
/// the rows written set-based, as `insert` says.
pub(crate) fn batch_sql(tables: &Tables, insert: Insert) -> String {
    let metadata = tables.sql_name("process_instance_metadata");
    // A NOT NULL value column gets no row for nothing found (SpiffWorkflow's own rule).
    let mut only = Vec::new();
    if tables.value_not_null {
        only.push("e.value IS NOT NULL");
    }
    // The keys an instance has rows for, compared byte for byte: equal bytes are equal under
    // any collation the key column may have, and a key the index deems equal in other bytes
    // only costs the 23505 that sends the batch to OnConflict.
    let (have, have_column) = if insert == Insert::Missing {
        only.push("NOT coalesce(e.key COLLATE \"C\" = ANY (e.have), false)");
        (
            format!(
                "LEFT JOIN LATERAL (
            SELECT array_agg(x.key::text COLLATE \"C\") AS keys
              FROM {metadata} x
             WHERE x.process_instance_id = b.id) have ON true"
            ),
            ", have.keys AS have",
        )
    } else {
        (String::new(), "")
    };
    let only = if only.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", only.join(" AND "))
    };
    // Only keys whose path the job replaces are overwritten, only when the value differs, and
    // never with nothing.
    let on_conflict = match insert {
        Insert::New | Insert::Missing => "",
        Insert::OnConflict => "ON CONFLICT (process_instance_id, key) DO NOTHING",
        Insert::Overwrite => {
            "ON CONFLICT (process_instance_id, key) DO UPDATE
              SET value = EXCLUDED.value, updated_at_in_seconds = EXCLUDED.updated_at_in_seconds
            WHERE m.key = ANY($4::text[]) AND EXCLUDED.value IS NOT NULL
              AND m.value IS DISTINCT FROM EXCLUDED.value"
        }
    };
    format!(
        "
WITH extracted AS (
    -- The two unnests in the select list run in lockstep, a (key, value) row each, without
    -- the tuplestore a set-returning function in FROM would fill per instance. extract_values
    -- has an overload for json (read from its text) and one for jsonb.
    SELECT b.id,
           unnest($2::text[]) AS key,
           unnest(backfill.extract_values(coalesce(d.data, '{{}}')::{data_type}, $3::pg_catalog.text[])) AS value
           {have_column}
      FROM unnest($1::bigint[]) AS b(id)
      {latest}
      {have}
), written AS (
    INSERT INTO {metadata} AS m
           (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
    SELECT e.id, e.key, e.value, $5, $5
      FROM extracted e
     {only}
    {on_conflict}
    RETURNING m.process_instance_id
)
SELECT count(DISTINCT process_instance_id) FROM written",
        data_type = tables.data_type_sql(),
        latest = latest_task_data_join(tables, "b.id"),
    )
}

/// The join that gives each instance (id in `instance`) the data `d.data` of its latest
/// completed task (latest by end_in_seconds, then guid; a completed task without an end counts
/// as earlier than any with one), NULL when it has none: what a batch and a preview read.
/// The document is looked up by the hash the subquery gives, as an index condition: one probe
/// of each index an instance whatever the statistics say. Joined to the task instead, the
/// planner may put a Memoize node over the lookup (copying every document into a cache no
/// batch hits, a tenth of a batch's time) or merge-join it against the whole index.
pub(crate) fn latest_task_data_join(tables: &Tables, instance: &str) -> String {
    format!(
        "LEFT JOIN LATERAL (
            SELECT data.data
              FROM {data} data
             WHERE data.hash = (SELECT t.json_data_hash
                                  FROM {tasks} t
                                 WHERE t.process_instance_id = {instance} AND t.state = 'COMPLETED'
                                 ORDER BY t.end_in_seconds DESC NULLS LAST, t.guid DESC
                                 LIMIT 1)) d ON true",
        tasks = tables.sql_name("task"),
        data = tables.sql_name("json_data"),
    )
}

/// The statements of a batch, prepared once per process and kept (per set of tables: a table
/// dropped and created again is another).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) enum Plan {
    LockJob { skip_locked: bool },
    LockJobAt { skip_locked: bool },
    Advance,
    LockInstances { tables: Tables, for_share: bool },
    Batch { insert: Insert, tables: Tables },
}

impl Plan {
    pub(super) fn sql(&self) -> String {
        match self {
            Plan::LockJob { skip_locked } => store::lock_sql(store::Find::ById, *skip_locked),
            Plan::LockJobAt { skip_locked } => store::lock_sql(store::Find::AtTid, *skip_locked),
            Plan::Advance => store::ADVANCE_SQL.to_owned(),
            Plan::LockInstances { tables, for_share } => format!(
                "SELECT array_agg(id ORDER BY id) FROM (
                     SELECT i.id::bigint AS id FROM {} i
                      WHERE i.process_model_identifier = $1 AND i.id >= $2 AND i.id <= $3
                      ORDER BY i.id LIMIT $4{}) batch",
                tables.sql_name("process_instance"),
                if *for_share { " FOR SHARE OF i" } else { "" }
            ),
            Plan::Batch { insert, tables } => batch_sql(tables, *insert),
        }
    }

    pub(super) fn argument_types(&self) -> Vec<PgOid> {
        const INT8: PgBuiltInOids = PgBuiltInOids::INT8OID;
        const TEXT: PgBuiltInOids = PgBuiltInOids::TEXTOID;
        const TEXTS: PgBuiltInOids = PgBuiltInOids::TEXTARRAYOID;
        const TID: PgBuiltInOids = PgBuiltInOids::TIDOID;
        const INT8S: PgBuiltInOids = PgBuiltInOids::INT8ARRAYOID;
        let types: &[PgBuiltInOids] = match self {
            Plan::LockJob { .. } => &[INT8],
            Plan::LockJobAt { .. } => &[INT8, TID],
            Plan::Advance => &[INT8, INT8, INT8, INT8, INT8, TEXT, TID],
            // The write time is computed once per batch, not twice per row.
            Plan::LockInstances { .. } => &[TEXT, INT8, INT8, INT8],
            Plan::Batch { .. } => &[INT8S, TEXTS, TEXTS, TEXTS, INT8],
        };
        types.iter().map(|t| PgOid::BuiltIn(*t)).collect()
    }
}

thread_local! {
    pub(super) static PLANS: RefCell<HashMap<Plan, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// Runs a kept plan and hands its first row (if any) to `read`.
pub(super) fn run_plan<R>(
    plan: Plan,
    args: &[DatumWithOid],
    read: impl FnOnce(Option<SpiHeapTupleData>) -> Result<R, pgrx::spi::Error>,
) -> R {
    Spi::connect_mut(|client| {
        let prepared = match PLANS.with_borrow(|plans| plans.get(&plan).cloned()) {
            Some(prepared) => prepared,
            None => {
                let sql = plan.sql();
                let prepared = Rc::new(
                    client
                        .prepare_mut(sql.as_str(), &plan.argument_types())?
                        .keep(),
                );
                PLANS.with_borrow_mut(|plans| plans.insert(plan, Rc::clone(&prepared)));
                prepared
            }
        };
        let table = client.update(&*prepared, None, args)?;
        let row = if table.is_empty() {
            None
        } else {
            table.first().get_heap_tuple()?
        };
        read(row)
    })
    .unwrap_or_else(|e| error!("backfill: batch statement failed: {e}"))
}

/// `extract(epoch FROM now())::bigint`: the transaction's start in epoch seconds, rounded.
pub(super) fn transaction_start_epoch() -> i64 {
    const POSTGRES_EPOCH_IN_UNIX_MICROS: i64 = 946_684_800 * 1_000_000;
    // SAFETY: the start timestamp of the current transaction.
    let since_2000 = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    (since_2000 + POSTGRES_EPOCH_IN_UNIX_MICROS + 500_000).div_euclid(1_000_000)
}

/// How a batch statement inserts its rows. A job starts with `New` and moves down the list
/// each time a batch fails with 23505, for the rest of its run in this process; a batch that
/// fails so is written again the next way, in a new subtransaction.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Insert {
    /// Every row, without ON CONFLICT: the unique index is the only check, and a row that
    /// is already there fails the batch. The fastest way, and the common case when a path
    /// is added: none of its rows exist yet.
    New,
    /// Rows of keys the instance has no row for, found by one index probe per instance,
    /// without ON CONFLICT: only a row someone else inserts after the statement's snapshot
    /// (a writer that does not lock the instance first) fails the batch.
    Missing,
    /// ON CONFLICT DO NOTHING: one speculative insertion a row (an index probe before it and
    /// a confirmation record in the WAL after it), safe against any concurrent insert.
    OnConflict,
    /// ON CONFLICT DO UPDATE for the keys whose path the job replaces.
    Overwrite,
}

impl Insert {
    /// The way to try after a batch written this way met a row that was there (23505).
    pub(super) fn after_conflict(self) -> Option<Insert> {
        match self {
            Insert::New => Some(Insert::Missing),
            Insert::Missing => Some(Insert::OnConflict),
            Insert::OnConflict | Insert::Overwrite => None,
        }
    }
}
