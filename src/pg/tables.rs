//! The four tables a job reads and writes: the extension's own in schema backfill, or an
//! application's (SpiffWorkflow's `public.process_instance`, `task`, `json_data`,
//! `process_instance_metadata`) once `backfill.attach` named their schema. Found and checked
//! from the catalogs; what the batch engine needs to know about their types is kept here, and
//! so is whose privileges reading and writing them may have (`Tables::reader`).

use crate::pg::citus::{self, Distributed};
use crate::pg::error::raise;
use crate::pg::privilege;
use crate::pg::query;
use crate::pg::table_code::{self, Code};
use pgrx::pg_sys::Oid;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// One of the four tables, for the statements that read only some of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Instances,
    Tasks,
    Data,
    Metadata,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Instances, Table::Tasks, Table::Data, Table::Metadata];
}

/// The four tables, by the names they have in every schema that holds them.
pub const NAMES: [&str; 4] = [
    "process_instance",
    "task",
    "json_data",
    "process_instance_metadata",
];

const INT4: Oid = pg_sys::INT4OID;
const INT8: Oid = pg_sys::INT8OID;
const TEXT: Oid = pg_sys::TEXTOID;
const VARCHAR: Oid = pg_sys::VARCHAROID;

/// The columns the engine uses, with the types it accepts for each (domains count as their
/// base type).
const COLUMNS: &[(&str, &str, &[Oid])] = &[
    ("process_instance", "id", &[INT4, INT8]),
    (
        "process_instance",
        "process_model_identifier",
        &[TEXT, VARCHAR],
    ),
    ("task", "guid", &[pg_sys::UUIDOID, TEXT, VARCHAR]),
    ("task", "process_instance_id", &[INT4, INT8]),
    ("task", "state", &[TEXT, VARCHAR]),
    ("task", "json_data_hash", &[TEXT, VARCHAR]),
    (
        "task",
        "end_in_seconds",
        &[pg_sys::NUMERICOID, INT4, INT8, pg_sys::FLOAT8OID],
    ),
    ("json_data", "hash", &[TEXT, VARCHAR]),
    ("json_data", "data", &[pg_sys::JSONOID, pg_sys::JSONBOID]),
    (
        "process_instance_metadata",
        "process_instance_id",
        &[INT4, INT8],
    ),
    ("process_instance_metadata", "key", &[TEXT, VARCHAR]),
    ("process_instance_metadata", "value", &[TEXT, VARCHAR]),
    (
        "process_instance_metadata",
        "created_at_in_seconds",
        &[INT4, INT8, pg_sys::NUMERICOID],
    ),
    (
        "process_instance_metadata",
        "updated_at_in_seconds",
        &[INT4, INT8, pg_sys::NUMERICOID],
    ),
];

/// The tables of one schema, checked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tables {
    pub schema: Oid,
    /// The schema's name, quoted for SQL text.
    pub schema_sql: String,
    pub instances: Oid,
    pub tasks: Oid,
    pub data: Oid,
    pub metadata: Oid,
    /// The owner of the metadata table.
    pub owner: Oid,
    /// `json_data.data` is json (text, read with serde_json), not jsonb.
    pub data_is_json: bool,
    /// `process_instance_metadata.value` is NOT NULL: a missing or null value gets no row.
    pub value_not_null: bool,
    /// `process_instance.id` is an integer (int4), not a bigint: a bound compared with it must
    /// be one (Citus casts the bounds of its distribution column to the column's type).
    pub instance_id_is_int4: bool,
    /// How Citus distributes the tables, when any of them is a Citus table.
    pub citus: Option<Distributed>,
    /// The roles that decide what code runs when the tables are read or written, with the
    /// privileges of whoever reads or writes them: the owner of the schema (which may drop and
    /// replace what is in it; for `pg_database_owner`, the database's owner), the owners of the
    /// four tables and of their partitions and inheritance children, and the roles granted
    /// TRIGGER on any of those (`Oid::INVALID` for PUBLIC).
    pub controllers: Vec<Oid>,
    /// Every object whose code PostgreSQL may run when the tables are read or written (their
    /// triggers' functions, domains, constraints, defaults, index expressions, policies,
    /// rules, ...), not built in, with its owner: each owner controls what runs as much as a
    /// controller does (`table_code`).
    pub code: Vec<Code>,
    /// The four tables and their partitions and children: a change of any of them (DDL, a new
    /// owner, a grant) makes this process read the catalogs again.
    pub(in crate::pg) relations: Vec<Oid>,
}

