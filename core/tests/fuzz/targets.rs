//! Fuzz targets: each takes arbitrary bytes and must neither panic nor break its invariant.
//! Shared by the bounded mutation run in `core/tests/fuzz.rs` (every `scripts/test`) and by the
//! coverage-guided `cargo fuzz` targets in `fuzz/` (long runs by hand).

use std::io::Cursor;

use tiqu_core::constrain::Grammar;
use tiqu_core::{Constrain, Qwen3Config, SafetensorsFile, Schema};

/// The safetensors header and tensor reader: any file either fails to open or every tensor it
/// lists reads as exactly its shape's element count.
pub fn safetensors(data: &[u8]) {
    let reader: Box<dyn tiqu_core::weights::ReadSeek> = Box::new(Cursor::new(data.to_vec()));
    let Ok(mut file) = SafetensorsFile::open(vec![("fuzz.safetensors".into(), reader)]) else { return };
    let names: Vec<String> = file.names().map(str::to_string).collect();
    for name in names {
        let (shape, values) = file.read_f32(&name).expect("a tensor the header accepted reads");
        assert_eq!(values.len(), shape.iter().product::<usize>(), "{name}");
        assert!(values.len() * 2 <= data.len(), "{name}: more values than the file has bytes");
    }
}

/// config.json: a config that parses has a parameter count and tensor list that agree.
pub fn config(data: &[u8]) {
    let Ok(cfg) = Qwen3Config::from_json(data, "config.json") else { return };
    assert!(cfg.rope_theta > 0.0 && cfg.rms_norm_eps > 0.0);
    let counted: u64 = cfg.tensor_shapes().iter().map(|(_, s)| s.iter().map(|&d| d as u64).product::<u64>()).sum();
    assert_eq!(counted, cfg.num_parameters());
}

/// PEFT's adapter_config.json.
pub fn adapter_config(data: &[u8]) {
    if let Ok(cfg) = tiqu_core::lora::LoraConfig::from_peft_json(data, "adapter_config.json") {
        assert!(cfg.r > 0);
        assert!(cfg.scaling().is_finite(), "scaling of r={} alpha={}", cfg.r, cfg.lora_alpha);
    }
}

/// The SFT/chat record parsers (training and eval data): strict and lenient agree on good files.
pub fn sft_records(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let strict = tiqu_core::dataset::sft_records::parse_records(&text, "data.jsonl");
    let lenient = tiqu_core::dataset::sft_records::parse_records_lenient(&text, "data.jsonl");
    if let (Ok(strict), Ok(lenient)) = (&strict, &lenient) {
        assert_eq!(strict.len(), lenient.0.len(), "a file the strict reader takes has no bad lines");
    }
    // The data tools' reader gives the same records, or the same error, however reads cut the bytes.
    let whole = tiqu_core::dataset::read_records(data, "data.json");
    let reader = std::io::BufReader::with_capacity(1 + data.len() % 7, data);
    let cut = tiqu_core::dataset::Records::open(reader, "data.json").and_then(|r| r.collect::<tiqu_core::Result<Vec<_>>>());
    let view = |rs: &[tiqu_core::dataset::RawRecord]| {
        rs.iter().map(|r| (r.line, r.value.clone().map_err(|p| p.message), r.repeated_key.clone())).collect::<Vec<_>>()
    };
    match (&whole, &cut) {
        (Ok(a), Ok(b)) => assert_eq!(view(a), view(b)),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("whole {:?} vs cut {:?}", whole.as_ref().map(|r| r.len()), cut.as_ref().map(|r| r.len())),
    }
    if let Ok(records) = &whole {
        assert!(records.windows(2).all(|w| w[0].line < w[1].line) || data.first() == Some(&b'['), "JSONL lines ascend");
    }
}

/// `data import`'s table reader (the first byte picks CSV, TSV or JSON): the same records, or
/// the same one-line error, however reads cut the bytes; every record's text is non-empty.
pub fn table(data: &[u8]) {
    use tiqu_core::dataset::{import, Format, Mapping};
    let Some((&pick, table)) = data.split_first() else { return };
    let format = [Format::Csv, Format::Tsv, Format::Json][usize::from(pick % 3)];
    let mapping = Mapping { text: "text".into(), fields: vec![("name".into(), "name".into())] };
    let run = |reader: &mut dyn std::io::BufRead| {
        let mut records = Vec::new();
        let imported = import(reader, format, &mapping, "t", |r| {
            records.push(r.clone());
            Ok(())
        });
        imported.map(|i| (i, records)).map_err(|e| e.to_string())
    };
    let whole = run(&mut &table[..]);
    let cut = run(&mut std::io::BufReader::with_capacity(1 + usize::from(pick) % 7, table));
    assert_eq!(whole, cut);
    if let Ok((imported, records)) = &whole {
        assert_eq!(imported.records, records.len());
        assert!(records.iter().all(|r| r.input.as_deref().is_some_and(|t| !t.trim().is_empty())));
    }
    if let Err(e) = &whole {
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

/// The schema parser: a schema that parses has a system prompt and a grammar.
pub fn schema(data: &[u8]) {
    if let Ok(schema) = Schema::from_json(data, "schema.json") {
        assert!(!schema.fields.is_empty());
        let _ = schema.system_prompt();
        // The one refusal: a required email field and a text without an address.
        match Grammar::new(&schema, Constrain::Copy, "x") {
            Ok(g) => drop(g.forced(&g.start())),
            Err(e) => assert!(e.to_string().contains("no email address"), "{e}"),
        }
    }
}

/// The constrained decoder's byte stepping, walked along allowed bytes chosen by the input.
/// Invariants: in copy mode every value so far is a substring of the text; a finished output
/// is a JSON object with the schema's keys in order whose values are the grammar's values.
pub fn grammar(data: &[u8]) {
    let [mode, split, rest @ ..] = data else { return };
    let mode = [Constrain::Copy, Constrain::Json][(*mode % 2) as usize];
    let cut = (*split as usize).min(rest.len());
    let text = String::from_utf8_lossy(&rest[..cut]).into_owned();
    let choices = &rest[cut..];
    let schema = Schema::from_names(&["name", "email"]).expect("a schema");
    let g = Grammar::new(&schema, mode, &text).expect("the email field is nullable");
    let mut state = g.start();
    let mut out = Vec::new();
    for &choice in choices {
        if g.is_done(&state) {
            break;
        }
        let allowed: Vec<u8> = (0..=255u8).filter(|&b| g.step(&state, b).is_some()).collect();
        if allowed.is_empty() {
            break;
        }
        let b = allowed[choice as usize % allowed.len()];
        state = g.step(&state, b).expect("an allowed byte steps");
        out.push(b);
        if mode == Constrain::Copy {
            for v in g.values(&state).into_iter().flatten() {
                assert!(text.contains(&v), "value {v:?} is not in the text {text:?}");
            }
        }
    }
    if g.is_done(&state) {
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
        let obj = parsed.as_object().expect("an object");
        assert_eq!(obj.keys().collect::<Vec<_>>(), ["name", "email"]);
        for ((_, v), expected) in obj.iter().zip(g.values(&state)) {
            assert_eq!(v.as_str().map(str::to_string), expected, "{}", String::from_utf8_lossy(&out));
        }
    }
}
