//! A record's `output` as the seed writes it: Python's `json.dumps(obj, ensure_ascii=False)`
//! (`{"k": "v", "k2": null}`, keys in order, non-ASCII as is), which is also what
//! `synth::python_json` writes, so imported, fixed and synthetic records train on one format.

use serde_json::Value;

/// `value` as `json.dumps(value, ensure_ascii=False)` writes it (serde_json escapes strings
/// exactly as Python does; only the separators differ).
pub fn python_json_value(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// An object of optional strings, in the given key order.
pub fn python_json_fields(pairs: &[(&str, Option<&str>)]) -> String {
    let map = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.map_or(Value::Null, |s| Value::String(s.to_string()))))
        .collect();
    python_json_value(&Value::Object(map))
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write(v, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_and_synth() {
        let pairs = [("name", "龙琳"), ("email", "a\"b@x.com")];
        let ours = python_json_fields(&pairs.map(|(k, v)| (k, Some(v))));
        assert_eq!(ours, crate::synth::python_json(&pairs));
        assert_eq!(python_json_fields(&[("b", None), ("a", Some("x"))]), r#"{"b": null, "a": "x"}"#);
        let v: Value = serde_json::from_str(r#"{"z": [1, {"y": true}], "a": "中"}"#).unwrap();
        assert_eq!(python_json_value(&v), r#"{"z": [1, {"y": true}], "a": "中"}"#);
    }
}
