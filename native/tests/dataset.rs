//! `tiqu data import|check|split` end to end on real small files of each kind: what they write,
//! the findings they report, and one clear `error:` line naming the line for bad input, with
//! nothing on disk lost or overwritten.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tiqu_core::dataset::sft_records::parse_records;
use tiqu_core::sft::Example;
use tiqu_core::{Schema, Tokenizer};

fn tiqu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tiqu")).args(args).output().expect("run tiqu")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "exit {:?}: {}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A failure with exit 1 and one `error:` line that contains every `needle`.
fn assert_clean_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected exit 1; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "error line should name `{n}`: {}", lines[0]);
    }
}

/// Every file under `dir` with its bytes: compared before and after a failing command.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(snapshot(&path));
        } else if path.is_file() {
            out.insert(path.clone(), fs::read(&path).unwrap());
        } else {
            // A FIFO would block a read: its presence is what is compared.
            out.insert(path.clone(), Vec::new());
        }
    }
    out
}

/// Runs a command that must fail cleanly and leave `dir` exactly as it was.
fn fails_cleanly(dir: &Path, args: &[&str], needles: &[&str]) {
    let before = snapshot(dir);
    assert_clean_error(&tiqu(args), needles);
    assert_eq!(snapshot(dir), before, "`tiqu {}` changed files on disk", args.join(" "));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tokenizer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/qwen3-tokenizer")
}

fn jsonl(path: &Path) -> Vec<Value> {
    fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

fn output_of(record: &Value) -> Value {
    serde_json::from_str(record["output"].as_str().expect("output is a string")).expect("output is JSON")
}

const T1: &str = "龙琳，宁夏回族自治区璐市城东林街g座 955491，邮箱 nafan@example.com。小区垃圾堆积成山，没人清理！";
const T2: &str = "我是张伟, 地址: 北京市朝阳区建国路88号, 电梯又坏了, 说\"马上修\"却没人来";

#[test]
fn import_reads_csv_tsv_and_json_into_records_training_reads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // CSV as a spreadsheet exports it: a byte-order mark, CRLF, a quoted text with commas, a
    // doubled quote and a line break inside the quotes, an empty cell, an unmapped column.
    let csv = format!(
        "\u{feff}编号,投诉内容,姓名,地址,邮箱,问题\r\n1,\"{T1}\",龙琳,宁夏回族自治区璐市城东林街g座 955491,nafan@example.com,小区垃圾堆积成山，没人清理！\r\n\
         2,\"{}\n（第二行）\",张伟,北京市朝阳区建国路88号,,电梯又坏了\r\n3,,无名,,,\r\n",
        T2.replace('"', "\"\"")
    );
    fs::write(d.join("in.csv"), &csv).unwrap();
    let mapping = ["--text", "投诉内容", "--field", "name=姓名", "--field", "address=地址", "--field", "email=邮箱", "--field", "question=问题"];
    let out = d.join("csv.jsonl");
    let stdout = ok(&tiqu(&[&["data", "import", s(&d.join("in.csv")), "--out", s(&out)][..], &mapping[..]].concat()));
    assert!(stdout.contains("wrote 2 records") && stdout.contains("left out 1 row(s) with an empty text (line 5)"), "{stdout}");
    let recs = jsonl(&out);
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["input"], T1);
    assert_eq!(recs[1]["input"].as_str().unwrap(), format!("{T2}\n（第二行）"));
    assert_eq!(recs[0]["system"].as_str().unwrap(), Schema::default().system_prompt());
    assert_eq!(recs[0]["instruction"], "");
    assert_eq!(recs[0]["output"].as_str().unwrap(), tiqu_core::synth::python_json(&[
        ("name", "龙琳"), ("address", "宁夏回族自治区璐市城东林街g座 955491"), ("email", "nafan@example.com"), ("question", "小区垃圾堆积成山，没人清理！")
    ]));
    assert_eq!(output_of(&recs[1])["email"], Value::Null, "an empty cell is null");
    // Training's own parser reads the file.
    assert_eq!(parse_records(&fs::read_to_string(&out).unwrap(), "csv.jsonl").unwrap().len(), 2);

    // The same rows as TSV, a JSON array and JSONL give the same records.
    let tsv = format!("text\tname\taddress\temail\tquestion\n{T1}\t龙琳\t宁夏回族自治区璐市城东林街g座 955491\tnafan@example.com\t小区垃圾堆积成山，没人清理！\n");
    fs::write(d.join("in.tsv"), tsv).unwrap();
    let row = serde_json::json!({"text": T1, "name": "龙琳", "address": "宁夏回族自治区璐市城东林街g座 955491", "email": "nafan@example.com", "question": "小区垃圾堆积成山，没人清理！", "id": 7});
    fs::write(d.join("in.json"), serde_json::to_string_pretty(&[&row]).unwrap()).unwrap();
    fs::write(d.join("in.jsonl"), format!("{row}\n")).unwrap();
    for name in ["in.tsv", "in.json", "in.jsonl"] {
        let out = d.join(format!("{name}.out.jsonl"));
        // `--field NAME` alone maps a column of the same name.
        ok(&tiqu(&["data", "import", s(&d.join(name)), "--text", "text", "--field", "name", "--field", "address", "--field", "email", "--field", "question", "--out", s(&out)]));
        assert_eq!(jsonl(&out), recs[..1], "{name}");
    }

    // What import writes passes check with no finding, even --strict.
    let report = ok(&tiqu(&["data", "check", s(&d.join("csv.jsonl")), "--strict", "--json"]));
    let summary: Value = serde_json::from_str(report.lines().last().unwrap()).unwrap();
    assert_eq!((summary["records"].as_u64(), summary["usable"].as_u64(), summary["findings"].as_u64()), (Some(2), Some(2), Some(0)));
}

