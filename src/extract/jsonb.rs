//! Reading a jsonb (or json) argument in place.
//!
//! pgrx's `JsonB` turns the whole document into text and parses it again. Task data can be
//! large and a batch reads one document per instance, so a dotted path is followed on the
//! binary jsonb with PostgreSQL's own lookup, and only the value found is converted. A json
//! argument is lent as its text, for `jsontext` to read.

use crate::extract::found::{BUILT_VALUES, KEPT_CODE_POINTS};
use crate::extract::value::{PyStr, Value as PyValue};
use indexmap::IndexMap;
use pgrx::callconv::{Arg, ArgAbi};
use pgrx::datum::UnboxDatum;
use pgrx::nullable::Nullable;
use pgrx::prelude::*;
use pgrx::{direct_function_call, impl_sql_translatable};
use std::ffi::{c_char, c_int, CStr};
use std::mem::MaybeUninit;
use std::ptr::NonNull;

/// A detoasted jsonb argument, borrowed for the duration of the function call.
pub struct JsonbArg {
    jsonb: NonNull<pg_sys::Jsonb>,
}

impl FromDatum for JsonbArg {
    // SAFETY (caller): `datum` is a jsonb datum of the current call, not NULL unless
    // `is_null` (pgrx's argument unboxing guarantees both).
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            return None;
        }
        // Full detoast (not packed): the container header must sit at its aligned offset.
        // SAFETY: a varlena datum (above); the copy, if one is made, lives in the call's
        // memory context, as long as the argument is borrowed.
        let detoasted = unsafe { pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) };
        NonNull::new(detoasted.cast()).map(|jsonb| JsonbArg { jsonb })
    }
}

/// A function argument read through `FromDatum` (which borrows the detoasted value for the
/// call), declared to SQL as `$sql`.
macro_rules! borrowed_argument {
    ($type:ty, $sql:literal) => {
        // SAFETY: the type is declared to SQL as `$sql` (below), so PostgreSQL passes only
        // that type's datums, which its FromDatum reads.
        unsafe impl<'fcx> ArgAbi<'fcx> for $type {
            // SAFETY (caller): pgrx calls this only for a STRICT function's argument, never
            // NULL (the panic cannot be reached from SQL).
            unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
                let index = arg.index();
                // SAFETY: the argument is of this type (the impl's SAFETY note).
                unsafe { arg.unbox_arg_using_from_datum() }
                    .unwrap_or_else(|| panic!("argument {index} must not be null"))
            }

            // SAFETY (caller): as above; a NULL becomes Nullable::Null.
            unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
                // SAFETY: the argument is of this type (the impl's SAFETY note).
                unsafe { arg.unbox_arg_using_from_datum() }.into()
            }
        }

        impl_sql_translatable!($type, arg_only = $sql);
    };
}

borrowed_argument!(JsonbArg, "jsonb");

// What reading a jsonb column of a heap tuple in place needs (PgHeapTuple::get_by_name).
impl IntoDatum for JsonbArg {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.jsonb.as_ptr()))
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// SAFETY: the datum is a jsonb, as get_by_name checks against the column's type first.
unsafe impl UnboxDatum for JsonbArg {
    type As<'src> = JsonbArg;

    unsafe fn unbox<'src>(datum: pgrx::datum::Datum<'src>) -> JsonbArg
    where
        Self: 'src,
    {
        // SAFETY: a jsonb datum (the impl's SAFETY note), not NULL (get_by_name unboxes only
        // values that are there).
        unsafe { JsonbArg::from_polymorphic_datum(datum.sans_lifetime(), false, pg_sys::JSONBOID) }
            .expect("a jsonb datum that is not NULL")
    }
}

/// A jsonb value read from a query and returned as it is: copied (detoasted) into the memory
/// of the function call that reads it, never converted to text and back (serde would also
/// refuse documents nested deeper than it recurses).
pub struct JsonbResult {
    datum: pg_sys::Datum,
}

