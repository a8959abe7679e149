//! Config values written as one string and parsed once (durations, sizes, ...): the serde and
//! JSON Schema shape they all share, from their `FromStr` and `Display`.

/// Implements `Debug` (as `Display`), `Serialize` (the `Display` text), `Deserialize` (a
/// string through `FromStr`, its error as the message) and an inline `JsonSchema` (a string with
/// `pattern` and `description`) for a type that has `FromStr` and `Display`.
macro_rules! text_value {
    ($ty:ty, name: $name:literal, pattern: $pattern:expr, description: $description:literal) => {
        impl ::std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Display::fmt(self, f)
            }
        }

        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                let s = <String as ::serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(::serde::de::Error::custom)
            }
        }

        impl ::schemars::JsonSchema for $ty {
            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut ::schemars::SchemaGenerator) -> ::schemars::Schema {
                ::schemars::json_schema!({
                    "type": "string",
                    "pattern": $pattern,
                    "description": $description
                })
            }
            fn inline_schema() -> bool {
                true
            }
        }
    };
}
pub(crate) use text_value;
