//! What to extract: field names in order, optional descriptions, nullable or required, an
//! optional value format; and the system prompt built from them.

use serde_json::Value;

pub use crate::format::Format;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub description: Option<String>,
    /// A nullable field may be `null` when the text does not hold it.
    pub nullable: bool,
    /// What constrained decoding holds the value to beyond the mode ([`crate::format`]).
    pub format: Option<Format>,
}

impl Field {
    /// A nullable field without description or format.
    pub fn named(name: &str) -> Self {
        Self { name: name.to_string(), description: None, nullable: true, format: None }
    }
}


/// One field of a schema file: a name, or `{"name", "description"?, "nullable"?, "format"?}`;
/// `at` names it in errors (`s.json: fields[2]`).
fn field_from_json(spec: &Value, at: &str) -> Result<Field> {
    let obj = match spec {
        Value::String(name) => return Ok(Field::named(name)),
        Value::Object(obj) => obj,
        _ => return Err(Error::Format(format!("{at} must be a name or an object with \"name\""))),
    };
    if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "name" | "description" | "nullable" | "format")) {
        return Err(Error::Format(format!("{at}: unknown key `{k}` (name, description, nullable, format)")));
    }
    let text = |key: &str| match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::Format(format!("{at}.{key} must be a string"))),
    };
    let name = text("name")?.ok_or_else(|| Error::Format(format!("{at} has no \"name\"")))?;
    let nullable = match obj.get("nullable") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Error::Format(format!("{at}.nullable must be true or false"))),
    };
    let format = match text("format")? {
        None => None,
        Some(f) => Some(Format::parse(&f).ok_or_else(|| Error::Format(format!("{at}: field `{name}` has format `{f}`; the formats are {}", Format::names())))?),
    };
    Ok(Field { name, description: text("description")?, nullable, format })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    pub fields: Vec<Field>,
}

impl Default for Schema {
    /// The seed's four fields; `email` holds an email address of the text.
    fn default() -> Self {
        let mut schema = Self::from_names(&["name", "address", "email", "question"]).expect("valid default schema");
        schema.fields[2].format = Some(Format::Email);
        schema
    }
}

impl Schema {
    pub fn from_names(names: &[&str]) -> Result<Self> {
        let fields = names.iter().map(|n| Field::named(n)).collect();
        Self::new(fields, "schema")
    }

    /// Checks names: none empty, none twice. `source` names the file in errors.
    pub fn new(fields: Vec<Field>, source: &str) -> Result<Self> {
        if fields.is_empty() {
            return Err(Error::Format(format!("{source}: the schema has no fields")));
        }
        for (i, f) in fields.iter().enumerate() {
            if f.name.trim().is_empty() {
                return Err(Error::Format(format!("{source}: fields[{i}] has {}", if f.name.is_empty() { "an empty name" } else { "a name of spaces only" })));
            }
            if fields[..i].iter().any(|g| g.name == f.name) {
                return Err(Error::Format(format!("{source}: field name `{}` appears twice", f.name)));
            }
        }
        Ok(Self { fields })
    }

