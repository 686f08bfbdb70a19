//! Whose privileges a piece of work runs with.
//!
//! A job runs with the privileges of the role that queued it: the batch statements run as that
//! role, restricted the way PostgreSQL restricts maintenance it runs on a table owner's behalf.
//! Job rows themselves are written only by this extension, as the bootstrap superuser, so that
//! no ordinary role needs (or has) write access to `backfill.job`.

use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;

/// The role whose privileges are in effect (`current_user`).
pub fn current_role() -> Oid {
    // SAFETY: reading the current user id.
    unsafe { pg_sys::GetUserId() }
}

/// Whether the current role has the privileges of `role` (is it, a member of it, or a
/// superuser): who may run or cancel a job queued by `role`.
pub fn acts_for(role: Oid) -> bool {
    // SAFETY: a catalog lookup inside a transaction.
    unsafe { pg_sys::has_privs_of_role(current_role(), role) }
}

/// The name of a role, or its OID in brackets when it no longer exists.
pub fn role_name(role: Oid) -> String {
    // SAFETY: GetUserNameFromId with noerr returns NULL for an unknown role.
    unsafe {
        let name = pg_sys::GetUserNameFromId(role, true);
        if name.is_null() {
            format!("<role {}>", role.to_u32())
        } else {
            std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned()
        }
    }
}

/// Whether `role` still exists.
pub fn role_exists(role: Oid) -> bool {
    // SAFETY: as above.
    unsafe { !pg_sys::GetUserNameFromId(role, true).is_null() }
}

/// Runs `work` as `role`, as VACUUM or REFRESH MATERIALIZED VIEW run code on a table owner's
/// behalf: with SECURITY_RESTRICTED_OPERATION (no SET ROLE, no temporary objects, no
/// PREPARE), and with every setting the work changed (SET, set_config, session-level ones too)
/// put back afterwards. Code of that role (a row-level security policy, a trigger on the
/// metadata table) can therefore neither act with more privileges nor leave anything behind
/// in a session that continues with other privileges.
pub fn as_role<R>(role: Oid, work: impl FnOnce() -> R) -> R {
    switched(role, pg_sys::SECURITY_RESTRICTED_OPERATION as i32, work)
}

/// Runs `work` (statements of this extension on `backfill.job`) as the bootstrap superuser,
/// which owns nothing a user defines. Without a switch when the current role is one.
pub fn as_job_table_owner<R>(work: impl FnOnce() -> R) -> R {
    // SAFETY: a catalog lookup inside a transaction.
    if unsafe { pg_sys::superuser() } {
        return work();
    }
    switched(Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID), 0, work)
}

fn switched<R>(role: Oid, extra_context: i32, work: impl FnOnce() -> R) -> R {
    let mut saved_role = Oid::INVALID;
    let mut saved_context = 0;
    // SAFETY: the save/switch/restore protocol of SetUserIdAndSecContext; an ERROR in `work`
    // is restored by transaction or subtransaction abort as well, which reset both.
    let nest_level = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_role, &mut saved_context);
        let nest_level = pg_sys::NewGUCNestLevel();
        pg_sys::SetUserIdAndSecContext(
            role,
            saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32 | extra_context,
        );
        nest_level
    };
    let result = PgTryBuilder::new(std::panic::AssertUnwindSafe(work))
        // SAFETY: as above: restores what was saved, on success and on any error alike.
        .finally(|| unsafe {
            pg_sys::AtEOXact_GUC(false, nest_level);
            pg_sys::SetUserIdAndSecContext(saved_role, saved_context);
        })
        .execute();
    result
}
