//! The code PostgreSQL may run when a job's tables are read or written, and whose it is.
//!
//! Reading or writing a table runs far more than the table: its triggers' functions, its
//! CHECK constraints and the domains of its columns with theirs, defaults and generated
//! columns, index expressions, predicates and operator classes, row-level security policies
//! and rules (with the tables they read), and the input and output functions of column types.
//! Each of those objects has an owner who decides what it does. Walking `pg_depend` and those
//! catalogs from the tables finds every object that is not built in (nor one of this
//! extension's), with its owner, so that whose privileges a job reads with can be weighed
//! against all of them (`Tables::reader`), and so that the foreign-key fast path, which runs
//! its statement in replica mode, is taken only where no such code can run at all.
//!
//! The walk runs when the tables are first looked at in a process and again only after an
//! invalidation of a relation walked, or of a function, type or operator found
//! (`Code::watched`): never per batch.

use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;

/// An object whose code may run when the tables are read or written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Code {
    /// Its owner, who decides what it does.
    pub owner: Oid,
    /// What it is, as PostgreSQL describes it (`function shared.chk(text)`, `type meta`).
    pub object: String,
    /// It is a function (its body runs), not a type, operator, operator class or relation
    /// (whose functions, when not built in, are found as functions too).
    pub is_function: bool,
    /// The system cache its catalog row is in, with the hash of its key: an invalidation of
    /// that row (a new definition, a new owner, a constraint added to a domain) makes the
    /// tables be looked at again. `None` for relations, whose invalidations are relcache ones.
    pub watched: Option<(i32, u32)>,
    /// The relation, for a relation reached through a policy or a rule.
    pub relation: Option<Oid>,
}

const WALK_SQL: &str = "
WITH RECURSIVE reached(classid, objid) AS (
        SELECT 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid, r
          FROM pg_catalog.unnest($1::pg_catalog.oid[]) AS r
    UNION
        SELECT n.classid, n.objid
          FROM reached x
         CROSS JOIN LATERAL (
                -- What runs on a relation, and a domain's constraints.
                SELECT 'pg_catalog.pg_trigger'::pg_catalog.regclass::pg_catalog.oid, t.oid
                  FROM pg_catalog.pg_trigger t
                 WHERE x.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                   AND t.tgrelid OPERATOR(pg_catalog.=) x.objid
                UNION ALL
                SELECT 'pg_catalog.pg_policy'::pg_catalog.regclass::pg_catalog.oid, p.oid
                  FROM pg_catalog.pg_policy p
                 WHERE x.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                   AND p.polrelid OPERATOR(pg_catalog.=) x.objid
                UNION ALL
                SELECT 'pg_catalog.pg_rewrite'::pg_catalog.regclass::pg_catalog.oid, r.oid
                  FROM pg_catalog.pg_rewrite r
                 WHERE x.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                   AND r.ev_class OPERATOR(pg_catalog.=) x.objid
                UNION ALL
                SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass::pg_catalog.oid, c.oid
                  FROM pg_catalog.pg_constraint c
                 WHERE (x.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                        AND c.conrelid OPERATOR(pg_catalog.=) x.objid)
                    OR (x.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_type'::pg_catalog.regclass
                        AND c.contypid OPERATOR(pg_catalog.=) x.objid)
                UNION ALL
                SELECT 'pg_catalog.pg_attrdef'::pg_catalog.regclass::pg_catalog.oid, a.oid
                  FROM pg_catalog.pg_attrdef a
                 WHERE x.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                   AND a.adrelid OPERATOR(pg_catalog.=) x.objid
                UNION ALL
                SELECT 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid, i.indexrelid
                  FROM pg_catalog.pg_index i
                 WHERE x.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                   AND i.indrelid OPERATOR(pg_catalog.=) x.objid
                UNION ALL
                -- An operator class: the support functions and operators of its family.
                SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass::pg_catalog.oid, ap.amproc::pg_catalog.oid
                  FROM pg_catalog.pg_opclass o
                  JOIN pg_catalog.pg_amproc ap ON ap.amprocfamily OPERATOR(pg_catalog.=) o.opcfamily
                 WHERE x.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_opclass'::pg_catalog.regclass
                   AND o.oid OPERATOR(pg_catalog.=) x.objid
                UNION ALL
                SELECT 'pg_catalog.pg_operator'::pg_catalog.regclass::pg_catalog.oid, ao.amopopr
                  FROM pg_catalog.pg_opclass o
                  JOIN pg_catalog.pg_amop ao ON ao.amopfamily OPERATOR(pg_catalog.=) o.opcfamily
                 WHERE x.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_opclass'::pg_catalog.regclass
                   AND o.oid OPERATOR(pg_catalog.=) x.objid
                UNION ALL
                -- What an object's code calls or uses: functions, types (a column's domain, a
                -- domain's base type, a type's I/O functions), operators, operator classes;
                -- and the relations a policy or a rule reads or writes.
                SELECT d.refclassid, d.refobjid
                  FROM pg_catalog.pg_depend d
                 WHERE d.classid OPERATOR(pg_catalog.=) x.classid
                   AND d.objid OPERATOR(pg_catalog.=) x.objid
                   AND d.deptype OPERATOR(pg_catalog.=) 'n'
                   AND (d.refclassid OPERATOR(pg_catalog.=) ANY (ARRAY[
                            'pg_catalog.pg_proc'::pg_catalog.regclass, 'pg_catalog.pg_type'::pg_catalog.regclass,
                            'pg_catalog.pg_operator'::pg_catalog.regclass,
                            'pg_catalog.pg_opclass'::pg_catalog.regclass]::pg_catalog.oid[])
                        OR (d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                            AND x.classid OPERATOR(pg_catalog.=) ANY (ARRAY[
                                'pg_catalog.pg_policy'::pg_catalog.regclass,
                                'pg_catalog.pg_rewrite'::pg_catalog.regclass]::pg_catalog.oid[])))
             ) AS n(classid, objid)
)
SELECT coalesce(p.proowner, t.typowner, o.oprowner, oc.opcowner, c.relowner),
       pg_catalog.pg_describe_object(r.classid, r.objid, 0),
       r.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass,
       r.classid::pg_catalog.regclass::pg_catalog.text,
       r.objid
  FROM reached r
  LEFT JOIN pg_catalog.pg_proc p
         ON r.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass AND p.oid OPERATOR(pg_catalog.=) r.objid
  LEFT JOIN pg_catalog.pg_type t
         ON r.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_type'::pg_catalog.regclass AND t.oid OPERATOR(pg_catalog.=) r.objid
  LEFT JOIN pg_catalog.pg_operator o
         ON r.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_operator'::pg_catalog.regclass AND o.oid OPERATOR(pg_catalog.=) r.objid
  LEFT JOIN pg_catalog.pg_opclass oc
         ON r.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_opclass'::pg_catalog.regclass AND oc.oid OPERATOR(pg_catalog.=) r.objid
  LEFT JOIN pg_catalog.pg_class c
         ON r.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass AND c.oid OPERATOR(pg_catalog.=) r.objid
 WHERE r.objid OPERATOR(pg_catalog.>=) $2
   AND coalesce(p.proowner, t.typowner, o.oprowner, oc.opcowner, c.relowner) IS NOT NULL
   AND NOT (r.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
            AND r.objid OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.oid[]))
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend e
                     JOIN pg_catalog.pg_extension x ON x.oid OPERATOR(pg_catalog.=) e.refobjid
                    WHERE e.classid OPERATOR(pg_catalog.=) r.classid
                      AND e.objid OPERATOR(pg_catalog.=) r.objid
                      AND e.deptype OPERATOR(pg_catalog.=) 'e'
                      AND x.extname OPERATOR(pg_catalog.=) 'backfill')
 ORDER BY 2";

