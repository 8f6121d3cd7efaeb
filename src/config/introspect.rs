//! The field names of a `#[derive(Deserialize)]` struct, read from serde itself so
//! that the key checker and the struct can never disagree about what is accepted.

use serde::Deserialize;
use serde::de::{self, Visitor};

/// Field names of struct `T` (empty for a type that is not a struct).
pub fn fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut found: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldCatcher { found: &mut found });
    found
}

struct FieldCatcher<'a> {
    found: &'a mut &'static [&'static str],
}

#[derive(Debug)]
struct Caught;

impl std::fmt::Display for Caught {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fields caught")
    }
}

impl std::error::Error for Caught {}

impl de::Error for Caught {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Caught
    }
}

impl<'de> de::Deserializer<'de> for FieldCatcher<'_> {
    type Error = Caught;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Caught> {
        *self.found = fields;
        Err(Caught)
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Caught> {
        Err(Caught)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Example {
        alpha: u32,
        #[serde(rename = "beta_key")]
        beta: String,
    }

    #[test]
    fn reads_renamed_fields() {
        assert_eq!(fields::<Example>(), &["alpha", "beta_key"]);
        assert!(fields::<u32>().is_empty());
    }
}