    /// A schema file: `{"fields": [...]}` or a list; each field a name or
    /// `{"name", "description"?, "nullable"?, "format"?}`. Read by hand rather than by serde's
    /// untagged enums, whose one error ("did not match any variant") names neither the field nor
    /// the key; an unknown key is refused, so that a typo (`nulable`) is not silently dropped.
    pub fn from_json(bytes: &[u8], source: &str) -> Result<Self> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| Error::Format(format!("{source}: not JSON: {e}")))?;
        let not_schema = || Error::Format(format!("{source}: not a schema: a list of fields, or {{\"fields\": [...]}}"));
        let specs = match &value {
            Value::Array(list) => list,
            Value::Object(obj) => {
                if let Some(k) = obj.keys().find(|k| *k != "fields") {
                    return Err(Error::Format(format!("{source}: unknown key `{k}` (a schema object holds only \"fields\")")));
                }
                match obj.get("fields") {
                    Some(Value::Array(list)) => list,
                    Some(_) => return Err(Error::Format(format!("{source}: \"fields\" must be a list"))),
                    None => return Err(not_schema()),
                }
            }
            _ => return Err(not_schema()),
        };
        let fields = specs.iter().enumerate().map(|(i, spec)| field_from_json(spec, &format!("{source}: fields[{i}]"))).collect::<Result<Vec<_>>>()?;
        Self::new(fields, source)
    }

    pub fn names(&self) -> Vec<&str> {
        self.fields.iter().map(|f| f.name.as_str()).collect()
    }

    /// The system prompt; for the default schema exactly the seed notebook's.
    pub fn system_prompt(&self) -> String {
        let names = self.names().join("、");
        let mut prompt = format!("将文本中的{names}提取出来，以json格式输出，字段为{names}，值为文本中提取出来的内容。");
        for f in &self.fields {
            if let Some(d) = &f.description {
                prompt.push_str(&format!("{}：{}。", f.name, d));
            }
        }
        prompt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schema_gives_the_seed_prompt() {
        assert_eq!(
            Schema::default().system_prompt(),
            "将文本中的name、address、email、question提取出来，以json格式输出，字段为name、address、email、question，值为文本中提取出来的内容。"
        );
    }

    #[test]
    fn schema_files_are_checked() {
        let s = Schema::from_json(br#"{"fields": ["a", {"name": "b", "description": "d", "nullable": false}]}"#, "s.json").unwrap();
        assert_eq!(s.names(), ["a", "b"]);
        assert!(!s.fields[1].nullable);
        let dup = Schema::from_json(br#"["a", "b", "a"]"#, "s.json").unwrap_err().to_string();
        assert!(dup.contains("s.json") && dup.contains("`a` appears twice"), "{dup}");
        let empty = Schema::from_json(br#"["a", " "]"#, "s.json").unwrap_err().to_string();
        assert_eq!(empty, "s.json: fields[1] has a name of spaces only");
        assert!(Schema::from_json(b"[]", "s.json").unwrap_err().to_string().contains("no fields"));
        assert!(Schema::from_json(b"{oops", "s.json").unwrap_err().to_string().starts_with("s.json: "));
        let s = Schema::from_json(br#"["a", {"name": "mail", "format": "email"}]"#, "s.json").unwrap();
        assert_eq!((s.fields[0].format, s.fields[1].format), (None, Some(Format::Email)));
        let bad = Schema::from_json(br#"[{"name": "d", "format": "date"}]"#, "s.json").unwrap_err().to_string();
        assert_eq!(bad, "s.json: fields[0]: field `d` has format `date`; the formats are email");
        // Each mistake named by field and key; a typo is refused, not dropped.
        for (json, want) in [
            (r#"[{"name": "a", "nulable": false}]"#, "s.json: fields[0]: unknown key `nulable` (name, description, nullable, format)"),
            (r#"{"fields": ["a"], "other": 1}"#, "s.json: unknown key `other` (a schema object holds only \"fields\")"),
            (r#"["a", {"name": "b", "nullable": "yes"}]"#, "s.json: fields[1].nullable must be true or false"),
            (r#"[{"nam": "x"}]"#, "s.json: fields[0]: unknown key `nam` (name, description, nullable, format)"),
            (r#"[{"description": "x"}]"#, "s.json: fields[0] has no \"name\""),
            (r#"[{"name": "a", "description": 5}]"#, "s.json: fields[0].description must be a string"),
            (r#"[1, 2]"#, "s.json: fields[0] must be a name or an object with \"name\""),
            (r#"{"fields": "a"}"#, "s.json: \"fields\" must be a list"),
            ("5", "s.json: not a schema: a list of fields, or {\"fields\": [...]}"),
        ] {
            assert_eq!(Schema::from_json(json.as_bytes(), "s.json").unwrap_err().to_string(), want, "{json}");
        }
    }
}