impl FromDatum for JsonbResult {
    // SAFETY (caller): `datum` is a jsonb datum valid in the current memory context; it is
    // only kept, never read here.
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        (!is_null).then_some(JsonbResult { datum })
    }

    // SAFETY (caller): as above; SPI's result, valid until the copy below is made.
    unsafe fn from_datum_in_memory_context(
        mut memory_context: pgrx::PgMemoryContexts,
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            return None;
        }
        // SAFETY: `datum` is a jsonb (try_from_datum_in_memory_context checked the type); the
        // copy lives in `memory_context`, which outlives the query's own memory.
        let copy = memory_context
            .switch_to(|_| unsafe { pg_sys::pg_detoast_datum_copy(datum.cast_mut_ptr()) });
        Some(JsonbResult {
            datum: pg_sys::Datum::from(copy),
        })
    }
}

impl IntoDatum for JsonbResult {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.datum)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// SAFETY: the datum is a jsonb in the function call's memory (see from_datum_in_memory_context).
unsafe impl pgrx::callconv::BoxRet for JsonbResult {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        // SAFETY: a jsonb datum of this call, returned as the function's result.
        unsafe { fcinfo.return_raw_datum(self.datum) }
    }
}

impl_sql_translatable!(JsonbResult, "jsonb");

/// A json argument (detoasted, not copied), borrowed for the duration of the function call.
pub struct JsonTextArg {
    json: NonNull<pg_sys::varlena>,
}

impl JsonTextArg {
    /// The document's text; `None` when it is not UTF-8 (a database in another encoding).
    pub fn text(&self) -> Option<&str> {
        // SAFETY: `json` points at a detoasted varlena for the whole call.
        let bytes = unsafe {
            let varlena = self.json.as_ptr();
            std::slice::from_raw_parts(
                pgrx::varlena::vardata_any(varlena).cast::<u8>(),
                pgrx::varlena::varsize_any_exhdr(varlena),
            )
        };
        std::str::from_utf8(bytes).ok()
    }
}

impl FromDatum for JsonTextArg {
    // SAFETY (caller): `datum` is a json (varlena) datum of the current call, not NULL unless
    // `is_null`.
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            return None;
        }
        // SAFETY: a varlena datum (above); a packed detoast is enough for bytes read as text,
        // and the copy, if any, lives as long as the call.
        let detoasted = unsafe { pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr()) };
        NonNull::new(detoasted).map(|json| JsonTextArg { json })
    }
}

borrowed_argument!(JsonTextArg, "json");

/// A document nested deeper than JSONPath evaluation is allowed to go.
#[derive(Debug, PartialEq, Eq)]
pub struct TooDeep {
    pub limit: usize,
}

/// Containers nested deeper than this are not converted where only a bounded copy is wanted
/// (`to_serde_capped`): metadata_extraction_paths are read two levels down.
const CAPPED_DEPTH: usize = crate::extract::render::MAX_VALUE_CHARS + 1;

impl JsonbArg {
    fn root(&self) -> *mut pg_sys::JsonbContainer {
        // SAFETY: `jsonb` points at a detoasted Jsonb for the whole call.
        unsafe { &raw mut (*self.jsonb.as_ptr()).root }
    }

    /// The size of the document in bytes (binary jsonb, about its text's size).
    pub fn bytes(&self) -> usize {
        // SAFETY: `jsonb` points at a detoasted varlena for the whole call (4-byte header).
        unsafe { pgrx::varsize_any(self.jsonb.as_ptr().cast()) }
    }

