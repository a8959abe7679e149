//! [`PolicyInput`](super::PolicyInput) straight into a `regorus::Value`, without the
//! `serde_json::Value` in between (which cost a second tree and a deserialization per host).
//!
//! The result is the value `regorus::Value::from(serde_json::to_value(x))` gives: the same
//! serde data model mapped the way `serde_json`'s serializer maps it (non-negative integers
//! as unsigned, non-finite floats as null, enum variants as `{variant: value}`, map keys as
//! strings) and then the way regorus's deserializer reads JSON
//! (`policy::tests::the_direct_input_is_the_json_input` compares both). What it does not map
//! (a key that is not a string, an integer beyond 64 bits) is an error: the caller then takes
//! the `serde_json` path.

use std::collections::BTreeMap;

use regorus::Value;
use serde::ser::{self, Serialize};

/// Why a value cannot be an input (what `serde_json::to_value` would refuse too).
#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

/// `x` as a Rego value.
pub fn to_value<T: Serialize + ?Sized>(x: &T) -> Result<Value, Error> {
    x.serialize(Serializer)
}

fn object(entries: BTreeMap<Value, Value>) -> Value {
    Value::from(entries)
}

fn variant(name: &str, v: Value) -> Value {
    object(BTreeMap::from([(Value::from(name), v)]))
}

fn int_u128(v: u128) -> Result<Value, Error> {
    u64::try_from(v)
        .map(Value::from)
        .map_err(|_| Error("an integer beyond 64 bits".into()))
}

fn int_i128(v: i128) -> Result<Value, Error> {
    i64::try_from(v)
        .map(int_i64)
        .map_err(|_| Error("an integer beyond 64 bits".into()))
}

fn int_i64(v: i64) -> Value {
    match u64::try_from(v) {
        Ok(u) => Value::from(u),
        Err(_) => Value::from(v),
    }
}

struct Serializer;

/// An array being built (sequences, tuples).
struct Seq(Vec<Value>, Option<&'static str>);

/// An object being built (maps, structs), and the variant that wraps it.
struct Map {
    entries: BTreeMap<Value, Value>,
    key: Option<Value>,
    variant: Option<&'static str>,
}

impl ser::Serializer for Serializer {
    type Ok = Value;
    type Error = Error;
    type SerializeSeq = Seq;
    type SerializeTuple = Seq;
    type SerializeTupleStruct = Seq;
    type SerializeTupleVariant = Seq;
    type SerializeMap = Map;
    type SerializeStruct = Map;
    type SerializeStructVariant = Map;

    fn serialize_bool(self, v: bool) -> Result<Value, Error> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, Error> {
        Ok(int_i64(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, Error> {
        Ok(int_i64(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, Error> {
        Ok(int_i64(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, Error> {
        Ok(int_i64(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Value, Error> {
        int_i128(v)
    }
    fn serialize_u8(self, v: u8) -> Result<Value, Error> {
        Ok(Value::from(u64::from(v)))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, Error> {
        Ok(Value::from(u64::from(v)))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, Error> {
        Ok(Value::from(u64::from(v)))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, Error> {
        Ok(Value::from(v))
    }
    fn serialize_u128(self, v: u128) -> Result<Value, Error> {
        int_u128(v)
    }
    fn serialize_f32(self, v: f32) -> Result<Value, Error> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, Error> {
        Ok(if v.is_finite() {
            Value::from(v)
        } else {
            Value::Null
        })
    }
    fn serialize_char(self, v: char) -> Result<Value, Error> {
        Ok(Value::from(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, Error> {
        Ok(Value::from(v))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, Error> {
        Ok(Value::from(
            v.iter()
                .map(|b| Value::from(u64::from(*b)))
                .collect::<Vec<_>>(),
        ))
    }
    fn serialize_none(self) -> Result<Value, Error> {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<Value, Error> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, Error> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Value, Error> {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        v: &'static str,
    ) -> Result<Value, Error> {
        Ok(Value::from(v))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<Value, Error> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        name: &'static str,
        v: &T,
    ) -> Result<Value, Error> {
        Ok(variant(name, v.serialize(Serializer)?))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Seq, Error> {
        Ok(Seq(Vec::with_capacity(len.unwrap_or(0)), None))
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Seq, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        name: &'static str,
        len: usize,
    ) -> Result<Seq, Error> {
        Ok(Seq(Vec::with_capacity(len), Some(name)))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Map, Error> {
        Ok(Map {
            entries: BTreeMap::new(),
            key: None,
            variant: None,
        })
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<Map, Error> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        name: &'static str,
        _: usize,
    ) -> Result<Map, Error> {
        Ok(Map {
            entries: BTreeMap::new(),
            key: None,
            variant: Some(name),
        })
    }
}

impl Seq {
    fn push<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
        self.0.push(v.serialize(Serializer)?);
        Ok(())
    }
    fn done(self) -> Value {
        let array = Value::from(self.0);
        match self.1 {
            Some(name) => variant(name, array),
            None => array,
        }
    }
}

/// The four sequence-like serde traits, each pushing an element as [`Seq::push`] does.
macro_rules! seq_impl {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Seq {
            type Ok = Value;
            type Error = Error;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
                self.push(v)
            }
            fn end(self) -> Result<Value, Error> {
                Ok(self.done())
            }
        }
    )*};
}

seq_impl!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl Map {
    fn field<T: Serialize + ?Sized>(&mut self, key: &str, v: &T) -> Result<(), Error> {
        self.entries
            .insert(Value::from(key), v.serialize(Serializer)?);
        Ok(())
    }
    fn done(self) -> Value {
        let o = object(self.entries);
        match self.variant {
            Some(name) => variant(name, o),
            None => o,
        }
    }
}

impl ser::SerializeMap for Map {
    type Ok = Value;
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        // String keys only; any other key (which JSON would turn into text) is left to
        // the caller's `serde_json` path.
        let k = match key.serialize(Serializer)? {
            s @ Value::String(_) => s,
            _ => return Err(Error("a key that is not a string".into())),
        };
        self.key = Some(k);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
        let key = self
            .key
            .take()
            .ok_or_else(|| Error("a map value without its key".into()))?;
        self.entries.insert(key, v.serialize(Serializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, Error> {
        Ok(self.done())
    }
}

/// The two struct-like serde traits, each adding a field as [`Map::field`] does.
macro_rules! struct_impl {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Map {
            type Ok = Value;
            type Error = Error;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                v: &T,
            ) -> Result<(), Error> {
                self.field(key, v)
            }
            fn end(self) -> Result<Value, Error> {
                Ok(self.done())
            }
        }
    )*};
}

struct_impl!(SerializeStruct, SerializeStructVariant);
