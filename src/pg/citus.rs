//! Citus: how the four tables are distributed, read from Citus's own catalog when Citus is
//! installed, and whether a backfill can serve that layout. A batch on distributed tables
//! (`batch::distributed`) relies on what is checked here: the three instance-keyed tables
//! hash-distributed by the instance id and co-located, so that an instance, its tasks and its
//! metadata rows are on one node; `json_data` anywhere (distributed, reference or local).

use crate::pg::query;
use pgrx::pg_sys::Oid;
use pgrx::prelude::*;

/// Where Citus keeps a table's rows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Placement {
    /// Not a Citus table, or a Citus local table: on the coordinator.
    Local,
    /// A copy on every node.
    Reference,
    /// Hash-distributed by `column`, in co-location group `colocation`.
    Hashed { column: String, colocation: i64 },
    /// Any other Citus table (append, range, single shard): nothing a batch can route by.
    Other,
}

impl Placement {
    /// For a NOTICE: "distributed by hash".
    pub fn describe(&self) -> String {
        match self {
            Placement::Local => "on the coordinator".into(),
            Placement::Reference => "a reference table".into(),
            Placement::Hashed { column, .. } => format!("distributed by {column}"),
            Placement::Other => "a Citus table of another kind".into(),
        }
    }
}

/// Why a layout cannot be served: the message (naming the table) and the statement that mends it.
#[derive(Debug)]
pub struct Refused {
    pub message: String,
    pub fix: String,
}

/// The layout of the four tables when any of them is a Citus table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Distributed {
    /// Shards of process_instance (one shard group each): a batch takes up to
    /// `backfill.batch_size` instances of each.
    pub shard_count: i64,
    pub data: Placement,
}

const LAYOUT_SQL: &str = "
SELECT n.i, p.partmethod::text, p.repmodel::text, p.colocationid::bigint,
       CASE WHEN p.partmethod OPERATOR(pg_catalog.=) 'h'
            THEN pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) END,
       (SELECT pg_catalog.count(*) FROM pg_catalog.pg_dist_shard s
         WHERE s.logicalrelid OPERATOR(pg_catalog.=) p.logicalrelid)
  FROM pg_catalog.unnest($1::pg_catalog.oid[]) WITH ORDINALITY AS n(relid, i)
  JOIN pg_catalog.pg_dist_partition p ON p.logicalrelid OPERATOR(pg_catalog.=) n.relid";

/// Whether Citus is installed in this database (its catalog is there).
fn citus_installed() -> bool {
    query::optional_value::<bool>(
        "SELECT pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL",
        &[],
    )
    .unwrap_or(false)
}

/// The placements of `tables` (process_instance, task, json_data, process_instance_metadata,
/// in that order) and process_instance's shard count; `None` when none is a Citus table.
fn placements(tables: &[Oid; 4]) -> Option<([Placement; 4], i64)> {
    if !citus_installed() {
        return None;
    }
    let mut found: [Placement; 4] = std::array::from_fn(|_| Placement::Local);
    let mut shard_count = 0;
    let mut any = false;
    Spi::connect(|client| {
        let rows = client.select(LAYOUT_SQL, None, &[tables.to_vec().into()])?;
        for row in rows {
            let i = row.get::<i64>(1)?.unwrap_or(0) as usize;
            let method = row.get::<String>(2)?.unwrap_or_default();
            let replication = row.get::<String>(3)?.unwrap_or_default();
            let colocation = row.get::<i64>(4)?.unwrap_or(0);
            let column = row.get::<String>(5)?;
            let shards = row.get::<i64>(6)?.unwrap_or(0);
            let Some(slot) = i.checked_sub(1).and_then(|i| found.get_mut(i)) else {
                continue;
            };
            any = true;
            *slot = match (method.as_str(), column) {
                ("h", Some(column)) => Placement::Hashed { column, colocation },
                ("n", _) if replication == "t" => Placement::Reference,
                // Citus local tables: no distribution column, no co-location group.
                ("n", _) if colocation == 0 => Placement::Local,
                _ => Placement::Other,
            };
            if i == 1 {
                shard_count = shards;
            }
        }
        Ok::<_, pgrx::spi::Error>(())
    })
    .unwrap_or_else(|e| error!("backfill: could not read Citus's catalog: {e}"));
    any.then_some((found, shard_count))
}

/// The layout of `tables` (as `placements`), checked: `Ok(None)` for tables Citus does not
/// distribute, an error naming the table and the statement that fixes it for a layout a batch
/// cannot serve.
pub fn layout(
    tables: &[Oid; 4],
    schema_sql: &str,
    value_not_null: bool,
) -> Result<Option<Distributed>, Refused> {
    let Some((placements, shard_count)) = placements(tables) else {
        return Ok(None);
    };
    let [instances, tasks, data, metadata] = placements;
    let name = |table: &str| format!("{schema_sql}.{table}");
    let refuse = |table: &str, what: &str, fix: String| Refused {
        message: format!("{} {what}", name(table)),
        fix,
    };
    let instance_colocation = match &instances {
        Placement::Hashed { column, colocation } if column == "id" => *colocation,
        _ => {
            return Err(refuse(
                "process_instance",
                "must be distributed by its id when a table backfill reads is a Citus table",
                format!(
                    "Distribute it: SELECT create_distributed_table('{}', 'id');",
                    name("process_instance")
                ),
            ))
        }
    };
    for (table, placement) in [("task", &tasks), ("process_instance_metadata", &metadata)] {
        match placement {
            Placement::Hashed { column, colocation }
                if column == "process_instance_id" && *colocation == instance_colocation => {}
            _ => {
                return Err(refuse(
                    table,
                    "must be distributed by process_instance_id, co-located with process_instance",
                    format!(
                        "An instance's tasks and metadata rows must be on its node: \
                         SELECT create_distributed_table('{}', 'process_instance_id', colocate_with => '{}');",
                        name(table),
                        name("process_instance")
                    ),
                ))
            }
        }
    }
    if data == Placement::Other {
        return Err(refuse(
            "json_data",
            "is a Citus table backfill cannot join by hash",
            format!(
                "Distribute it by hash, or make it a reference table: SELECT create_distributed_table('{}', 'hash');",
                name("json_data")
            ),
        ));
    }
    if !value_not_null {
        return Err(refuse(
            "process_instance_metadata",
            "must have a NOT NULL value column when it is distributed",
            "On Citus, backfill writes only the values a path finds (as SpiffWorkflow's own \
             NOT NULL column requires): ALTER TABLE ... ALTER COLUMN value SET NOT NULL."
                .into(),
        ));
    }
    Ok(Some(Distributed {
        shard_count: shard_count.max(1),
        data,
    }))
}