#[test]
fn import_bad_tables_are_one_line_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out.jsonl");
    let write = |name: &str, bytes: &[u8]| {
        fs::write(d.join(name), bytes).unwrap();
        d.join(name)
    };
    let import = |file: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["data", "import", s(file), "--text", "text", "--field", "name", "--out", s(&out)].map(String::from).to_vec();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let run = |args: Vec<String>, needles: &[&str]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_cleanly(d, &args, needles);
    };

    // An unterminated quote on line 3 swallows the rest of the file: named where it opens.
    let f = write("quote.csv", "text,name\n\"好的, 一\",龙琳\n\"没有结束的引号,张伟\n下一行,王五\n".as_bytes());
    run(import(&f, &[]), &["quote.csv:3:", "never closed"]);
    // A mapping to a column that does not exist names the columns there are.
    let f = write("cols.csv", "text,姓名\n投诉,龙琳\n".as_bytes());
    run(import(&f, &[]), &["cols.csv", "no column `name`", "`text`, `姓名`"]);
    let f = write("cols.json", r#"[{"text": "投诉", "姓名": "龙琳"}]"#.as_bytes());
    run(import(&f, &[]), &["cols.json", "no column `name`"]);
    // Mixed encodings: line 3 was pasted in from a GBK system (投诉 = CD B6 CB DF).
    let mut gbk = "text,name\n好的,龙琳\n".as_bytes().to_vec();
    gbk.extend_from_slice(b"\xCD\xB6\xCB\xDF,x\n");
    let f = write("gbk.csv", &gbk);
    run(import(&f, &[]), &["gbk.csv:3:", "not valid UTF-8", "iconv"]);
    let mut gbk = b"{\"text\": \"ok\", \"name\": \"x\"}\n{\"text\": \"".to_vec();
    gbk.extend_from_slice(b"\xCD\xB6\xCB\xDF\", \"name\": \"x\"}\n");
    let f = write("gbk.jsonl", &gbk);
    run(import(&f, &[]), &["gbk.jsonl:2:", "not valid UTF-8"]);
    // A spreadsheet's "Unicode text" export is UTF-16.
    let f = write("utf16.tsv", &[&b"\xFF\xFE"[..], &"text\tname\n".encode_utf16().flat_map(u16::to_le_bytes).collect::<Vec<u8>>()].concat());
    run(import(&f, &["--format", "tsv"]), &["utf16.tsv:1:", "UTF-16", "iconv"]);
    // A row with an unquoted comma in its text.
    let f = write("fields.tsv", "text\tname\n一\t二\t三\n".as_bytes());
    run(import(&f, &[]), &["fields.tsv:2:", "3 field(s), the header 2"]);
    // A broken JSON array.
    let f = write("broken.json", "[\n{\"text\": \"a\", \"name\": \"b\"},\n{\"text\": \"a\" \"name\": \"b\"}\n]".as_bytes());
    run(import(&f, &[]), &["broken.json:3:", "invalid JSON array"]);
    // Flags: an unknown extension, a bad --field, no --field.
    let f = write("table.xlsx", b"PK");
    run(import(&f, &[]), &["table.xlsx", "--format csv|tsv|json"]);
    let good = write("good.csv", "text,name\n龙琳投诉,龙琳\n".as_bytes());
    run(import(&good, &["--field", "=x"]), &["--field `=x`", "NAME=COLUMN"]);
    run(vec!["data".into(), "import".into(), s(&good).into(), "--text".into(), "text".into(), "--out".into(), s(&out).into()], &["--field"]);
    // An existing --out is kept; the input is never the output, even with --force.
    fs::write(&out, "precious\n").unwrap();
    run(import(&good, &[]), &["out.jsonl exists", "--force"]);
    let args: Vec<String> = ["data", "import", s(&good), "--text", "text", "--field", "name", "--out", s(&good), "--force"].map(String::from).to_vec();
    run(args, &["is the input"]);
    ok(&tiqu(&import(&good, &["--force"]).iter().map(String::as_str).collect::<Vec<_>>()));
    assert_eq!(jsonl(&out).len(), 1);
}

