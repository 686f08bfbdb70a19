//! The value a path finds, as Python's `json.loads` would hold it. Pure, no PostgreSQL.
//!
//! Not `serde_json::Value`: a Python string may hold a lone surrogate (`json.loads` keeps
//! `"\ud800"`), which a Rust `String` cannot, and a value may be nested as deep as Python
//! allows (thousands of levels), which recursive code would not survive. So strings are
//! WTF-8 (UTF-8 that also encodes lone surrogates) and nothing here recurses.

use indexmap::IndexMap;

/// A string as Python holds it: its code points in WTF-8.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PyStr {
    wtf8: Vec<u8>,
}

impl PyStr {
    /// An empty string with room for `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> PyStr {
        PyStr {
            wtf8: Vec::with_capacity(bytes),
        }
    }

    pub fn push_str(&mut self, s: &str) {
        self.wtf8.extend_from_slice(s.as_bytes());
    }

    /// Appends a code point, a lone surrogate (U+D800 to U+DFFF) included.
    pub fn push_code_point(&mut self, code: u32) {
        match char::from_u32(code) {
            Some(c) => {
                let mut buf = [0; 4];
                self.wtf8
                    .extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            // Only surrogates are not chars below 0x110000; WTF-8 writes them as UTF-8 would.
            None => self.wtf8.extend_from_slice(&[
                0xe0 | (code >> 12) as u8,
                0x80 | ((code >> 6) & 0x3f) as u8,
                0x80 | (code & 0x3f) as u8,
            ]),
        }
    }

    /// The code points, lone surrogates included.
    pub fn code_points(&self) -> CodePoints<'_> {
        CodePoints { rest: &self.wtf8 }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.wtf8
    }
}

impl From<&str> for PyStr {
    fn from(s: &str) -> PyStr {
        PyStr {
            wtf8: s.as_bytes().to_vec(),
        }
    }
}

/// The code points of a `PyStr`, as `u32` (a lone surrogate is not a `char`).
pub struct CodePoints<'s> {
    rest: &'s [u8],
}

impl Iterator for CodePoints<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let (&first, _) = self.rest.split_first()?;
        let (len, initial) = match first {
            0x00..=0x7f => (1, u32::from(first)),
            0xc0..=0xdf => (2, u32::from(first & 0x1f)),
            0xe0..=0xef => (3, u32::from(first & 0x0f)),
            _ => (4, u32::from(first & 0x07)),
        };
        // PyStr holds only what push_str and push_code_point wrote: whole sequences.
        let len = len.min(self.rest.len());
        let code = self.rest[1..len]
            .iter()
            .fold(initial, |code, &b| (code << 6) | u32::from(b & 0x3f));
        self.rest = &self.rest[len..];
        Some(code)
    }
}

/// The most memory a whole value built from JSON text (or from jsonb) takes, per byte of the
/// text, with serde_json's copy of it for a JSONPath: an item of one or two bytes (`0,`) is a
/// value of 64 bytes and serde_json's of 80, a vector holds up to twice what it needs and
/// holds the old and the new while it grows.
pub const WHOLE_BYTES_PER_TEXT_BYTE: usize = 160;

/// Whether this process may take the memory to build the whole value of `text_bytes` of JSON
/// (WHOLE_BYTES_PER_TEXT_BYTE each): `Err` with that many bytes when an allocation of that size
/// fails. Rust aborts the process when an allocation fails, where PostgreSQL raises an error
/// (a container's memory limit, `ulimit -v`): what is built whole is asked for here first.
pub fn room_for_whole(text_bytes: usize) -> Result<(), usize> {
    let bytes = text_bytes.saturating_mul(WHOLE_BYTES_PER_TEXT_BYTE);
    let mut probe: Vec<u8> = Vec::new();
    probe.try_reserve_exact(bytes).map_err(|_| bytes)
}

/// What `json.loads` makes of a JSON value.
#[derive(Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// A number as written: Python makes an `int` of it when it has no fraction and no
    /// exponent, a `float` otherwise.
    Number(Box<str>),
    Str(PyStr),
    List(Vec<Value>),
    /// Members in the order of their first appearance, each with its last value (a dict).
    Dict(IndexMap<PyStr, Value>),
}

impl Value {
    /// How many nested calls Python's `str()` of this value makes: 1 for a scalar or an empty
    /// container, one more for each level of nesting below. Python fails (RecursionError)
    /// beyond its recursion limit.
    pub fn str_levels(&self) -> usize {
        let mut deepest = 0;
        let mut pending: Vec<(&Value, usize)> = vec![(self, 1)];
        while let Some((value, level)) = pending.pop() {
            deepest = deepest.max(level);
            match value {
                Value::List(items) => pending.extend(items.iter().map(|v| (v, level + 1))),
                Value::Dict(members) => pending.extend(members.values().map(|v| (v, level + 1))),
                _ => {}
            }
        }
        deepest
    }