/// Why the tables of a schema cannot be used.
#[derive(Debug)]
pub struct Unusable {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub hint: String,
}

impl Unusable {
    pub fn raise(self) -> ! {
        raise(self.code, self.message, self.hint)
    }
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// One column of one of the four tables, as the catalog describes it.
struct Column {
    table: String,
    relation: Option<Oid>,
    relkind: Option<String>,
    owner: Option<Oid>,
    name: Option<String>,
    base_type: Oid,
    type_name: Option<String>,
    not_null: bool,
}

const COLUMNS_SQL: &str = "
SELECT n.name, c.oid, c.relkind::text, a.attname::text, a.atttypid,
       pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, c.relowner
  FROM pg_catalog.unnest($2::text[]) AS n(name)
  LEFT JOIN pg_catalog.pg_class c
         ON c.relname OPERATOR(pg_catalog.=) n.name AND c.relnamespace OPERATOR(pg_catalog.=) $1
  LEFT JOIN pg_catalog.pg_attribute a
         ON a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attnum OPERATOR(pg_catalog.>) 0
        AND NOT a.attisdropped";

impl Tables {
    /// The four tables of `schema`, checked: each exists as a table, and each column the engine
    /// uses exists with a type it accepts (SQLSTATE 42P01, 42703, 42804 otherwise).
    pub fn of_schema(schema: Oid) -> Result<Tables, Unusable> {
        with_latest_snapshot(|| Tables::read(schema))
    }

    /// `of_schema`, with the snapshot the catalogs are read with already taken.
    fn read(schema: Oid) -> Result<Tables, Unusable> {
        let schema_name = schema_name(schema).ok_or_else(|| Unusable {
            code: PgSqlErrorCode::ERRCODE_INVALID_SCHEMA_NAME,
            message: "the schema of the tables no longer exists (it was dropped or renamed)".into(),
            hint: "Attach the schema that holds the tables again, or detach.".into(),
        })?;
        let columns = read_columns(schema);
        let hint_tables = format!(
            "backfill needs tables {} in schema {schema_name}, with the columns SpiffWorkflow gives them.",
            NAMES.join(", ")
        );
        let mut oids = [Oid::INVALID; 4];
        for (i, table) in NAMES.iter().enumerate() {
            let found = columns.iter().find(|c| c.table == *table);
            match found.and_then(|c| c.relation.map(|oid| (oid, c.relkind.clone()))) {
                Some((oid, Some(kind))) if kind == "r" || kind == "p" => oids[i] = oid,
                Some(_) => {
                    return Err(Unusable {
                        code: PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                        message: format!("{schema_name}.{table} is not a table"),
                        hint: hint_tables,
                    })
                }
                None => {
                    return Err(Unusable {
                        code: PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                        message: format!("relation \"{schema_name}.{table}\" does not exist"),
                        hint: hint_tables,
                    })
                }
            }
        }
        let owner = columns
            .iter()
            .find(|c| c.table == "process_instance_metadata")
            .and_then(|c| c.owner)
            .unwrap_or(Oid::INVALID);
        let mut data_is_json = false;
        let mut value_not_null = false;
        let mut instance_id_is_int4 = false;
        for (table, name, accepted) in COLUMNS {
            let Some(column) = columns
                .iter()
                .find(|c| c.table == *table && c.name.as_deref() == Some(name))
            else {
                return Err(Unusable {
                    code: PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                    message: format!(
                        "column \"{name}\" of relation \"{schema_name}.{table}\" does not exist"
                    ),
                    hint: hint_tables,
                });
            };
            if !accepted.contains(&column.base_type) {
                return Err(Unusable {
                    code: PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                    message: format!(
                        "column \"{name}\" of relation \"{schema_name}.{table}\" is of type {}, which backfill cannot use",
                        column.type_name.as_deref().unwrap_or("unknown")
                    ),
                    hint: format!("Accepted types: {}.", type_names(accepted)),
                });
            }
            match (*table, *name) {
                ("json_data", "data") => data_is_json = column.base_type == pg_sys::JSONOID,
                ("process_instance_metadata", "value") => value_not_null = column.not_null,
                ("process_instance", "id") => instance_id_is_int4 = column.base_type == INT4,
                _ => {}
            }
        }
        let schema_sql = quoted(&schema_name);
        let citus =
            citus::layout(&oids, &schema_sql, value_not_null).map_err(|refused| Unusable {
                code: PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                message: refused.message,
                hint: refused.fix,
            })?;
        let (mut relations, controllers) = read_controllers(schema, &oids);
        let code = table_code::reachable(&relations);
        relations.extend(code.iter().filter_map(|c| c.relation));
        Ok(Tables {
            schema,
            schema_sql,
            instances: oids[0],
            tasks: oids[1],
            data: oids[2],
            metadata: oids[3],
            owner,
            data_is_json,
            value_not_null,
            instance_id_is_int4,
            citus,
            controllers,
            code,
            relations,
        })
    }

