//! A JSON object's members in file order, repeated keys kept. serde_json's map keeps only the
//! last value of a key written twice; a reader of files others wrote (safetensors headers, data
//! tables, training records) must see the repeat and refuse or report it instead.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

pub struct Entries<V>(pub Vec<(String, V)>);

impl<V> Entries<V> {
    /// The first key written a second time.
    pub fn repeated(&self) -> Option<&str> {
        self.0.iter().enumerate().find(|(i, (k, _))| self.0[..*i].iter().any(|(j, _)| j == k)).map(|(_, (k, _))| k.as_str())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Walk<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Walk<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<V>, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(Walk(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_in_order_and_the_first_repeat() {
        let e: Entries<serde_json::Value> = serde_json::from_str(r#"{"b": 1, "a": {"c": 1, "c": 2}, "b": 2}"#).unwrap();
        assert_eq!(e.0.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["b", "a", "b"]);
        assert_eq!(e.repeated(), Some("b"));
        let e: Entries<serde::de::IgnoredAny> = serde_json::from_str(r#"{"a": [1, {"x": 1, "x": 2}]}"#).unwrap();
        assert_eq!(e.repeated(), None, "nested objects are their own");
        assert!(serde_json::from_str::<Entries<serde_json::Value>>("[1]").is_err());
    }
}
