//! Request bodies are what the schema says: JSON objects with named fields.
//!
//! serde's derived `Deserialize` for a struct also accepts a JSON array of
//! its fields in order, so `["name", 4194304]` would create a volume and
//! `["x"]` set a display name, past the field names and
//! `deny_unknown_fields`. The body extractors (`ApiJson`,
//! `ApiOptionalJson` in `error.rs`) parse every body through
//! [`from_slice`], which refuses that form for every struct at every depth
//! (a volume's `stripe`, a heartbeat's `wiped` chunks, …): [`ObjectsOnly`]
//! wraps serde_json's deserializer and turns a struct's `visit_seq` into an
//! error. A new request type needs nothing to be covered.
//!
//! Limit: serde buffers the input of `#[serde(flatten)]`, untagged and
//! internally tagged types before it deserializes them, out of this
//! wrapper's reach; request types use none of these (the test
//! `request_bodies_must_be_objects` in `tests/front_door.rs` sends arrays to every
//! route that takes a body).

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    Unexpected, VariantAccess, Visitor,
};

/// What a struct must be instead of an array.
const EXPECTED: &str = "a JSON object with named fields";

/// Parses a request body: one JSON value, an object at the top, and no
/// struct anywhere given as an array.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = T::deserialize(ObjectsOnly(&mut de))?;
    de.end()?;
    Ok(value)
}

/// Whether the body's first JSON token opens an object (or is `null`, the
/// absent optional body).
pub fn top_level_is_object(bytes: &[u8], null_allowed: bool) -> bool {
    let text = bytes.trim_ascii_start();
    text.starts_with(b"{") || (null_allowed && text.starts_with(b"null"))
}

/// A deserializer whose structs refuse to be read from arrays.
pub struct ObjectsOnly<D>(pub D);

/// A visitor that refuses arrays when it reads a struct, and wraps whatever
/// it hands on so nested values are checked too.
struct Wrap<V> {
    inner: V,
    is_struct: bool,
}

impl<V> Wrap<V> {
    fn plain(inner: V) -> Self {
        Wrap {
            inner,
            is_struct: false,
        }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
                self.0.$method($($arg,)* Wrap::plain(visitor))
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for ObjectsOnly<D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_struct(
            name,
            fields,
            Wrap {
                inner: visitor,
                is_struct: true,
            },
        )
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                self.inner.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.is_struct {
            f.write_str(EXPECTED)
        } else {
            self.inner.expecting(f)
        }
    }

    forward_visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
        self.inner.visit_some(ObjectsOnly(d))
    }

    fn visit_newtype_struct<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
        self.inner.visit_newtype_struct(ObjectsOnly(d))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        if self.is_struct {
            return Err(de::Error::invalid_type(Unexpected::Seq, &EXPECTED));
        }
        self.inner.visit_seq(Seq(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_map(Map(map))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_enum(Enum(data))
    }
}

/// A seed whose deserializer is wrapped.
struct Seed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(ObjectsOnly(d))
    }
}

struct Seq<A>(A);

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

struct Map<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Seed(seed))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

struct Enum<A>(A);

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Enum<A> {
    type Error = A::Error;
    type Variant = Variant<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        self.0
            .variant_seed(Seed(seed))
            .map(|(v, variant)| (v, Variant(variant)))
    }
}

struct Variant<A>(A);

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Variant<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(Seed(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, Wrap::plain(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(
            fields,
            Wrap {
                inner: visitor,
                is_struct: true,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: u32,
        b: u32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        #[serde(default)]
        inner: Option<Inner>,
        #[serde(default)]
        list: Vec<Inner>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        #[serde(default)]
        numbers: Vec<u64>,
        #[serde(default)]
        kind: Option<Kind>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Plain,
        Shaped { x: u32 },
    }

    #[test]
    fn objects_arrays_of_values_and_maps_pass() {
        let body = br#"{"name":"v","inner":{"a":1,"b":2},"list":[{"a":3,"b":4}],
            "labels":{"k":"v"},"numbers":[1,2],"kind":{"shaped":{"x":5}}}"#;
        let o: Outer = from_slice(body).unwrap();
        assert_eq!(o.inner, Some(Inner { a: 1, b: 2 }));
        assert_eq!(o.list, vec![Inner { a: 3, b: 4 }]);
        assert_eq!(o.numbers, vec![1, 2]);
        assert_eq!(o.kind, Some(Kind::Shaped { x: 5 }));
        let o: Outer = from_slice(br#"{"name":"v","kind":"plain"}"#).unwrap();
        assert_eq!(o.kind, Some(Kind::Plain));
        // serde_json alone takes every one of the refused forms below.
        assert!(serde_json::from_slice::<Outer>(br#"["v"]"#).is_ok());
    }

    #[test]
    fn structs_given_as_arrays_are_refused_at_every_depth() {
        for body in [
            &br#"["v"]"#[..],
            br#"{"name":"v","inner":[1,2]}"#,
            br#"{"name":"v","list":[[3,4]]}"#,
            br#"{"name":"v","kind":{"shaped":[5]}}"#,
        ] {
            let e = from_slice::<Outer>(body).unwrap_err().to_string();
            assert!(
                e.contains(EXPECTED),
                "{}: {e}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn trailing_data_is_refused() {
        assert!(from_slice::<Outer>(br#"{"name":"v"} {}"#).is_err());
    }

    #[test]
    fn top_level_object_check() {
        assert!(top_level_is_object(b" \n{\"a\":1}", false));
        assert!(!top_level_is_object(b"[1]", false));
        assert!(!top_level_is_object(b"null", false));
        assert!(top_level_is_object(b"null", true));
        assert!(!top_level_is_object(b"\"x\"", true));
    }
}