/// A JSONL file with one problem of each kind, by line.
fn problem_file(dir: &Path) -> (PathBuf, PathBuf) {
    let rec = |input: &str, out: Value| serde_json::json!({"instruction": "提取", "input": input, "output": out.to_string()}).to_string();
    let good = serde_json::json!({"name": "龙琳", "address": "宁夏回族自治区璐市城东林街g座 955491", "email": "nafan@example.com", "question": "小区垃圾堆积成山，没人清理！"});
    let mut width = good.clone();
    width["address"] = "宁夏回族自治区璐市城东林街g座955491".into(); // a space dropped
    width["question"] = "小区垃圾堆积成山,没人清理!".into(); // half-width punctuation
    let mut typo = good.clone();
    typo["email"] = "nafan@exmaple.com".into();
    let mut number = good.clone();
    number["address"] = 955491.into();
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("email");
    let t3 = "王五投诉：楼上装修太吵。";
    let other = serde_json::json!({"name": "王五", "address": null, "email": null, "question": "楼上装修太吵。"});
    let mut conflict = other.clone();
    conflict["name"] = Value::Null;
    let long = format!("{t3}{}", "噪音".repeat(500));
    let lines = vec![
        rec(T1, good.clone()),                                                     // 1 fine
        "{\"instruction\": \"提取\", \"input\": \"坏".to_string(),                  // 2 invalid JSON
        String::new(),                                                             // 3 GBK, below
        serde_json::json!({"instruction": "提取", "input": T1}).to_string(),       // 4 no output
        serde_json::json!({"instruction": "提取", "input": format!("{T1}（5）"), "output": "name: 龙琳"}).to_string(), // 5 not JSON
        rec(&format!("{T1}（6）"), missing),                                         // 6 no email
        rec(&format!("{T1}（7）"), width),                                           // 7 fixable ×2
        rec(&format!("{T1}（8）"), typo),                                            // 8 not fixable
        rec(&format!("{T1}（9）"), number),                                          // 9 a number
        rec(t3, other.clone()),                                                    // 10 fine
        rec(&format!(" {t3}"), other),                                             // 11 duplicate of 10
        rec(t3, conflict),                                                         // 12 conflicting with 10
        rec("张伟：电梯坏了三天。", serde_json::json!({"name": "张伟", "address": null, "email": null, "question": "电梯坏了三天。"})), // 13 in eval
        rec(&long, serde_json::json!({"name": "王五", "address": null, "email": null, "question": "楼上装修太吵。"})), // 14 too long
        serde_json::json!({"instruction": "提取", "input": "x", "output": {"name": "x"}}).to_string(), // 15 output as object
    ];
    let mut bytes = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if i == 2 {
            bytes.extend_from_slice(b"{\"instruction\": \"\xCD\xB6\xCB\xDF\"}");
        }
        bytes.extend_from_slice(l.as_bytes());
        bytes.push(b'\n');
    }
    let train = dir.join("train.jsonl");
    fs::write(&train, bytes).unwrap();
    let eval = dir.join("eval.jsonl");
    fs::write(&eval, format!("{}\n{}\n", rec("别的文本。", serde_json::json!({})), rec("张伟：电梯坏了三天。", serde_json::json!({})))).unwrap();
    (train, eval)
}