    /// The value of a `serde_json::Value` (jsonb's values and JSONPath's matches come as one).
    pub fn from_serde(value: &serde_json::Value) -> Value {
        convert(value, |value| match value {
            serde_json::Value::Null => Shape::Leaf(Value::Null),
            serde_json::Value::Bool(b) => Shape::Leaf(Value::Bool(*b)),
            serde_json::Value::Number(n) => Shape::Leaf(Value::Number(n.to_string().into())),
            serde_json::Value::String(s) => Shape::Leaf(Value::Str(PyStr::from(s.as_str()))),
            serde_json::Value::Array(items) => Shape::List(items.iter().collect()),
            serde_json::Value::Object(members) => Shape::Dict(
                members
                    .iter()
                    .map(|(k, v)| (PyStr::from(k.as_str()), v))
                    .collect(),
            ),
        })
    }

    /// The `serde_json::Value` of this value, for JSONPath: a lone surrogate becomes U+FFFD
    /// (a `String` cannot hold it).
    pub fn to_serde(&self) -> serde_json::Value {
        fn text(s: &PyStr) -> String {
            String::from_utf8_lossy(s.as_bytes()).into_owned()
        }
        convert(self, |value| match value {
            Value::Null => Shape::Leaf(serde_json::Value::Null),
            Value::Bool(b) => Shape::Leaf(serde_json::Value::Bool(*b)),
            Value::Number(n) => Shape::Leaf(
                n.parse::<serde_json::Number>()
                    .map_or(serde_json::Value::Null, serde_json::Value::Number),
            ),
            Value::Str(s) => Shape::Leaf(serde_json::Value::String(text(s))),
            Value::List(items) => Shape::List(items.iter().collect()),
            Value::Dict(members) => {
                Shape::Dict(members.iter().map(|(k, v)| (text(k), v)).collect())
            }
        })
    }
}

/// Dropping a deep value one level at a time would recurse as deep as it is nested.
impl Drop for Value {
    fn drop(&mut self) {
        let mut pending: Vec<Value> = Vec::new();
        take_children(self, &mut pending);
        while let Some(mut value) = pending.pop() {
            take_children(&mut value, &mut pending);
            // `value` has no children left: its own drop ends here.
        }
    }
}

fn take_children(value: &mut Value, into: &mut Vec<Value>) {
    match value {
        Value::List(items) => into.append(items),
        Value::Dict(members) => into.extend(members.drain(..).map(|(_, v)| v)),
        _ => {}
    }
}

/// One node of a tree being converted: a finished leaf, or a container's parts to convert.
enum Shape<'a, S, T: Tree> {
    Leaf(T),
    List(Vec<&'a S>),
    Dict(Vec<(T::Key, &'a S)>),
}

/// The containers of the trees `convert` builds.
trait Tree: Sized {
    type Key;
    fn list(items: Vec<Self>) -> Self;
    fn dict(members: Vec<(Self::Key, Self)>) -> Self;
}

impl Tree for Value {
    type Key = PyStr;
    fn list(items: Vec<Value>) -> Value {
        Value::List(items)
    }
    fn dict(members: Vec<(PyStr, Value)>) -> Value {
        Value::Dict(members.into_iter().collect())
    }
}

impl Tree for serde_json::Value {
    type Key = String;
    fn list(items: Vec<serde_json::Value>) -> serde_json::Value {
        serde_json::Value::Array(items)
    }
    fn dict(members: Vec<(String, serde_json::Value)>) -> serde_json::Value {
        serde_json::Value::Object(members.into_iter().collect())
    }
}

/// Converts a tree without recursion; `shape` tells what each source node is.
fn convert<'a, S, T: Tree>(root: &'a S, shape: impl Fn(&'a S) -> Shape<'a, S, T>) -> T {
    struct Open<'a, S, T: Tree> {
        keys: Option<Vec<T::Key>>,
        rest: std::vec::IntoIter<&'a S>,
        done: Vec<T>,
    }
    let mut stack: Vec<Open<'a, S, T>> = Vec::new();
    let mut visit = Some(root);
    let mut finished: Option<T> = None;
    loop {
        if let Some(source) = visit.take() {
            let (keys, parts) = match shape(source) {
                Shape::Leaf(leaf) => {
                    finished = Some(leaf);
                    (None, Vec::new())
                }
                Shape::List(items) => (None, items),
                Shape::Dict(members) => {
                    let (keys, parts): (Vec<_>, Vec<_>) = members.into_iter().unzip();
                    (Some(keys), parts)
                }
            };
            if finished.is_none() {
                stack.push(Open {
                    keys,
                    done: Vec::with_capacity(parts.len()),
                    rest: parts.into_iter(),
                });
            }
        }
        if let Some(done) = finished.take() {
            match stack.last_mut() {
                Some(open) => open.done.push(done),
                None => return done,
            }
        }
        let Some(open) = stack.last_mut() else {
            unreachable!("a finished root value has been returned")
        };
        match open.rest.next() {
            Some(part) => visit = Some(part),
            None => {
                let Some(open) = stack.pop() else {
                    unreachable!("the stack has the container just looked at")
                };
                finished = Some(match open.keys {
                    None => T::list(open.done),
                    Some(keys) => T::dict(keys.into_iter().zip(open.done).collect()),
                });
            }
        }
    }
}
