//! Building the value a dotted path found in json text with memory in proportion to what its
//! 255 rendered characters need, not to its size. Pure, no PostgreSQL.
//!
//! Rendering writes at least one character for every value it visits (a container's bracket
//! comes before anything in it, a dict's key before its value), in the order a Python dict
//! holds them: a key at its first appearance, with its last value. So only the first
//! BUILT_VALUES values in that order can reach the first 255 characters, and of a string only
//! its first KEPT_CODE_POINTS code points (a number is kept as written: the json format shows
//! its text, Python's the double all of it makes; its text is at most the document's). A dict is read twice: once to find, for its first
//! keys, where their last values lie, then to build those. Nothing else is built; what is
//! passed over is only checked for its nesting.
//!
//! What a value can be refused for as a whole, nesting deeper than Python's `str()` goes,
//! depends on all of it: a value nested that deep is built whole (`jsontext` checks there is
//! room first), as are documents searched with a JSONPath.

use crate::extract::lexer::{Fault, Lexer, TextError};
use crate::extract::render::MAX_VALUE_CHARS;
use crate::extract::value::{PyStr, Value};
use indexmap::IndexMap;
use std::collections::HashMap;

/// The most values built: the ones after cannot reach the first MAX_VALUE_CHARS characters.
pub const BUILT_VALUES: usize = MAX_VALUE_CHARS + 1;
/// Of a string (or a key), the code points kept.
pub const KEPT_CODE_POINTS: usize = MAX_VALUE_CHARS + 1;

/// How many containers are nested in one another at most in `text` (a checked JSON value).
pub fn nesting(text: &str) -> Result<usize, TextError> {
    let mut lexer = Lexer::new(text);
    let mut deepest = 0;
    skip_value(&mut lexer, &mut deepest)?;
    Ok(deepest)
}

/// The value of `text` (a checked JSON value), cut to what rendering can show.
pub fn build_found(text: &str) -> Result<Value, TextError> {
    let mut lexer = Lexer::new(text);
    let mut budget = BUILT_VALUES;
    bounded(&mut lexer, &mut budget)
}

/// Builds the value at the lexer, at most `budget` values of it (recursion: at most
/// BUILT_VALUES levels, one value each).
fn bounded(lexer: &mut Lexer, budget: &mut usize) -> Result<Value, TextError> {
    *budget = budget.saturating_sub(1);
    lexer.whitespace();
    match lexer.peek() {
        Some(b'[') => {
            lexer.pos += 1;
            let mut items = Vec::new();
            lexer.whitespace();
            if lexer.eat(b']') {
                return Ok(Value::List(items));
            }
            loop {
                if *budget > 0 {
                    items.push(bounded(lexer, budget)?);
                } else {
                    skip_value(lexer, &mut 0)?;
                }
                lexer.whitespace();
                match lexer.next_byte() {
                    Some(b',') => {}
                    Some(b']') => return Ok(Value::List(items)),
                    _ => return Err(lexer.invalid(Fault::CommaOrEnd)),
                }
            }
        }
        Some(b'{') => {
            let members = last_values(lexer, *budget)?;
            let after = lexer.pos;
            let mut dict = IndexMap::new();
            for (key, at) in members {
                if *budget == 0 {
                    break;
                }
                // The key is written before its value.
                *budget -= 1;
                let value = if *budget > 0 {
                    let mut at_value = Lexer {
                        bytes: lexer.bytes,
                        pos: at,
                    };
                    bounded(&mut at_value, budget)?
                } else {
                    // Past the last character shown.
                    Value::Null
                };
                dict.insert(key, value);
            }
            lexer.pos = after;
            Ok(Value::Dict(dict))
        }
        Some(b'"') => Ok(Value::Str(capped_string(lexer)?.0)),
        _ => lexer.scalar_value(),
    }
}

