//! The Python whose `json.loads` and `str()` backfill reproduces (`backfill.python_version`):
//! which characters its `repr` escapes and how deep it nests. Pure, no PostgreSQL.

use crate::extract::unicode_tables::{
    PRINTABLE_3_11, PRINTABLE_3_12, PRINTABLE_3_13, PRINTABLE_3_14,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PythonVersion {
    V3_11,
    V3_12,
    V3_13,
    V3_14,
}

impl PythonVersion {
    /// As backfill.python_version writes it.
    pub fn name(self) -> &'static str {
        match self {
            PythonVersion::V3_11 => "3.11",
            PythonVersion::V3_12 => "3.12",
            PythonVersion::V3_13 => "3.13",
            PythonVersion::V3_14 => "3.14",
        }
    }

    /// The most containers nested in one another that `json.loads` reads; a deeper document
    /// raises RecursionError, so SpiffWorkflow gets no data for the instance at all.
    ///
    /// Measured with `python -c` on each version (scripts/differential checks them): 3.11
    /// counts Python frames and C calls against sys.getrecursionlimit() (1000) together; 3.12
    /// and 3.13 count C calls against a fixed limit (1500, 10000). SpiffWorkflow calls from
    /// deeper in its own stack, so its limit is a few levels lower (on 3.11, by as many as its
    /// frames). Python 3.14 bounds C recursion by the stack's size instead of a count, which
    /// was not measured here: it gets 3.13's limits.
    pub fn load_depth(self) -> usize {
        match self {
            PythonVersion::V3_11 => 995,
            PythonVersion::V3_12 => 1497,
            PythonVersion::V3_13 | PythonVersion::V3_14 => 9998,
        }
    }

    /// The most nested calls `str()` of a value makes before RecursionError (see
    /// `Value::str_levels`), measured as `load_depth` was.
    pub fn str_depth(self) -> usize {
        match self {
            PythonVersion::V3_11 => 999,
            PythonVersion::V3_12 => 1497,
            PythonVersion::V3_13 | PythonVersion::V3_14 => 9999,
        }
    }

    /// Python's `str.isprintable()` for one code point (a lone surrogate included): what
    /// `repr` prints as it is rather than as an escape.
    pub fn is_printable(self, code: u32) -> bool {
        if code < 0x7f {
            return code >= 0x20;
        }
        let table = match self {
            PythonVersion::V3_11 => PRINTABLE_3_11,
            PythonVersion::V3_12 => PRINTABLE_3_12,
            PythonVersion::V3_13 => PRINTABLE_3_13,
            PythonVersion::V3_14 => PRINTABLE_3_14,
        };
        // The last range starting at or below `code`, if it reaches it.
        let after = table.partition_point(|&(start, _)| start <= code);
        after > 0 && code <= table[after - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printability_follows_each_versions_unicode_data() {
        use PythonVersion::*;
        let all = [V3_11, V3_12, V3_13, V3_14];
        for v in all {
            assert!(v.is_printable(u32::from(' ')));
            assert!(v.is_printable(u32::from('~')));
            assert!(!v.is_printable(0x7f));
            assert!(!v.is_printable(0x0a));
            assert!(v.is_printable(u32::from('é')));
            assert!(v.is_printable(u32::from('東')));
            assert!(v.is_printable(0x1f389)); // 🎉
            assert!(!v.is_printable(0xa0)); // no-break space, Zs
            assert!(!v.is_printable(0xad)); // soft hyphen, Cf
            assert!(!v.is_printable(0xd800)); // a surrogate, Cs
            assert!(!v.is_printable(0xe000)); // private use, Co
            assert!(!v.is_printable(0x10ffff)); // a noncharacter, Cn
        }
        // U+1C89 CYRILLIC CAPITAL LETTER TJE: Unicode 16.0.
        assert_eq!(
            all.map(|v| v.is_printable(0x1c89)),
            [false, false, false, true]
        );
        // U+1FAE8 SHAKING FACE: Unicode 15.0.
        assert_eq!(
            all.map(|v| v.is_printable(0x1fae8)),
            [false, true, true, true]
        );
        // U+2FFC IDEOGRAPHIC DESCRIPTION CHARACTER SURROUND FROM RIGHT: Unicode 15.1.
        assert_eq!(
            all.map(|v| v.is_printable(0x2ffc)),
            [false, false, true, true]
        );
    }
}