    /// The value at a dotted path (objects only), or `None` when nothing is there. Any depth
    /// of document works: the walk follows the path in place, without converting what it
    /// passes, and converts what it finds without recursion.
    ///
    /// Only what rendering can show of the value found is converted (`found`'s rule: its first
    /// BUILT_VALUES values, of a string its first KEPT_CODE_POINTS code points), with a
    /// stand-in as deep as the rest where the value is nested deeper than `str_depth` (Python's
    /// `str()` of it fails however much is shown).
    pub fn lookup_dotted(&self, segments: &[String], str_depth: usize) -> Option<PyValue> {
        let mut container = self.root();
        let (last, parents) = segments.split_last()?;
        for segment in parents {
            let found = object_member(container, segment)?;
            if found.type_ != pg_sys::jbvType::jbvBinary {
                return None;
            }
            // SAFETY: a jbvBinary value carries a container.
            container = unsafe { found.val.binary.data };
        }
        object_member(container, last).map(|found| match found.type_ {
            // SAFETY: a jbvBinary value carries a container.
            pg_sys::jbvType::jbvBinary => shown(unsafe { found.val.binary.data }, str_depth),
            _ => scalar(&found, KEPT_CODE_POINTS),
        })
    }

    /// The whole document.
    pub fn to_value(&self) -> PyValue {
        convert(self.root(), Deeper::Keep, usize::MAX).map_or(PyValue::Null, |(value, _)| value)
    }

    /// The whole document as serde_json's value, containers below CAPPED_DEPTH levels replaced
    /// by empty arrays: enough to read metadata_extraction_paths (two levels down) however
    /// deep a hostile value goes.
    pub fn to_serde_capped(&self) -> serde_json::Value {
        convert(self.root(), Deeper::Empty(CAPPED_DEPTH), usize::MAX)
            .map_or(PyValue::Null, |(value, _)| value)
            .to_serde()
    }

    /// The whole document for JSONPath evaluation, and how deep it is nested; `TooDeep` when
    /// more than `limit` containers are nested in one another.
    pub fn to_serde_within(&self, limit: usize) -> Result<(serde_json::Value, usize), TooDeep> {
        let (value, _) = convert(self.root(), Deeper::Refuse(limit), usize::MAX)?;
        let depth = value.str_levels();
        Ok((value.to_serde(), depth))
    }
}

/// What `convert` does with containers nested deeper than a limit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Deeper {
    /// No limit.
    Keep,
    /// Below this many levels, a container becomes an empty array.
    Empty(usize),
    /// More than this many levels is an error.
    Refuse(usize),
}

/// An open container while converting: its items or members so far and, for an object, the
/// key whose value comes next.
enum Open {
    List {
        items: Vec<PyValue>,
        raw_scalar: bool,
    },
    Dict(IndexMap<PyStr, PyValue>, PyStr),
}

/// What rendering can show of a container: its first BUILT_VALUES values; when there were
/// more and it is nested deeper than `str_depth`, with a stand-in for the rest as deep as it
/// (last, where no rendering reaches), so that `str()`'s limit applies as to the whole.
fn shown(container: *mut pg_sys::JsonbContainer, str_depth: usize) -> PyValue {
    let Ok((mut value, cut)) = convert(container, Deeper::Keep, BUILT_VALUES) else {
        return PyValue::Null;
    };
    if cut {
        let levels = levels_of(container);
        if levels > str_depth {
            let mut stand_in = PyValue::List(Vec::new());
            for _ in 2..levels {
                stand_in = PyValue::List(vec![stand_in]);
            }
            match &mut value {
                PyValue::List(items) => items.push(stand_in),
                PyValue::Dict(members) => {
                    // jsonb holds no U+0000: no key of the document is this one.
                    members.insert(PyStr::from("\0"), stand_in);
                }
                _ => {}
            }
        }
    }
    value
}