/// Every object not built in, nor this extension's, whose code PostgreSQL may run when
/// `relations` (the four tables with their partitions and children) are read or written.
/// Read with the catalogs' latest snapshot, like the rest of `Tables::of_schema`.
pub fn reachable(relations: &[Oid]) -> Vec<Code> {
    let first_user_oid = Oid::from(pg_sys::FirstNormalObjectId);
    without_jit(|| read(relations, first_user_oid))
}

fn read(relations: &[Oid], first_user_oid: Oid) -> Vec<Code> {
    Spi::connect(|client| {
        client
            .select(
                WALK_SQL,
                None,
                &[relations.to_vec().into(), first_user_oid.into()],
            )?
            .map(|row| {
                let catalog: String = row.get(4)?.unwrap_or_default();
                let oid: Oid = row.get(5)?.unwrap_or(Oid::INVALID);
                Ok(Code {
                    owner: row.get(1)?.unwrap_or(Oid::INVALID),
                    object: row.get(2)?.unwrap_or_default(),
                    is_function: row.get(3)?.unwrap_or(false),
                    watched: watched(&catalog, oid),
                    relation: (catalog == "pg_class").then_some(oid),
                })
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| error!("backfill: could not read what code runs on the tables: {e}"))
}

/// Runs `read` with `jit` off. The walk takes a few milliseconds, but the planner's estimate
/// for a recursive query over the catalogs can pass jit_above_cost on a database with many
/// functions, and compiling it would take half a second (measured: 500 ms against 3 ms).
fn without_jit<R>(read: impl FnOnce() -> R) -> R {
    // SAFETY: the save/set/restore protocol of a GUC nest level, as a function's SET clause
    // uses it; an ERROR in `read` restores the setting with the (sub)transaction's abort.
    let level = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"jit".as_ptr(),
            c"off".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        level
    };
    let result = read();
    // SAFETY: restores what NewGUCNestLevel saved above.
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    result
}

/// The system cache and key hash whose invalidation says an object of `catalog` changed.
fn watched(catalog: &str, oid: Oid) -> Option<(i32, u32)> {
    use pg_sys::SysCacheIdentifier as Cache;
    let cache = match catalog {
        "pg_proc" => Cache::PROCOID,
        "pg_type" => Cache::TYPEOID,
        "pg_operator" => Cache::OPEROID,
        "pg_opclass" => Cache::CLAOID,
        _ => return None,
    } as i32;
    // SAFETY: computes the hash of a one-key cache lookup; reads no catalog.
    let hash = unsafe {
        pg_sys::GetSysCacheHashValue(
            cache,
            pg_sys::Datum::from(oid),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
        )
    };
    Some((cache, hash))
}

/// The caches `Code::watched` names, for the callbacks that forget tables.
pub const WATCHED_CACHES: [pg_sys::SysCacheIdentifier::Type; 4] = [
    pg_sys::SysCacheIdentifier::PROCOID,
    pg_sys::SysCacheIdentifier::TYPEOID,
    pg_sys::SysCacheIdentifier::OPEROID,
    pg_sys::SysCacheIdentifier::CLAOID,
];
