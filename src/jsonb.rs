//! Reading a jsonb argument in place.
//!
//! pgrx's `JsonB` turns the whole document into text and parses it again. Task data can be
//! large and a batch reads one document per instance, so a dotted path is followed on the
//! binary jsonb with PostgreSQL's own lookup, and only the value found is converted.

use pgrx::callconv::{Arg, ArgAbi};
use pgrx::nullable::Nullable;
use pgrx::prelude::*;
use pgrx::{direct_function_call, impl_sql_translatable};
use serde_json::Value;
use std::ffi::{c_char, c_int, CStr};
use std::mem::MaybeUninit;
use std::ptr::NonNull;

/// A detoasted jsonb argument, borrowed for the duration of the function call.
pub struct JsonbArg {
    jsonb: NonNull<pg_sys::Jsonb>,
}

impl FromDatum for JsonbArg {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            return None;
        }
        // Full detoast (not packed): the container header must sit at its aligned offset.
        let detoasted = unsafe { pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) };
        NonNull::new(detoasted.cast()).map(|jsonb| JsonbArg { jsonb })
    }
}

unsafe impl<'fcx> ArgAbi<'fcx> for JsonbArg {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

impl_sql_translatable!(JsonbArg, arg_only = "jsonb");

impl JsonbArg {
    fn root(&self) -> *mut pg_sys::JsonbContainer {
        // SAFETY: `jsonb` points at a detoasted Jsonb for the whole call.
        unsafe { &raw mut (*self.jsonb.as_ptr()).root }
    }

    /// The value at a dotted path (objects only), or `None` when nothing is there.
    pub fn lookup_dotted(&self, segments: &[String]) -> Option<Value> {
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
        object_member(container, last).map(|found| jsonb_value_to_serde(&found))
    }

    /// The whole document, for JSONPath evaluation.
    pub fn to_value(&self) -> Value {
        let root = self.root();
        // SAFETY: root is a valid container. A scalar document is stored as a one-element
        // array flagged as scalar; its element is the value.
        unsafe {
            if (*root).header & pg_sys::JB_FSCALAR != 0 {
                let element = pg_sys::getIthJsonbValueFromContainer(root, 0);
                return jsonb_value_to_serde(&*element);
            }
        }
        container_to_serde(root)
    }
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

fn jsonb_value_to_serde(value: &pg_sys::JsonbValue) -> Value {
    // SAFETY: each union member is read only for the type tag that selects it.
    unsafe {
        match value.type_ {
            pg_sys::jbvType::jbvNull => Value::Null,
            pg_sys::jbvType::jbvBool => Value::Bool(value.val.boolean),
            pg_sys::jbvType::jbvString => {
                let bytes = std::slice::from_raw_parts(
                    value.val.string.val as *const u8,
                    value.val.string.len as usize,
                );
                Value::String(String::from_utf8_lossy(bytes).into_owned())
            }
            pg_sys::jbvType::jbvNumeric => {
                let text = direct_function_call::<&CStr>(
                    pg_sys::numeric_out,
                    &[Some(pg_sys::Datum::from(value.val.numeric))],
                )
                .expect("numeric_out never returns NULL");
                // numeric_out prints a valid JSON number for every numeric jsonb can hold.
                text.to_str()
                    .ok()
                    .and_then(|t| t.parse::<serde_json::Number>().ok())
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
            pg_sys::jbvType::jbvBinary => container_to_serde(value.val.binary.data),
            other => error!("backfill: unexpected jsonb value type {other}"),
        }
    }
}

/// An object or array, through jsonb's own text output: only values found at a path (or a
/// whole document for JSONPath) come here, never the common scalar case.
fn container_to_serde(container: *mut pg_sys::JsonbContainer) -> Value {
    // SAFETY: JsonbToCString allocates its result in the current memory context.
    unsafe {
        let text = pg_sys::JsonbToCString(std::ptr::null_mut(), container, -1);
        let parsed = serde_json::from_slice(CStr::from_ptr(text).to_bytes());
        pg_sys::pfree(text.cast());
        parsed.unwrap_or_else(|e| error!("backfill: jsonb text did not parse as JSON: {e}"))
    }
}