/// An object's members as a Python dict holds them: its first keys in the order of their
/// first appearance, each with the offset of its last value; the lexer ends after the object.
/// Keys are noted while `room` allows a key and a value each, and up to the first key longer
/// than what is shown (nothing after it is shown); later repeats of the noted keys still move
/// their value.
fn last_values(lexer: &mut Lexer, room: usize) -> Result<Vec<(PyStr, usize)>, TextError> {
    lexer.pos += 1;
    lexer.whitespace();
    let mut members: Vec<(PyStr, usize)> = Vec::new();
    if lexer.eat(b'}') {
        return Ok(members);
    }
    let mut noted: HashMap<PyStr, usize> = HashMap::new();
    let mut noting = true;
    loop {
        lexer.whitespace();
        if lexer.peek() != Some(b'"') {
            return Err(lexer.invalid(Fault::MemberName));
        }
        let (key, cut) = capped_string(lexer)?;
        lexer.colon()?;
        lexer.whitespace();
        let at = lexer.pos;
        skip_value(lexer, &mut 0)?;
        // A key cut short is longer than any noted (whole) key: never a repeat of one.
        match noted.get(&key) {
            Some(&index) if !cut => members[index].1 = at,
            _ if noting => {
                if cut {
                    noting = false;
                } else {
                    noted.insert(key.clone(), members.len());
                }
                members.push((key, at));
                noting &= 2 * members.len() < room;
            }
            _ => {}
        }
        lexer.whitespace();
        match lexer.next_byte() {
            Some(b',') => {}
            Some(b'}') => return Ok(members),
            _ => return Err(lexer.invalid(Fault::CommaOrEnd)),
        }
    }
}

/// A string (the lexer at its quote): its first KEPT_CODE_POINTS code points, then, when it
/// is longer, a quote of each kind the rest holds, for `repr`'s choice of quotes (a place no
/// rendering reaches); and whether it was cut.
fn capped_string(lexer: &mut Lexer) -> Result<(PyStr, bool), TextError> {
    lexer.pos += 1;
    let mut out = PyStr::with_capacity(0);
    let mut kept = 0;
    let (mut single, mut double) = (false, false);
    loop {
        let start = lexer.pos;
        lexer.plain_run();
        // The run lies between ASCII bytes of a &str: whole characters.
        let run = std::str::from_utf8(&lexer.bytes[start..lexer.pos]).unwrap_or("");
        if kept < KEPT_CODE_POINTS {
            let end = run
                .char_indices()
                .nth(KEPT_CODE_POINTS - kept)
                .map_or(run.len(), |(at, _)| at);
            out.push_str(&run[..end]);
            kept += run[..end].chars().count();
            single |= run[end..].contains('\'');
        } else {
            // A plain run holds no double quote.
            single |= run.contains('\'');
        }
        match lexer.next_byte() {
            Some(b'"') => break,
            Some(b'\\') => lexer.escape(|code| {
                if kept < KEPT_CODE_POINTS {
                    out.push_code_point(code);
                    kept += 1;
                } else {
                    single |= code == u32::from(b'\'');
                    double |= code == u32::from(b'"');
                }
            })?,
            _ => return Err(lexer.invalid(Fault::StringEnd)),
        }
    }
    // Longer than what is shown (a key that long hides everything after it).
    let cut = kept > MAX_VALUE_CHARS;
    if single {
        out.push_str("'");
    }
    if double {
        out.push_str("\"");
    }
    Ok((out, cut))
}

/// Skips a checked JSON value, noting in `deepest` how many containers are nested in one
/// another in it. Iterative: any depth.
fn skip_value(lexer: &mut Lexer, deepest: &mut usize) -> Result<(), TextError> {
    let mut depth = 0usize;
    loop {
        lexer.whitespace();
        match lexer.peek() {
            Some(b'[' | b'{') => {
                lexer.pos += 1;
                depth += 1;
                *deepest = (*deepest).max(depth);
                continue;
            }
            Some(b']' | b'}') => {
                lexer.pos += 1;
                depth = depth.saturating_sub(1);
            }
            Some(b',' | b':') if depth > 0 => {
                lexer.pos += 1;
                continue;
            }
            _ => lexer.scalar()?,
        }
        if depth == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_found_value_builds_a_few_hundred_values() {
        let text = format!("[{}]", vec!["\"abcdefgh\""; 200_000].join(","));
        let Value::List(ref items) = build_found(&text).unwrap() else {
            panic!("a list");
        };
        assert!(items.len() < BUILT_VALUES);
        let huge = format!("\"{}\"", "y".repeat(1 << 20));
        let Value::Str(ref s) = build_found(&huge).unwrap() else {
            panic!("a string");
        };
        assert_eq!(s.as_bytes().len(), KEPT_CODE_POINTS);
    }

    #[test]
    fn nesting_counts_containers() {
        assert_eq!(nesting("1").unwrap(), 0);
        assert_eq!(nesting("[[], {\"a\": [[1]]}]").unwrap(), 4);
        assert_eq!(nesting("\"[[[\"").unwrap(), 0);
    }
}