/// `Value::str_levels` of a container, read in place: one pass, no copy.
fn levels_of(container: *mut pg_sys::JsonbContainer) -> usize {
    use pg_sys::JsonbIteratorToken as T;
    let (mut depth, mut levels) = (0usize, 0usize);
    // SAFETY: as in `convert`: the container lives for the call, values are read by their tag.
    unsafe {
        let mut iterator = pg_sys::JsonbIteratorInit(container);
        let mut slot = MaybeUninit::<pg_sys::JsonbValue>::zeroed();
        loop {
            match pg_sys::JsonbIteratorNext(&mut iterator, slot.as_mut_ptr(), false) {
                T::WJB_DONE => return levels,
                T::WJB_BEGIN_ARRAY if slot.assume_init_ref().val.array.rawScalar => {}
                T::WJB_BEGIN_ARRAY | T::WJB_BEGIN_OBJECT => {
                    depth += 1;
                    levels = levels.max(depth);
                }
                T::WJB_END_ARRAY | T::WJB_END_OBJECT => depth = depth.saturating_sub(1),
                T::WJB_VALUE | T::WJB_ELEM => levels = levels.max(depth + 1),
                _ => {}
            }
        }
    }
}

/// Converts a container with jsonb's iterator and a stack of its own: no recursion, however
/// deep the document. Objects keep jsonb's key order. At most `budget` values are converted,
/// and strings are then cut to KEPT_CODE_POINTS code points; the flag says whether any value
/// was left out.
fn convert(
    container: *mut pg_sys::JsonbContainer,
    deeper: Deeper,
    budget: usize,
) -> Result<(PyValue, bool), TooDeep> {
    use pg_sys::JsonbIteratorToken as T;
    let mut stack: Vec<Open> = Vec::new();
    let mut converted = 0usize;
    let keep_chars = if budget == usize::MAX {
        usize::MAX
    } else {
        KEPT_CODE_POINTS
    };
    // SAFETY: the container lives for the whole call; the iterator and its values point into
    // it, and each value is read only for the type tag that selects its union member.
    unsafe {
        let mut iterator = pg_sys::JsonbIteratorInit(container);
        let mut slot = MaybeUninit::<pg_sys::JsonbValue>::zeroed();
        loop {
            // At the deepest level kept, nested containers come back whole (jbvBinary)
            // instead of being entered.
            let skip_nested = match deeper {
                Deeper::Keep => false,
                Deeper::Empty(max) | Deeper::Refuse(max) => stack.len() >= max,
            };
            let token = pg_sys::JsonbIteratorNext(&mut iterator, slot.as_mut_ptr(), skip_nested);
            let value = slot.assume_init_ref();
            if converted >= budget && !stack.is_empty() {
                // The rest cannot be shown: close what is open.
                let mut done = close(stack.pop());
                while let Some(open) = stack.pop() {
                    let mut parent = vec![open];
                    add(&mut parent, done);
                    done = close(parent.pop());
                }
                return Ok((done, true));
            }
            if matches!(
                token,
                T::WJB_BEGIN_ARRAY | T::WJB_BEGIN_OBJECT | T::WJB_VALUE | T::WJB_ELEM
            ) && !(token == T::WJB_BEGIN_ARRAY && value.val.array.rawScalar)
            {
                converted += 1;
            }
            match token {
                T::WJB_DONE => return Ok((PyValue::Null, false)),
                T::WJB_BEGIN_ARRAY => stack.push(Open::List {
                    items: Vec::new(),
                    raw_scalar: value.val.array.rawScalar,
                }),
                T::WJB_BEGIN_OBJECT => stack.push(Open::Dict(IndexMap::new(), PyStr::default())),
                T::WJB_KEY => {
                    if let Some(Open::Dict(_, key)) = stack.last_mut() {
                        *key = capped(value, keep_chars);
                    }
                }
                T::WJB_VALUE | T::WJB_ELEM => {
                    let item = if value.type_ == pg_sys::jbvType::jbvBinary {
                        match deeper {
                            Deeper::Refuse(limit) => return Err(TooDeep { limit }),
                            _ => PyValue::List(Vec::new()),
                        }
                    } else {
                        scalar(value, keep_chars)
                    };
                    add(&mut stack, item);
                }
                T::WJB_END_ARRAY | T::WJB_END_OBJECT => {
                    if stack.is_empty() {
                        return Ok((PyValue::Null, false));
                    }
                    let done = close(stack.pop());
                    if stack.is_empty() {
                        return Ok((done, false));
                    }
                    add(&mut stack, done);
                }
                _ => {}
            }
        }
    }
}