    /// `schema.table`, quoted, for SQL text.
    pub fn sql_name(&self, table: &str) -> String {
        format!("{}.{}", self.schema_sql, quoted(table))
    }

    /// The type of `json_data.data` (its base type, for a domain), qualified for SQL text: the
    /// documents are cast to it where they are handed to `extract_values`, so the call names
    /// one overload exactly and nothing planted beside it can match better.
    pub fn data_type_sql(&self) -> &'static str {
        if self.data_is_json {
            "pg_catalog.json"
        } else {
            "pg_catalog.jsonb"
        }
    }

    /// The smallest id process_instance.id can hold: where a job with no cursor yet starts.
    pub fn first_instance_id(&self) -> i64 {
        if self.instance_id_is_int4 {
            i64::from(i32::MIN)
        } else {
            i64::MIN
        }
    }

    /// The relation of `table`.
    pub fn oid(&self, table: Table) -> Oid {
        match table {
            Table::Instances => self.instances,
            Table::Tasks => self.tasks,
            Table::Data => self.data,
            Table::Metadata => self.metadata,
        }
    }
}

thread_local! {
    /// The tables found per schema by this process, until the catalog says one of them, or a
    /// schema, changed: a batch needs them every time, and reading the catalog for them costs
    /// as much as a small batch's own work.
    static FOUND: RefCell<HashMap<u32, Tables>> = RefCell::new(HashMap::new());
    /// Set when an invalidation arrived while FOUND was in use: forget everything next time.
    static STALE: Cell<bool> = const { Cell::new(false) };
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}

/// The schema of the tables a job queued now would use: the attached one, or backfill.
/// `Oid::INVALID` when the attached schema is gone (dropped, or renamed: the attachment
/// holds its name), which `Tables::of_schema` then says.
pub fn current_schema() -> Oid {
    query::optional_value::<Oid>(
        "SELECT n.oid FROM pg_catalog.pg_namespace n
          WHERE n.nspname = coalesce((SELECT a.schema_name FROM backfill.attachment a), 'backfill')",
        &[],
    )
    .unwrap_or(Oid::INVALID)
}

impl Tables {
    /// The tables a job queued now would use (the attached ones, or backfill's own), with
    /// `reading` locked (`locked`), and the role whose privileges reading them has for the
    /// current role (`reader`); raises what makes them unusable or refused.
    pub fn current_for_caller(reading: &[Table]) -> (Tables, Oid) {
        Tables::for_caller(reading).unwrap_or_else(|unusable| unusable.raise())
    }

    /// `current_for_caller`, with what makes the tables unusable to the caller returned.
    pub fn for_caller(reading: &[Table]) -> Result<(Tables, Oid), Unusable> {
        let tables = Tables::locked(current_schema(), reading)?;
        let reader = tables.reader(privilege::current_role())?;
        Ok((tables, reader))
    }

    /// The tables of `schema` as `remembered`, those of them the statements that follow read
    /// (`reading`) locked ACCESS SHARE to the end of the transaction before they are looked
    /// at, so that what is checked is what those statements read and write: until then none
    /// of them can be dropped, renamed, altered, replaced by a view or given to another owner.
    pub fn locked(schema: Oid, reading: &[Table]) -> Result<Tables, Unusable> {
        Tables::locked_for(schema, reading, None)
    }

    /// `locked`, with `writing` (one of `reading`) locked ROW EXCLUSIVE, as the statement that
    /// writes it would lock it: every table lock the statements take is then taken before the
    /// check, so nothing committed while one of them was waited for goes unchecked (a new
    /// owner of a function that runs on the write, given away while the batch waited), and a
    /// batch waits for a lock such as CREATE INDEX's before it holds any row of the
    /// application's.
    pub fn locked_for(
        schema: Oid,
        reading: &[Table],
        writing: Option<Table>,
    ) -> Result<Tables, Unusable> {
        loop {
            let tables = Tables::remembered(schema)?;
            for &table in reading {
                let mode = if Some(table) == writing {
                    pg_sys::RowExclusiveLock
                } else {
                    pg_sys::AccessShareLock
                };
                // SAFETY: a relation lock inside a transaction; a relation dropped meanwhile
                // leaves a lock on nothing, released at the end of the transaction.
                unsafe { pg_sys::LockRelationOid(tables.oid(table), mode as pg_sys::LOCKMODE) };
            }
            // Waiting for a lock processes the invalidations of what committed meanwhile: when
            // one concerned these tables, what is there now is looked up and locked again.
            if Tables::remembered(schema)? == tables {
                return Ok(tables);
            }
        }
    }

