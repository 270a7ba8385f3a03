//! A bounded, seeded mutation fuzzer over the parsers of untrusted input (issue 14): each target
//! of `fuzz/targets.rs` runs on committed seeds and on `TIQU_FUZZ_ITERS` (default 2,000)
//! mutations of them: bit flips, byte edits, splices, cut tails, boundary integers. It finds the
//! shallow crashes cheaply in every test run; `fuzz/` runs the same targets under libFuzzer's
//! coverage guidance for long runs by hand. A failure prints the input as hex, to become a seed.

#[path = "fuzz/targets.rs"]
mod targets;

use std::path::Path;

use rand::{rngs::StdRng, Rng, SeedableRng};

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(path)).unwrap()
}

fn iterations() -> usize {
    std::env::var("TIQU_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000)
}

/// Bytes that make or break JSON's structure.
const JSON_BYTES: &[u8] = b"{}[]\",:0123456789-.e\\u\n ";

const INTERESTING: [u64; 10] = [0, 1, 2, 0x7f, 0xff, 0x7fff_ffff, 0xffff_ffff, 1 << 62, u64::MAX - 1, u64::MAX];

fn mutate(rng: &mut StdRng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=4) {
        let len = input.len();
        match rng.random_range(0..7) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] = rng.random();
            }
            2 => {
                let i = rng.random_range(0..=len);
                let bytes: Vec<u8> = (0..rng.random_range(1..8)).map(|_| JSON_BYTES[rng.random_range(0..JSON_BYTES.len())]).collect();
                input.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(16));
                input.drain(i..i + n);
            }
            4 if len > 0 => input.truncate(rng.random_range(0..len)),
            5 => {
                // A piece of another seed, where structure from elsewhere meets this one.
                let other = &seeds[rng.random_range(0..seeds.len())];
                if !other.is_empty() {
                    let a = rng.random_range(0..other.len());
                    let b = rng.random_range(a..=other.len().min(a + 64));
                    let i = rng.random_range(0..=len);
                    input.splice(i..i, other[a..b].iter().copied());
                }
            }
            _ if len >= 8 => {
                // A boundary integer written over 8 bytes (lengths, offsets) or as decimal text.
                let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
                let i = rng.random_range(0..=len - 8);
                if rng.random() {
                    input[i..i + 8].copy_from_slice(&v.to_le_bytes());
                } else {
                    input.splice(i..i + 1, v.to_string().into_bytes());
                }
            }
            _ => {}
        }
    }
}

/// Runs `target` on every seed and on mutations of them; a panic names the input.
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, target: fn(&[u8])) {
    let mut rng = StdRng::seed_from_u64(name.bytes().map(u64::from).sum());
    let run = |input: &[u8]| {
        if std::panic::catch_unwind(|| target(input)).is_err() {
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            panic!("fuzz target {name} failed on input (hex) {hex}");
        }
    };
    for seed in &seeds {
        run(seed);
    }
    for _ in 0..iterations() {
        let mut input = seeds[rng.random_range(0..seeds.len())].clone();
        mutate(&mut rng, &seeds, &mut input);
        run(&input);
    }
}

#[test]
fn fuzz_safetensors() {
    let mut small = Vec::new();
    let header = br#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]}}"#;
    small.extend_from_slice(&(header.len() as u64).to_le_bytes());
    small.extend_from_slice(header);
    small.extend_from_slice(&[0x3f; 22]);
    fuzz("safetensors", vec![small, fixture("peft-adapter-tied/adapter_model.safetensors")], targets::safetensors);
}

#[test]
fn fuzz_config() {
    let seeds = vec![fixture("tiny-untied/config.json"), fixture("tiny-tied/config.json"), fixture("null-eos/config.json")];
    fuzz("config", seeds, targets::config);
}

#[test]
fn fuzz_adapter_config() {
    fuzz("adapter_config", vec![fixture("peft-adapter-tied/adapter_config.json")], targets::adapter_config);
}

#[test]
fn fuzz_sft_records() {
    let jsonl = fixture("sft_small.jsonl");
    let first = String::from_utf8_lossy(&jsonl).lines().next().unwrap().to_string();
    let seeds = vec![jsonl.iter().take(4096).copied().collect(), format!("[{first}]").into_bytes(), first.into_bytes()];
    fuzz("sft_records", seeds, targets::sft_records);
}

#[test]
fn fuzz_table() {
    let seeds: [&[u8]; 4] = [
        "\u{0}\u{feff}id,text,name\r\n1,\"龙琳，邮箱 a@b.cn, 说\"\"你好\"\"\n第二行\",龙琳\r\n\r\n2,,x\n3,\"\"\"q\"\"\",\n".as_bytes(),
        "\u{1}text\tname\n投诉\t龙琳\n\n\"a\tb\"\t\n".as_bytes(),
        "\u{2}[{\"text\": \"价格 4.50\", \"name\": 4.50},\n {\"text\": \"x\", \"name\": null}]".as_bytes(),
        "\u{2}{\"text\": \"a\", \"name\": \"a\"}\n\n{\"text\": \"\", \"name\": \"b\"}\n".as_bytes(),
    ];
    fuzz("table", seeds.iter().map(|s| s.to_vec()).collect(), targets::table);
}

#[test]
fn fuzz_schema() {
    let seeds = [
        r#"["name", "address", "email", "question"]"#,
        r#"{"fields": [{"name": "name", "description": "the sender", "nullable": false}, "email"]}"#,
        r#"{"fields": ["姓名", {"name": "a\"b\\c\u0001"}]}"#,
    ];
    fuzz("schema", seeds.iter().map(|s| s.as_bytes().to_vec()).collect(), targets::schema);
}

#[test]
fn fuzz_grammar() {
    let text = "龙琳，宁夏回族自治区璐市城东林街g座 955491，邮箱 nafan@example.com。\"引号\"\\ 和\t制表";
    let mut seeds = Vec::new();
    for mode in [0u8, 1] {
        let mut seed = vec![mode, text.len().min(255) as u8];
        seed.extend_from_slice(&text.as_bytes()[..text.len().min(255)]);
        seed.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
        seeds.push(seed);
    }
    fuzz("grammar", seeds, targets::grammar);
}
