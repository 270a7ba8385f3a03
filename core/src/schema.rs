//! What to extract: field names in order, optional descriptions, nullable or required, an
//! optional value format; and the system prompt built from them.

use serde::Deserialize;

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

/// A field as a schema file writes it; the format is checked by name for a clear error.
#[derive(Deserialize)]
struct FieldFile {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "yes")]
    nullable: bool,
    #[serde(default)]
    format: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    pub fields: Vec<Field>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SchemaFile {
    Object { fields: Vec<FieldSpec> },
    List(Vec<FieldSpec>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FieldSpec {
    Name(String),
    Full(FieldFile),
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
                return Err(Error::Format(format!("{source}: field {} has an empty name", i + 1)));
            }
            if fields[..i].iter().any(|g| g.name == f.name) {
                return Err(Error::Format(format!("{source}: field name `{}` appears twice", f.name)));
            }
        }
        Ok(Self { fields })
    }

    /// A schema file: `{"fields": [...]}` or a list; each field a name or
    /// `{"name", "description"?, "nullable"?, "format"?}`.
    pub fn from_json(bytes: &[u8], source: &str) -> Result<Self> {
        let file: SchemaFile = serde_json::from_slice(bytes)
            .map_err(|e| Error::Format(format!("{source}: not a schema (a list of fields, or {{\"fields\": [...]}}): {e}")))?;
        let specs = match file {
            SchemaFile::Object { fields } | SchemaFile::List(fields) => fields,
        };
        let fields = specs
            .into_iter()
            .map(|s| match s {
                FieldSpec::Name(name) => Ok(Field::named(&name)),
                FieldSpec::Full(f) => {
                    let format = match f.format.as_deref() {
                        None => None,
                        Some(name) => Some(Format::parse(name).ok_or_else(|| {
                            Error::Format(format!(
                                "{source}: field `{}` has format `{name}`; the formats are {}",
                                f.name,
                                Format::names()
                            ))
                        })?),
                    };
                    Ok(Field { name: f.name, description: f.description, nullable: f.nullable, format })
                }
            })
            .collect::<Result<Vec<_>>>()?;
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
        assert!(empty.contains("empty name"), "{empty}");
        assert!(Schema::from_json(b"[]", "s.json").unwrap_err().to_string().contains("no fields"));
        assert!(Schema::from_json(b"{oops", "s.json").unwrap_err().to_string().starts_with("s.json: "));
        let s = Schema::from_json(br#"["a", {"name": "mail", "format": "email"}]"#, "s.json").unwrap();
        assert_eq!((s.fields[0].format, s.fields[1].format), (None, Some(Format::Email)));
        let bad = Schema::from_json(br#"[{"name": "d", "format": "date"}]"#, "s.json").unwrap_err().to_string();
        assert_eq!(bad, "s.json: field `d` has format `date`; the formats are email");
    }
}