    /// `of_schema`, remembered until an invalidation of one of the tables or of their
    /// partitions and children (DDL, a change of owner, a grant), of any schema (a rename, a
    /// new owner) or of the database (a new owner) makes this process read the catalog again.
    pub fn remembered(schema: Oid) -> Result<Tables, Unusable> {
        if !WATCHING.get() {
            // SAFETY: registers process-lifetime callbacks (once; PostgreSQL keeps a few
            // slots for them) that only clear this process's memory.
            unsafe {
                pg_sys::CacheRegisterRelcacheCallback(
                    Some(forget_relation),
                    pg_sys::Datum::from(0),
                );
                pg_sys::CacheRegisterSyscacheCallback(
                    pg_sys::SysCacheIdentifier::NAMESPACEOID as std::ffi::c_int,
                    Some(forget_schemas),
                    pg_sys::Datum::from(0),
                );
                // The database's owner stands for pg_database_owner among the controllers.
                pg_sys::CacheRegisterSyscacheCallback(
                    pg_sys::SysCacheIdentifier::DATABASEOID as std::ffi::c_int,
                    Some(forget_schemas),
                    pg_sys::Datum::from(0),
                );
                for cache in table_code::WATCHED_CACHES {
                    pg_sys::CacheRegisterSyscacheCallback(
                        cache as std::ffi::c_int,
                        Some(forget_code),
                        pg_sys::Datum::from(0),
                    );
                }
            }
            WATCHING.set(true);
        }
        if STALE.replace(false) {
            FOUND.with_borrow_mut(HashMap::clear);
        }
        if let Some(tables) = FOUND.with_borrow(|found| found.get(&schema.to_u32()).cloned()) {
            return Ok(tables);
        }
        let tables = Tables::of_schema(schema)?;
        FOUND.with_borrow_mut(|found| found.insert(schema.to_u32(), tables.clone()));
        Ok(tables)
    }
}

/// Forgets the tables a relation invalidation touches.
// SAFETY (caller): a relcache callback (CacheRegisterRelcacheCallback), called by PostgreSQL
// in this backend; it touches only this process's thread-local cache.
unsafe extern "C-unwind" fn forget_relation(_arg: pg_sys::Datum, relation: Oid) {
    FOUND.with(|found| match found.try_borrow_mut() {
        Ok(mut found) if relation == Oid::INVALID => found.clear(),
        Ok(mut found) => found.retain(|_, t| !t.relations.contains(&relation)),
        Err(_) => STALE.set(true),
    });
}

/// Forgets the tables on which code whose catalog row changed may run (a function replaced or
/// given away, a constraint added to a domain); everything when the whole cache is reset.
// SAFETY (caller): a syscache callback (CacheRegisterSyscacheCallback), as below.
unsafe extern "C-unwind" fn forget_code(_arg: pg_sys::Datum, cache: std::ffi::c_int, hash: u32) {
    FOUND.with(|found| match found.try_borrow_mut() {
        Ok(mut found) if hash == 0 => found.clear(),
        Ok(mut found) => {
            found.retain(|_, t| !t.code.iter().any(|c| c.watched == Some((cache, hash))))
        }
        Err(_) => STALE.set(true),
    });
}

/// Runs `read` (catalog reads through SPI) with the latest snapshot active: SPI reads with the
/// active snapshot while the transaction has written nothing, and a snapshot taken before a
/// lock was waited for would miss what committed while it was waited for (a new owner and
/// the code it added, committed together just before the lock was granted).
fn with_latest_snapshot<R>(read: impl FnOnce() -> R) -> R {
    // SAFETY: inside a transaction; the snapshot is popped when `read` returns, and when it
    // raises, the (sub)transaction's abort pops it with everything above it.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot()) };
    let result = read();
    // SAFETY: pops the snapshot pushed above, which `read` left on top.
    unsafe { pg_sys::PopActiveSnapshot() };
    result
}

/// Forgets everything: a schema or the database changed.
// SAFETY (caller): a syscache callback (CacheRegisterSyscacheCallback), as above.
unsafe extern "C-unwind" fn forget_schemas(
    _arg: pg_sys::Datum,
    _cache: std::ffi::c_int,
    _hash: u32,
) {
    FOUND.with(|found| match found.try_borrow_mut() {
        Ok(mut found) => found.clear(),
        Err(_) => STALE.set(true),
    });
}

