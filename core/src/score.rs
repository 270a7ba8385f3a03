//! Extraction quality by field: exact match, character-level F1, all-fields-exact, JSON validity
//! and hallucination (values that are not substrings of the input), over a set of records whose
//! reference output is the JSON object of the fields.

use std::collections::HashMap;

use crate::extract::Fields;

/// The reference values of `names` in a record's `output`, or why the output is not usable.
pub fn reference_fields(output: &str, names: &[&str]) -> Result<Vec<Option<String>>, String> {
    let value: serde_json::Value =
        serde_json::from_str(output.trim()).map_err(|e| format!("reference output is not valid JSON: {e}"))?;
    let object = value.as_object().ok_or("reference output is not a JSON object")?;
    names
        .iter()
        .map(|&name| match object.get(name) {
            None => Err(format!("reference output lacks the field `{name}`")),
            Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Ok(Some(other.to_string())),
        })
        .collect()
}

/// F1 over the multisets of characters of `predicted` and `reference` (SQuAD's token F1 with
/// characters as tokens, which suits Chinese text); two empty values score 1.
pub fn char_f1(predicted: &str, reference: &str) -> f64 {
    if predicted.is_empty() && reference.is_empty() {
        return 1.0;
    }
    let mut counts: HashMap<char, i64> = HashMap::new();
    for c in reference.chars() {
        *counts.entry(c).or_default() += 1;
    }
    let mut common = 0;
    for c in predicted.chars() {
        if let Some(n) = counts.get_mut(&c) {
            if *n > 0 {
                *n -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / predicted.chars().count() as f64;
    let recall = common as f64 / reference.chars().count() as f64;
    2.0 * precision * recall / (precision + recall)
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldScore {
    pub exact: usize,
    pub f1_sum: f64,
}

/// Running totals over scored records.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub names: Vec<String>,
    pub per_field: Vec<FieldScore>,
    /// Records scored (with a usable reference).
    pub records: usize,
    /// Of those, records whose extraction gave a valid object.
    pub json_valid: usize,
    pub all_exact: usize,
    /// Non-null predicted values, and those that are not substrings of the input.
    pub values: usize,
    pub hallucinated: usize,
}

impl Scores {
    pub fn new(names: &[&str]) -> Self {
        Self {
            names: names.iter().map(|n| n.to_string()).collect(),
            per_field: vec![FieldScore::default(); names.len()],
            records: 0,
            json_valid: 0,
            all_exact: 0,
            values: 0,
            hallucinated: 0,
        }
    }

    /// Scores one record; `predicted` is `None` when extraction gave no valid object. Returns the
    /// names of the fields that were wrong.
    pub fn add(&mut self, text: &str, reference: &[Option<String>], predicted: Option<&Fields>) -> Vec<String> {
        self.records += 1;
        let mut wrong = Vec::new();
        if predicted.is_some() {
            self.json_valid += 1;
        }
        for (i, name) in self.names.iter().enumerate() {
            let got = predicted.and_then(|f| f.get(name));
            let want = reference[i].as_deref();
            if let Some(v) = got {
                self.values += 1;
                if !text.contains(v) {
                    self.hallucinated += 1;
                }
            }
            let score = &mut self.per_field[i];
            match (got, want) {
                (Some(g), Some(w)) => {
                    score.f1_sum += char_f1(g, w);
                    if g == w {
                        score.exact += 1;
                    } else {
                        wrong.push(name.clone());
                    }
                }
                // A valid object with null where the reference is null is right.
                (None, None) if predicted.is_some() => {
                    score.exact += 1;
                    score.f1_sum += 1.0;
                }
                _ => wrong.push(name.clone()),
            }
        }
        if wrong.is_empty() {
            self.all_exact += 1;
        }
        wrong
    }

    fn rate(n: usize, of: usize) -> f64 {
        if of == 0 {
            0.0
        } else {
            n as f64 / of as f64
        }
    }

    pub fn all_fields_exact(&self) -> f64 {
        Self::rate(self.all_exact, self.records)
    }

    pub fn json_valid_rate(&self) -> f64 {
        Self::rate(self.json_valid, self.records)
    }

    pub fn hallucination_rate(&self) -> f64 {
        Self::rate(self.hallucinated, self.values)
    }

    /// `(name, exact-match rate, mean char F1)` per field.
    pub fn fields(&self) -> Vec<(&str, f64, f64)> {
        let n = self.records.max(1) as f64;
        self.names
            .iter()
            .zip(&self.per_field)
            .map(|(name, s)| (name.as_str(), Self::rate(s.exact, self.records), s.f1_sum / n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(values: &[Option<&str>]) -> Fields {
        Fields {
            names: ["name", "email"].map(String::from).to_vec(),
            values: values.iter().map(|v| v.map(String::from)).collect(),
        }
    }

    #[test]
    fn char_f1_counts_shared_characters() {
        assert_eq!(char_f1("张伟", "张伟"), 1.0);
        assert_eq!(char_f1("张", "张伟"), 2.0 * 1.0 * 0.5 / 1.5);
        assert_eq!(char_f1("李", "张伟"), 0.0);
        assert_eq!(char_f1("", ""), 1.0);
        assert_eq!(char_f1("aa", "a"), 2.0 * 0.5 * 1.0 / 1.5);
    }

    #[test]
    fn references_must_be_objects_with_every_field() {
        let names = ["name", "email"];
        assert_eq!(reference_fields(r#"{"name": "a", "email": null}"#, &names).unwrap(), [Some("a".into()), None]);
        assert!(reference_fields("{oops", &names).unwrap_err().contains("not valid JSON"));
        assert!(reference_fields(r#"{"name": "a"}"#, &names).unwrap_err().contains("`email`"));
        assert!(reference_fields("[1]", &names).unwrap_err().contains("not a JSON object"));
    }

    #[test]
    fn scores_count_exact_fields_records_and_hallucinations() {
        let mut s = Scores::new(&["name", "email"]);
        let reference = [Some("张伟".to_string()), Some("a@b.c".to_string())];
        assert!(s.add("张伟 a@b.c", &reference, Some(&fields(&[Some("张伟"), Some("a@b.c")]))).is_empty());
        assert_eq!(s.add("张伟 a@b.c", &reference, Some(&fields(&[Some("张"), Some("x@y.z")]))), ["name", "email"]);
        assert_eq!(s.add("张伟 a@b.c", &reference, None), ["name", "email"]);
        assert_eq!((s.records, s.json_valid, s.all_exact, s.values, s.hallucinated), (3, 2, 1, 4, 1));
        assert_eq!(s.fields()[0].1, 1.0 / 3.0);
        assert!((s.all_fields_exact() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.hallucination_rate(), 0.25);
    }
}
