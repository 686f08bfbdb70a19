//! backfill: keeps process-instance metadata complete, inside PostgreSQL.
//!
//! When a process model gains a metadata extraction path, a trigger enqueues a job and a
//! background worker fills the new key for every existing instance, one committed batch at a
//! time. See README.md and docs/ for the whole picture.

mod batch;
mod bgw;
mod extract;
mod job;
mod pg;
mod shmem;
mod sql_api;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
pgrx::extension_sql_file!(
    "../sql/jobs.sql",
    name = "jobs",
    requires = ["schema", sql_api::jobs::window_opens_at]
);
pgrx::extension_sql_file!("../sql/sync.sql", name = "sync", requires = ["schema"]);
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    pg::settings::init();
    shmem::init();
    bgw::launcher::init();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'backfill'"]
    }
}