/// The value of a container whose end has come (or is not to be read).
fn close(open: Option<Open>) -> PyValue {
    match open {
        None => PyValue::Null,
        Some(Open::List {
            mut items,
            raw_scalar: true,
        }) => items.pop().unwrap_or(PyValue::Null),
        Some(Open::List { items, .. }) => PyValue::List(items),
        Some(Open::Dict(members, _)) => PyValue::Dict(members),
    }
}

fn add(stack: &mut [Open], item: PyValue) {
    match stack.last_mut() {
        Some(Open::List { items, .. }) => items.push(item),
        Some(Open::Dict(members, key)) => {
            members.insert(std::mem::take(key), item);
        }
        None => {}
    }
}

/// The text of a jbvString value, its first `keep` code points and, when there are more, a
/// quote of each kind the rest holds (`found::capped_string`'s rule).
///
/// # Safety
/// `value` is a jbvString whose `val.string` points into a container that outlives the call.
unsafe fn string_of(value: &pg_sys::JsonbValue, keep: usize) -> PyStr {
    // SAFETY (caller): value is a jbvString pointing into a live container.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            value.val.string.val as *const u8,
            value.val.string.len as usize,
        )
    };
    // jsonb holds UTF-8 text.
    let text = std::str::from_utf8(bytes).unwrap_or_default();
    let end = text
        .char_indices()
        .nth(keep)
        .map_or(text.len(), |(at, _)| at);
    let mut out = PyStr::from(&text[..end]);
    let rest = &text[end..];
    if rest.contains('\'') {
        out.push_str("'");
    }
    if rest.contains('"') {
        out.push_str("\"");
    }
    out
}

/// A key's text (`string_of`).
fn capped(value: &pg_sys::JsonbValue, keep: usize) -> PyStr {
    // SAFETY: the iterator gives keys as jbvString values pointing into the live container.
    unsafe { string_of(value, keep) }
}

/// `container -> key` when the container is an object.
fn object_member(container: *mut pg_sys::JsonbContainer, key: &str) -> Option<pg_sys::JsonbValue> {
    // SAFETY: container points into a live detoasted jsonb; the lookup writes into `found`
    // and returns it, or NULL when the key is absent.
    unsafe {
        if (*container).header & pg_sys::JB_FOBJECT == 0 {
            return None;
        }
        let mut found = MaybeUninit::<pg_sys::JsonbValue>::zeroed();
        let result = pg_sys::getKeyJsonValueFromContainer(
            container,
            key.as_ptr() as *const c_char,
            key.len() as c_int,
            found.as_mut_ptr(),
        );
        if result.is_null() {
            None
        } else {
            Some(found.assume_init())
        }
    }
}

/// A scalar jsonb value (null, boolean, string or number).
fn scalar(value: &pg_sys::JsonbValue, keep_chars: usize) -> PyValue {
    // SAFETY: each union member is read only for the type tag that selects it.
    unsafe {
        match value.type_ {
            pg_sys::jbvType::jbvBool => PyValue::Bool(value.val.boolean),
            pg_sys::jbvType::jbvString => PyValue::Str(string_of(value, keep_chars)),
            pg_sys::jbvType::jbvNumeric => {
                let text = direct_function_call::<&CStr>(
                    pg_sys::numeric_out,
                    &[Some(pg_sys::Datum::from(value.val.numeric))],
                );
                // numeric_out prints a valid JSON number for every numeric jsonb can hold.
                text.and_then(|t| t.to_str().ok())
                    .map(|t| PyValue::Number(t.into()))
                    .unwrap_or(PyValue::Null)
            }
            _ => PyValue::Null,
        }
    }
}
