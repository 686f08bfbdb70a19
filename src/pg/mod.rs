//! Infrastructure over PostgreSQL: errors with their SQLSTATEs, subtransactions, whose privileges,
//! the settings, SPI helpers, the four tables a job reads and writes, and whether a database's
//! objects are the loaded library's.

pub mod citus;
pub mod error;
pub mod privilege;
pub mod query;
pub mod settings;
pub mod subxact;
pub mod table_checks;
pub mod table_code;
pub mod table_owners;
pub mod tables;
pub mod version;
pub mod window;