#[test]
fn check_reports_each_problem_with_its_line_and_fixes_only_safe_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (train, eval) = problem_file(dir.path());
    let findings = dir.path().join("f.jsonl");
    let fixed = dir.path().join("fixed.jsonl");
    let tok = tokenizer_dir();
    let input_before = fs::read(&train).unwrap();
    let args = ["data", "check", s(&train), "--eval", s(&eval), "--tokenizer", s(&tok), "--max-length", "300",
        "--findings", s(&findings), "--fix", "--out", s(&fixed), "--json"];
    let o = tiqu(&args);
    let stdout = ok(&o);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();

    let got: Vec<(u64, String, Option<String>)> = jsonl(&findings)
        .iter()
        .map(|f| (f["line"].as_u64().unwrap(), f["kind"].as_str().unwrap().to_string(), f["field"].as_str().map(String::from)))
        .collect();
    let want: Vec<(u64, &str, Option<&str>)> = vec![
        (2, "invalid_json", None),
        (3, "encoding", None),
        (4, "missing_field", Some("output")),
        (5, "output_not_json", Some("output")),
        (6, "output_missing_field", Some("email")),
        (7, "not_verbatim", Some("address")),
        (7, "not_verbatim", Some("question")),
        (8, "not_verbatim", Some("email")),
        (9, "not_a_string", Some("address")),
        (11, "duplicate", None),
        (12, "conflicting_labels", None),
        (13, "eval_overlap", None),
        (14, "too_long", None),
        (15, "bad_field", Some("output")),
    ];
    let want: Vec<(u64, String, Option<String>)> = want.into_iter().map(|(l, k, f)| (l, k.to_string(), f.map(String::from))).collect();
    assert_eq!(got, want);
    let all = jsonl(&findings);
    // Each finding has the five keys; the nearest spans are the text's.
    for f in &all {
        for key in ["line", "kind", "field", "message", "suggestion"] {
            assert!(f.get(key).is_some(), "{f} lacks {key}");
        }
    }
    assert_eq!(all[5]["suggestion"], "宁夏回族自治区璐市城东林街g座 955491");
    assert_eq!(all[5]["fixable"], true);
    assert_eq!(all[6]["suggestion"], "小区垃圾堆积成山，没人清理！");
    assert_eq!((all[7]["suggestion"].as_str(), all[7]["fixable"].as_bool()), (Some("nafan@example.com"), Some(false)));
    assert!(all[9]["message"].as_str().unwrap().contains("line 10"), "{}", all[9]);
    assert!(all[11]["message"].as_str().unwrap().contains("line 2"), "eval line: {}", all[11]);

    // Token lengths are training's: the chat-templated prompt plus the answer.
    let tokenizer = Tokenizer::from_bytes(&fs::read(tok.join("tokenizer.json")).unwrap(), "tokenizer.json").unwrap();
    let text = String::from_utf8_lossy(&input_before).into_owned();
    let lens: Vec<usize> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<tiqu_core::sft::SftRecord>(l).ok())
        .filter(|r| r.output.is_some())
        .map(|r| Example::new(&r, &tokenizer).unwrap().len())
        .collect();
    let lengths = &summary["lengths"];
    assert_eq!(lengths["max"].as_u64().unwrap() as usize, *lens.iter().max().unwrap());
    assert_eq!(lengths["min"].as_u64().unwrap() as usize, *lens.iter().min().unwrap());
    assert_eq!(lengths["over"], 1);
    let long_line = all.iter().find(|f| f["kind"] == "too_long").unwrap();
    assert!(long_line["message"].as_str().unwrap().starts_with(&format!("{} tokens", lens.iter().max().unwrap())), "{long_line}");
    assert_eq!((summary["records"].as_u64(), summary["fixes"].as_u64(), summary["dropped"].as_u64()), (Some(15), Some(2), Some(2)));
    // Null rates count over the records whose output is an object: lines 1 and 6-14.
    let fields = summary["fields"].as_array().unwrap();
    assert_eq!(fields[1]["field"], "address");
    assert_eq!(fields[1]["null"], 5, "{fields:?}");

    // The input is untouched; the fixed file changes the two fixable labels and nothing else.
    assert_eq!(fs::read(&train).unwrap(), input_before);
    let fixed_recs = jsonl(&fixed);
    assert_eq!(fixed_recs.len(), 13, "the invalid-JSON and GBK lines are left out");
    let out7 = output_of(&fixed_recs[4]);
    assert_eq!(out7["address"], "宁夏回族自治区璐市城东林街g座 955491");
    assert_eq!(out7["question"], "小区垃圾堆积成山，没人清理！");
    assert_eq!(output_of(&fixed_recs[5])["email"], "nafan@exmaple.com", "a typo is not fixed");
    let o = tiqu(&["data", "check", s(&fixed), "--findings", s(&dir.path().join("f2.jsonl")), "--json"]);
    let again: Value = serde_json::from_str(ok(&o).lines().last().unwrap()).unwrap();
    assert_eq!(again["fixable"], 0);

    // --strict: exit 2 with findings; the findings file of a previous run is replaced.
    let o = tiqu(&["data", "check", s(&train), "--findings", s(&findings), "--strict"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("not_verbatim") && table.contains("tokens: not measured"), "{table}");
}

