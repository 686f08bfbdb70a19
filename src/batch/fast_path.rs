//! The foreign-key fast path: a batch's rows checked against the instances it already locked,
//! instead of by a trigger a row, when nothing else would be skipped.

use crate::pg::tables::Tables;
use pgrx::pg_sys::Oid;
use pgrx::prelude::*;

/// Whether `role` may lock rows of `instances` FOR SHARE: it needs UPDATE on the table or on
/// some column of it.
pub(super) fn may_lock(role: Oid, instances: Oid) -> bool {
    let update = pg_sys::ACL_UPDATE as pg_sys::AclMode;
    // SAFETY: catalog lookups inside a transaction.
    unsafe {
        pg_sys::pg_class_aclcheck(instances, role, update) == pg_sys::AclResult::ACLCHECK_OK
            || pg_sys::pg_attribute_aclcheck_all(
                instances,
                role,
                update,
                pg_sys::AclMaskHow::ACLMASK_ANY,
            ) == pg_sys::AclResult::ACLCHECK_OK
    }
}

/// Whether the fast path gives exactly the triggers' guarantee for this batch, whose
/// instances this transaction holds FOR SHARE: the metadata table is a plain table (the rows
/// of a partitioned one go to its partitions, whose own triggers replica mode would skip too)
/// with no trigger and no rule but those of its foreign key to process_instance (on
/// process_instance_id), and no function that is not built in can run during the batch
/// statement (`Tables::code`): replica mode holds for everything the statement runs, so a
/// CHECK, a default, an index expression, a domain or a policy calling a function that
/// writes another table would write it with that table's triggers skipped.
///
/// `tables` are the batch's, from `Tables::locked_for`, which locked the metadata table ROW
/// EXCLUSIVE before it looked at them, held to commit: that conflicts with what CREATE
/// TRIGGER, CREATE RULE and ADD FOREIGN KEY take, so none of them can commit between this
/// look and the batch's commit; and taking the lock processed the invalidations of whatever
/// committed before it was granted, so `tables.code` and the relation cache read here are
/// current.
///
/// # Safety
/// Inside a transaction, with `tables` as `Tables::locked_for` gave them to this batch (the
/// metadata table locked ROW EXCLUSIVE).
pub(super) unsafe fn fast_path_holds(tables: &Tables) -> bool {
    if tables.code.iter().any(|code| code.is_function) {
        return false;
    }
    // SAFETY: catalog and relation-cache lookups inside a transaction; the relation is opened
    // and closed here, and its trigger and foreign-key lists are only read.
    unsafe {
        let column = pg_sys::get_attnum(tables.metadata, c"process_instance_id".as_ptr());
        let relation = pg_sys::RelationIdGetRelation(tables.metadata);
        if relation.is_null() {
            return false;
        }
        if (*(*relation).rd_rel).relkind != pg_sys::RELKIND_RELATION as std::ffi::c_char {
            pg_sys::RelationClose(relation);
            return false;
        }
        let foreign_key = instance_foreign_key(relation, tables.instances, column);
        let trigdesc = (*relation).trigdesc;
        let only_foreign_key = trigdesc.is_null()
            || (0..(*trigdesc).numtriggers as usize)
                .all(|i| Some((*(*trigdesc).triggers.add(i)).tgconstraint) == foreign_key);
        let no_rules = (*relation).rd_rules.is_null();
        pg_sys::RelationClose(relation);
        only_foreign_key && no_rules
    }
}

/// The constraint of the metadata table's foreign key on `column` to `instances`, if any.
///
/// # Safety
/// `relation` is open.
pub(super) unsafe fn instance_foreign_key(
    relation: pg_sys::Relation,
    instances: Oid,
    column: pg_sys::AttrNumber,
) -> Option<Oid> {
    // SAFETY (caller): the list belongs to the open relation's cache entry.
    unsafe {
        let keys = pg_sys::RelationGetFKeyList(relation);
        if keys.is_null() {
            return None;
        }
        (0..(*keys).length as usize)
            .map(|i| (*(*keys).elements.add(i)).ptr_value as *const pg_sys::ForeignKeyCacheInfo)
            .find(|&key| {
                (*key).confrelid == instances && (*key).nkeys == 1 && (*key).conkey[0] == column
            })
            .map(|key| (*key).conoid)
    }
}

/// Runs `work` (one batch statement) in replica mode, which skips the metadata table's
/// foreign-key triggers. The variable is set for this statement alone and put back however it
/// ends: through the setting (SET session_replication_role) the mode would also apply to the
/// job's own updates and every plan would be invalidated at each change.
pub(super) fn in_replica_mode<R>(work: impl FnOnce() -> R) -> R {
    // SAFETY: the backend global behind session_replication_role, read when triggers are
    // queued; restored before anything else runs.
    let saved = unsafe { pg_sys::SessionReplicationRole };
    // SAFETY: as above; a plain int of this backend, no other thread touches it.
    unsafe { pg_sys::SessionReplicationRole = pg_sys::SESSION_REPLICATION_ROLE_REPLICA as i32 };
    PgTryBuilder::new(std::panic::AssertUnwindSafe(work))
        // SAFETY: puts back the value read above, on success and on any error alike.
        .finally(|| unsafe { pg_sys::SessionReplicationRole = saved })
        .execute()
}