fn read_columns(schema: Oid) -> Vec<Column> {
    let names: Vec<String> = NAMES.iter().map(|n| (*n).to_owned()).collect();
    Spi::connect(|client| {
        client
            .select(COLUMNS_SQL, None, &[schema.into(), names.into()])?
            .map(|row| {
                let type_oid: Option<Oid> = row.get(5)?;
                Ok(Column {
                    table: row.get(1)?.unwrap_or_default(),
                    relation: row.get(2)?,
                    relkind: row.get(3)?,
                    name: row.get(4)?,
                    // SAFETY: a catalog-cache lookup inside a transaction.
                    base_type: type_oid.map_or(Oid::INVALID, |t| unsafe { pg_sys::getBaseType(t) }),
                    type_name: row.get(6)?,
                    not_null: row.get(7)?.unwrap_or(false),
                    owner: row.get(8)?,
                })
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| error!("backfill: could not read the columns of the tables: {e}"))
}

/// The four tables `oids` with their partitions and inheritance children, and the roles that
/// control them (`Tables::controllers`), distinct.
fn read_controllers(schema: Oid, oids: &[Oid; 4]) -> (Vec<Oid>, Vec<Oid>) {
    const SQL: &str = "
WITH RECURSIVE tree(relid) AS (
        SELECT pg_catalog.unnest($2::pg_catalog.oid[])
    UNION
        SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree t ON i.inhparent OPERATOR(pg_catalog.=) t.relid
)
SELECT ARRAY(SELECT t.relid FROM tree t),
       ARRAY(SELECT DISTINCT r.role FROM (
                 SELECT c.relowner AS role FROM pg_catalog.pg_class c
                  WHERE c.oid OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT t.relid FROM tree t))
                 UNION
                 SELECT a.grantee FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
                  WHERE c.oid OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT t.relid FROM tree t))
                    AND a.privilege_type OPERATOR(pg_catalog.=) 'TRIGGER'
                 UNION
                 SELECT CASE WHEN n.nspowner OPERATOR(pg_catalog.=) $3 THEN d.datdba ELSE n.nspowner END
                   FROM pg_catalog.pg_namespace n, pg_catalog.pg_database d
                  WHERE n.oid OPERATOR(pg_catalog.=) $1
                    AND d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()) r)";
    let tables: Vec<Oid> = oids.to_vec();
    let database_owner = Oid::from(pg_sys::ROLE_PG_DATABASE_OWNER);
    Spi::connect(|client| {
        let row = client
            .select(
                SQL,
                Some(1),
                &[schema.into(), tables.into(), database_owner.into()],
            )?
            .first();
        Ok::<_, pgrx::spi::Error>((
            row.get::<Vec<Oid>>(1)?.unwrap_or_default(),
            row.get::<Vec<Oid>>(2)?.unwrap_or_default(),
        ))
    })
    .unwrap_or_else(|e| error!("backfill: could not read who controls the tables: {e}"))
}

fn schema_name(schema: Oid) -> Option<String> {
    // SAFETY: a catalog-cache lookup; NULL when there is no such schema.
    let name = unsafe { pg_sys::get_namespace_name(schema) };
    if name.is_null() {
        return None;
    }
    // SAFETY: a palloc'd C string from the catalog.
    Some(
        unsafe { std::ffi::CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// An identifier quoted as PostgreSQL quotes it (catalog names hold no NUL).
fn quoted(name: &str) -> String {
    let c_name = std::ffi::CString::new(name).unwrap_or_default();
    // SAFETY: quote_identifier reads a NUL-terminated string and returns it or a palloc'd copy.
    unsafe { std::ffi::CStr::from_ptr(pg_sys::quote_identifier(c_name.as_ptr())) }
        .to_string_lossy()
        .into_owned()
}

fn type_names(types: &[Oid]) -> String {
    types
        .iter()
        .map(|&t| match t {
            INT4 => "integer",
            INT8 => "bigint",
            TEXT => "text",
            VARCHAR => "character varying",
            pg_sys::UUIDOID => "uuid",
            pg_sys::NUMERICOID => "numeric",
            pg_sys::FLOAT8OID => "double precision",
            pg_sys::JSONOID => "json",
            pg_sys::JSONBOID => "jsonb",
            _ => "?",
        })
        .collect::<Vec<_>>()
        .join(", ")
}
