//! Metrics and alerts are JSON objects, and only objects.
//!
//! serde's derived `Deserialize` for a struct also accepts the struct's *sequence* form: its
//! fields in declaration order, so `["cpu", 5]` would decode as the metric `{"name":"cpu",
//! "value":5}` and `["id","info","msg"]` as an alert. No publisher means that, and no document
//! promises it. [`ObjectOnly`] wraps a deserializer so that a struct decoded through it accepts a
//! map and refuses a sequence with an ordinary `invalid type` error, on every path (HTTP bodies
//! and bus envelopes alike) and without a second parse.

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::forward_to_deserialize_any;

/// A deserializer whose structs must come as maps (JSON objects).
pub(crate) struct ObjectOnly<D>(pub(crate) D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for ObjectOnly<D> {
    type Error = D::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_struct(name, fields, MapOnly(visitor))
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// A struct visitor that takes maps only: `visit_seq` keeps serde's default, an `invalid type`
/// error naming what was expected.
struct MapOnly<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for MapOnly<V> {
    type Value = V::Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object with named fields")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.visit_map(map)
    }
}