/// Proves: a key written twice, in the record or inside its output, is a finding (it passed
/// `--strict` while training refused the record and eval kept the last label silently).
#[test]
fn check_names_keys_written_twice() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("twice.jsonl");
    let out = r#"{\"name\": \"龙琳\", \"address\": null, \"email\": null, \"question\": null}"#;
    let twice_out = r#"{\"name\": \"X\", \"address\": null, \"email\": null, \"question\": null, \"name\": \"龙琳\"}"#;
    let lines = [
        format!(r#"{{"instruction": "提取", "input": "{T1}", "output": "{out}"}}"#),
        format!(r#"{{"instruction": "提取", "input": "{T1}（2）", "input": "{T1}（2b）", "output": "{out}"}}"#),
        format!(r#"{{"instruction": "提取", "input": "{T1}（3）", "output": "{twice_out}"}}"#),
    ];
    fs::write(&file, lines.join("\n") + "\n").unwrap();
    let findings = dir.path().join("f.jsonl");
    let o = tiqu(&["data", "check", s(&file), "--findings", s(&findings), "--strict"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let got: Vec<(u64, String, String)> = jsonl(&findings)
        .iter()
        .map(|f| (f["line"].as_u64().unwrap(), f["kind"].as_str().unwrap().to_string(), f["field"].as_str().unwrap_or("").to_string()))
        .collect();
    assert_eq!(got, [(2, "repeated_key".to_string(), "input".to_string()), (3, "repeated_key".to_string(), "output".to_string())]);
}

/// Proves: a record key spelt with other case (`Input`) is a finding, and training refuses the
/// record (it trained without its text, and the check said nothing); an evaluation file with
/// no readable record is an error (the overlap check compared against nothing, exit 0).
#[test]
fn check_names_misspelt_keys_and_unreadable_eval_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = r#"{\"name\": \"龙琳\", \"address\": null, \"email\": null, \"question\": null}"#;
    let file = dir.path().join("typo.jsonl");
    fs::write(&file, format!("{{\"instruction\": \"提取\", \"Input\": \"{T1}\", \"output\": \"{out}\"}}\n")).unwrap();
    let findings = dir.path().join("f.jsonl");
    let o = tiqu(&["data", "check", s(&file), "--findings", s(&findings), "--strict"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let found = jsonl(&findings);
    assert_eq!((found[0]["kind"].as_str(), found[0]["field"].as_str(), found[0]["suggestion"].as_str()), (Some("bad_field"), Some("Input"), Some("input")));
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-tied");
    let run = dir.path().join("run");
    fails_cleanly(dir.path(), &["--backend", "cpu", "train", "--model", s(&model), "--data", s(&file), "--max-steps", "1", "--out", s(&run)], &["typo.jsonl:1", "`Input` is not a key"]);

    let good = dir.path().join("good.jsonl");
    fs::write(&good, format!("{{\"instruction\": \"提取\", \"input\": \"{T1}\", \"output\": \"{out}\"}}\n")).unwrap();
    let garbage = dir.path().join("garbage.jsonl");
    fs::write(&garbage, "garbage\nmore garbage\n").unwrap();
    fails_cleanly(dir.path(), &["data", "check", s(&good), "--eval", s(&garbage)], &["garbage.jsonl:1", "no record with a text"]);
}

#[test]
fn check_reads_the_seeds_json_array_and_names_array_lines() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str, email: &str| format!("{{\"name\": \"{name}\", \"address\": null, \"email\": \"{email}\", \"question\": null}}");
    let seed = serde_json::to_string_pretty(&serde_json::json!([
        {"instruction": "将文本中的name、address、email、question提取出来", "input": "龙琳，邮箱 nafan@example.com", "output": out("龙琳", "nafan@example.com")},
        {"instruction": "将文本中的name、address、email、question提取出来", "input": "张伟，邮箱 zw@example.com", "output": out("张伟", "zw@exampel.com")},
    ]))
    .unwrap();
    let file = dir.path().join("seed.json");
    fs::write(&file, &seed).unwrap();
    let o = tiqu(&["data", "check", s(&file), "--json"]);
    let summary: Value = serde_json::from_str(ok(&o).lines().last().unwrap()).unwrap();
    assert_eq!(summary["by_kind"], serde_json::json!({"not_verbatim": 1}));
    // The default findings file sits beside the input; the finding names the record's line.
    let findings = jsonl(&dir.path().join("seed.findings.jsonl"));
    let line = seed.lines().position(|l| l.contains("zw@example.com")).unwrap() - 2 + 1; // the record's `{`
    assert_eq!(findings[0]["line"].as_u64().unwrap() as usize, line, "{seed}");
    // Running again replaces its own findings file; it refuses to replace any other file.
    ok(&tiqu(&["data", "check", s(&file)]));
    fs::write(dir.path().join("seed.findings.jsonl"), "my notes\n").unwrap();
    fails_cleanly(dir.path(), &["data", "check", s(&file)], &["seed.findings.jsonl exists", "--force"]);
}

#[test]
fn check_bad_inputs_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (train, _) = problem_file(d);
    let t = s(&train);
    fails_cleanly(d, &["data", "check", s(&d.join("nope.jsonl"))], &["cannot read", "nope.jsonl"]);
    fs::write(d.join("broken.json"), "[\n{\"instruction\": \"a\", \"output\": \"{}\"},\n{\"instruction\": \"a\",, }\n]").unwrap();
    fails_cleanly(d, &["data", "check", s(&d.join("broken.json"))], &["broken.json:3:", "invalid JSON array"]);
    // 投诉 in GBK: CD B6 alone happens to be valid UTF-8 (U+0376); CB DF is not.
    fs::write(d.join("gbk.json"), b"[\n{\"instruction\": \"\xCD\xB6\xCB\xDF\"}]").unwrap();
    fails_cleanly(d, &["data", "check", s(&d.join("gbk.json"))], &["gbk.json:2:", "not valid UTF-8"]);
    fails_cleanly(d, &["data", "check", t, "--fix"], &["--fix needs --out"]);
    fails_cleanly(d, &["data", "check", t, "--fix", "--out", t, "--force"], &["is the input"]);
    fails_cleanly(d, &["data", "check", t, "--findings", t, "--force"], &["is the input"]);
    fails_cleanly(d, &["data", "check", t, "--tokenizer", s(&d.join("no-such-dir"))], &["cannot read the tokenizer", "no-such-dir"]);
    // Two tokenizers named: the --model one was never read (a usage error, exit 2).
    let both = tiqu(&["data", "check", t, "--model", "any", "--tokenizer", s(&tokenizer_dir())]);
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(both.status.code() == Some(2) && stderr.contains("'--model <MODEL>' cannot be used with '--tokenizer"), "{stderr}");
    fs::write(d.join("kept.jsonl"), "precious\n").unwrap();
    fails_cleanly(d, &["data", "check", t, "--fix", "--out", s(&d.join("kept.jsonl"))], &["kept.jsonl exists"]);
}

#[test]
fn split_is_seeded_and_keeps_duplicate_texts_on_one_side() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut lines = Vec::new();
    for i in 0..60 {
        // Texts 0..20 three times each: once plain, once with a space, once with a full-width comma.
        let text = match i / 20 {
            0 => format!("张{i}，投诉{i}"),
            1 => format!("张{} ，投诉{}", i % 20, i % 20),
            _ => format!("张{},投诉{}", i % 20, i % 20),
        };
        lines.push(serde_json::json!({"instruction": "", "input": text, "output": "{}", "id": i}).to_string());
    }
    let file = d.join("all.jsonl");
    fs::write(&file, lines.join("\n") + "\n").unwrap();
    let stdout = ok(&tiqu(&["data", "split", s(&file), "--eval-fraction", "0.2", "--seed", "5"]));
    assert!(stdout.contains("20 text(s) occur more than once"), "{stdout}");
    let (train, eval) = (jsonl(&d.join("all.train.jsonl")), jsonl(&d.join("all.eval.jsonl")));
    assert_eq!((train.len(), eval.len()), (48, 12));
    let group = |r: &Value| r["id"].as_u64().unwrap() % 20;
    for e in &eval {
        assert!(train.iter().all(|t| group(t) != group(e)), "text {} is on both sides", group(e));
    }
    let mut ids: Vec<u64> = train.iter().chain(&eval).map(|r| r["id"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..60).collect::<Vec<_>>(), "every record once");

    // The same seed gives the same split; another seed another one; outputs are not replaced
    // without --force.
    fails_cleanly(d, &["data", "split", s(&file), "--eval-fraction", "0.2", "--seed", "5"], &["all.train.jsonl exists", "--force"]);
    let (a, b) = (d.join("a.jsonl"), d.join("b.jsonl"));
    ok(&tiqu(&["data", "split", s(&file), "--eval-fraction", "0.2", "--seed", "5", "--train-out", s(&a), "--eval-out", s(&b)]));
    assert_eq!(jsonl(&b), eval);
    ok(&tiqu(&["data", "split", s(&file), "--eval-fraction", "0.2", "--seed", "6", "--train-out", s(&a), "--eval-out", s(&b), "--force"]));
    assert_ne!(jsonl(&b), eval);

    // Bad input: a line that is not JSON, a fraction out of range, too few texts.
    fs::write(d.join("bad.jsonl"), format!("{}\n{{oops\n", lines[0])).unwrap();
    fails_cleanly(d, &["data", "split", s(&d.join("bad.jsonl"))], &["bad.jsonl:2:", "not valid JSON"]);
    fails_cleanly(d, &["data", "split", s(&file), "--eval-fraction", "1.5"], &["--eval-fraction"]);
    fs::write(d.join("one.jsonl"), format!("{}\n{}\n", lines[0], lines[20])).unwrap();
    fails_cleanly(d, &["data", "split", s(&d.join("one.jsonl")), "--eval-fraction", "0.5"], &["leaves the evaluation set empty"]);
}

/// Proves: a command's outputs appear together or not at all. Before, `split` renamed its
/// evaluation file into place before the training file was finished, and `check --fix` its
/// fixed copy before the findings were written; two spellings of one path passed as two files.
#[test]
fn several_outputs_appear_together_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (train, _) = problem_file(d);
    let t = s(&train);
    let p = |name: &str| d.join(name).display().to_string();
    ok(&tiqu(&["data", "synth", "--n", "20", "--out", &p("s.jsonl")]));
    fs::write(d.join("s.eval.jsonl"), "KEEP\n").unwrap();
    fs::write(d.join("fixed.jsonl"), "KEEP\n").unwrap();
    // The second output cannot be written: the first is not put in place either, even with --force.
    fails_cleanly(d, &["data", "split", &p("s.jsonl"), "--train-out", &p("nd/"), "--force"], &["nd/", "a file name is needed"]);
    fails_cleanly(d, &["data", "check", t, "--fix", "--out", &p("fixed.jsonl"), "--findings", &p("nd/"), "--force"], &["nd/"]);
    // A failure leaves no folder made for an output either.
    fs::write(d.join("bad.csv"), "text,name\n\"never closed,x\n").unwrap();
    let deep = d.join("new/deep/o.jsonl");
    fails_cleanly(d, &["data", "import", &p("bad.csv"), "--text", "text", "--field", "name", "--out", s(&deep)], &["bad.csv:2:"]);
    assert!(!d.join("new").exists(), "the folders made for --out went with it");
    // One file under two spellings is one file.
    let same = d.join("sub/../x.jsonl");
    fs::create_dir(d.join("sub")).unwrap();
    fails_cleanly(d, &["data", "split", &p("s.jsonl"), "--train-out", &p("x.jsonl"), "--eval-out", s(&same)], &["are the same file"]);
    fails_cleanly(d, &["data", "check", t, "--fix", "--out", &p("x.jsonl"), "--findings", s(&same)], &["are the same file"]);
    // A pipe cannot be read twice.
    #[cfg(unix)]
    {
        let fifo = d.join("fifo.jsonl");
        assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        fails_cleanly(d, &["data", "split", s(&fifo)], &["fifo.jsonl", "not a regular file"]);
    }
}

/// Proves: Ctrl-C (SIGINT) during a long write removes the unfinished output beside its path
/// (a signal runs no destructor; before, `.NAME.tmp-PID` files piled up) and exits with 130.
#[cfg(unix)]
#[test]
fn an_interrupted_command_leaves_no_unfinished_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("big.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tiqu"))
        .args(["data", "synth", "--n", "10000000", "--out", s(&out)])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let partial = || fs::read_dir(dir.path()).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with(".big.jsonl."));
    let started = std::time::Instant::now();
    while !partial() {
        assert!(started.elapsed().as_secs() < 60, "no unfinished file appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted: removed 1 unfinished output"), "{stderr}");
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
