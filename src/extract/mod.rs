//! Pure code: what a path gives in a task document, rendered as Python's `str()` renders it.
//! No SPI, no shared memory (`jsonb` reads a jsonb datum in place).

pub mod document;
pub mod found;
pub mod jsonb;
pub mod jsontext;
pub mod lexer;
pub mod paths;
pub mod python;
pub mod render;
pub mod unicode_tables;
pub mod value;
