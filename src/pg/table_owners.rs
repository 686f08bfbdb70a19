//! Whose privileges reading and writing a job's tables has: the role that queued the job, or
//! the tables' owner, never a role that the tables' controllers could act as.

use crate::pg::privilege;
use crate::pg::table_code::Code;
use crate::pg::tables::{Tables, Unusable};
use pgrx::pg_sys::Oid;
use pgrx::prelude::*;

impl Tables {
    /// The role whose privileges reading and writing these tables has on behalf of `role` (a
    /// job's queuing role, a function's caller): `role` itself when every controller has its
    /// privileges, so that nothing a controller put on the tables can act with more than it
    /// could already; otherwise the tables' owner, as PostgreSQL runs a table's maintenance as
    /// its owner, when `role` has the owner's privileges (the work never exceeds what `role`
    /// could do) and so does every controller. Anything else is refused (42501): a
    /// controller's code would act with privileges it lacks (another role's, a superuser's).
    ///
    /// The owner of every object whose code may run on the tables (`Tables::code`: a trigger's
    /// function, a domain, a policy's function, ...) counts as a controller: a role that owns a
    /// domain of a column decides what its CHECK runs as surely as the table's owner decides
    /// what a trigger runs.
    pub fn reader(&self, role: Oid) -> Result<Oid, Unusable> {
        let Some(controller) = self.lacking(role) else {
            return Ok(role);
        };
        if !has_privileges_of(role, self.owner) {
            return Err(self.not_for(role, controller));
        }
        match self.lacking(self.owner) {
            None => Ok(self.owner),
            Some(controller) => Err(self.controlled_by(controller)),
        }
    }

    /// The first controller, or owner of code on the tables, that lacks `whose` privileges.
    fn lacking(&self, whose: Oid) -> Option<Controller<'_>> {
        self.controllers
            .iter()
            .find(|&&controller| !has_privileges_of(controller, whose))
            .map(|&role| Controller::OfTables(role))
            .or_else(|| {
                self.code
                    .iter()
                    .find(|code| !has_privileges_of(code.owner, whose))
                    .map(Controller::OfCode)
            })
    }

    /// Why `role` may not use the tables: `controller` (usually their owner) would run code
    /// with its privileges, and it may not act as their owner instead.
    pub(in crate::pg) fn not_for(&self, role: Oid, controller: Controller) -> Unusable {
        let (role, owner) = (privilege::role_name(role), privilege::role_name(self.owner));
        Unusable {
            code: PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            message: format!(
                "role \"{role}\" may not use the tables of schema {}: {} controls what runs on \
                 them, so backfill reads and writes them only with the privileges of their \
                 owner \"{owner}\", which {role} does not have",
                self.schema_sql,
                controller.describe()
            ),
            hint: format!(
                "Queue the job, or call the function, as \"{owner}\" or a role that has its \
                 privileges (a member of it, or a superuser)."
            ),
        }
    }

    /// Why no role may use the tables: `controller` decides what runs on them but lacks the
    /// privileges of their owner, whose privileges reading them would have.
    pub(in crate::pg) fn controlled_by(&self, controller: Controller) -> Unusable {
        let owner = privilege::role_name(self.owner);
        if let Controller::OfCode(code) = controller {
            let code_owner = privilege::role_name(code.owner);
            return Unusable {
                code: PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                message: format!(
                    "role \"{code_owner}\" owns {}, which PostgreSQL runs when the tables of \
                     schema {} are read or written, but does not have the privileges of their \
                     owner \"{owner}\": backfill neither reads nor writes them",
                    code.object, self.schema_sql
                ),
                hint: format!(
                    "Give {} to \"{owner}\" (or to a role whose privileges \"{code_owner}\" \
                     has), or take it off the tables.",
                    code.object
                ),
            };
        }
        Unusable {
            code: PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            message: format!(
                "{} can change the tables of schema {} (it owns them or the schema, or may \
                 create triggers on them) but does not have the privileges of their owner \
                 \"{owner}\": backfill neither reads nor writes them",
                controller.describe(),
                self.schema_sql
            ),
            hint: format!(
                "Give the schema and its tables one owner (ALTER SCHEMA {} OWNER TO \"{owner}\"), \
                 or revoke TRIGGER on them from roles that lack \"{owner}\"'s privileges.",
                self.schema_sql
            ),
        }
    }
}

/// Whether `role` has the privileges of `whose` (is it, a member of it, or a superuser).
/// PUBLIC (`Oid::INVALID`) has no role's.
pub(in crate::pg) fn has_privileges_of(role: Oid, whose: Oid) -> bool {
    // SAFETY: a catalog lookup inside a transaction.
    role != Oid::INVALID && unsafe { pg_sys::has_privs_of_role(role, whose) }
}

/// A controller's name for messages: a role's, quoted, or PUBLIC.
pub(in crate::pg) fn controller_name(role: Oid) -> String {
    if role == Oid::INVALID {
        "PUBLIC".to_owned()
    } else {
        format!("role \"{}\"", privilege::role_name(role))
    }
}

/// Who decides what runs on the tables: a controller of the tables themselves, or the owner
/// of an object whose code runs on them.
#[derive(Clone, Copy)]
pub(in crate::pg) enum Controller<'a> {
    OfTables(Oid),
    OfCode(&'a Code),
}

impl Controller<'_> {
    fn describe(&self) -> String {
        match self {
            Controller::OfTables(role) => controller_name(*role),
            Controller::OfCode(code) => format!(
                "role \"{}\" (the owner of {})",
                privilege::role_name(code.owner),
                code.object
            ),
        }
    }
}
