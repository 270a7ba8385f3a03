//! Loading never holds two full copies of the weights: a Qwen3-0.6B-shaped f32 checkpoint
//! (2.4 GB, written here) loads and generates with the child's peak RSS under 2× its file size.
//! The data tools never hold a data file whole.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::Command;

use tiqu_core::Qwen3Config;

/// Writes a safetensors file tensor by tensor (the test itself must not hold 2.4 GB either).
fn write_checkpoint(path: &Path, tensors: &[(String, Vec<usize>)]) -> u64 {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * 4;
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}));
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&header).unwrap();
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut out = BufWriter::new(File::create(path).unwrap());
    out.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    out.write_all(&header).unwrap();
    // Small non-zero values: weights of a plausible scale, cheap to produce.
    let block: Vec<u8> = (0..1 << 16).flat_map(|i: u32| (((i % 97) as f32 - 48.0) * 1e-3).to_le_bytes()).collect();
    for (_, shape) in tensors {
        let mut left = shape.iter().product::<usize>() * 4;
        while left > 0 {
            let n = left.min(block.len());
            out.write_all(&block[..n]).unwrap();
            left -= n;
        }
    }
    out.flush().unwrap();
    fs::metadata(path).unwrap().len()
}

fn children_peak_rss_bytes() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    usage.ru_maxrss as u64 * 1024
}

#[test]
fn loading_a_0_6b_checkpoint_peaks_under_twice_its_file_size() {
    let cfg = Qwen3Config::preset("qwen3-0.6b").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = cfg.raw.clone();
    config["torch_dtype"] = "float32".into();
    fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/qwen3-tokenizer/tokenizer.json");
    fs::copy(tokenizer, dir.path().join("tokenizer.json")).unwrap();
    let size = write_checkpoint(&dir.path().join("model.safetensors"), &cfg.tensor_shapes());

    let out = Command::new(env!("CARGO_BIN_EXE_tiqu"))
        .args(["--backend", "cpu", "generate", "--model", dir.path().to_str().unwrap(), "--prompt", "hi", "--max-new-tokens", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let peak = children_peak_rss_bytes();
    eprintln!("checkpoint {:.0} MiB, peak RSS {:.0} MiB", size as f64 / 1048576.0, peak as f64 / 1048576.0);
    assert!(peak < 2 * size, "peak RSS {peak} bytes is not under 2 × the {size}-byte checkpoint");
}

/// The peak RSS of one run of tiqu, read from the kernel's account of that child alone (the
/// other test's children run beside it). Linux counts the parent's peak at the time of the spawn
/// in it too (the child starts in the parent's memory), which is why this lives in the small
/// test binary of this file.
// The child is reaped by wait4, which also gives its rusage; Child::wait would not.
#[allow(clippy::zombie_processes)]
fn peak_rss(args: &[&str]) -> u64 {
    let child = Command::new(env!("CARGO_BIN_EXE_tiqu")).args(args).stdout(std::process::Stdio::null()).spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let (mut status, mut usage): (libc::c_int, libc::rusage) = (0, unsafe { std::mem::zeroed() });
    // SAFETY: waits for our own child and writes into values we own.
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{args:?} failed");
    usage.ru_maxrss as u64 * 1024
}

/// Proves: `data check` (with and without `--fix`), `data split` and `data import` read a file
/// a record at a time, in every form they take (JSONL, a JSON array, CSV): on 60,000 records
/// (37 MB) each peaks under the file's size plus 32 MiB. Reading it whole, check and split peaked
/// at 4.6–5.6 times its size (170–209 MB), so ten million records did not fit in 24 GB.
#[test]
fn data_tools_never_hold_a_file_whole() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let synth = Command::new(env!("CARGO_BIN_EXE_tiqu")).args(["data", "synth", "--n", "60000", "--out", &p("big.jsonl")]).output().unwrap();
    assert!(synth.status.success(), "{}", String::from_utf8_lossy(&synth.stderr));
    // The same records as a JSON array and as a CSV table, converted a line at a time: this
    // process's own peak is counted into its children's.
    let (mut array, mut csv) = (BufWriter::new(File::create(p("big.json")).unwrap()), BufWriter::new(File::create(p("big.csv")).unwrap()));
    array.write_all(b"[").unwrap();
    csv.write_all(b"input,output\n").unwrap();
    let quoted = |v: &serde_json::Value| format!("\"{}\"", v.as_str().unwrap().replace('"', "\"\""));
    for (i, line) in BufReader::new(File::open(p("big.jsonl")).unwrap()).lines().enumerate() {
        let line = line.unwrap();
        array.write_all(if i == 0 { b"\n" } else { b",\n" }).unwrap();
        array.write_all(line.as_bytes()).unwrap();
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        writeln!(csv, "{},{}", quoted(&record["input"]), quoted(&record["output"])).unwrap();
    }
    array.write_all(b"\n]\n").unwrap();
    array.flush().unwrap();
    csv.flush().unwrap();
    for name in ["big.jsonl", "big.json"] {
        let stem = name.replace('.', "-");
        let (file, findings, fixed) = (p(name), p("f.jsonl"), p(&format!("{stem}.fixed.jsonl")));
        let (train, eval) = (p(&format!("{stem}.train.jsonl")), p(&format!("{stem}.eval.jsonl")));
        let runs: [&[&str]; 3] = [
            &["data", "check", &file, "--findings", &findings, "--force"],
            &["data", "check", &file, "--findings", &findings, "--force", "--fix", "--out", &fixed],
            &["data", "split", &file, "--train-out", &train, "--eval-out", &eval],
        ];
        let size = fs::metadata(&file).unwrap().len();
        for args in runs {
            let peak = peak_rss(args);
            assert!(peak < size + (32 << 20), "{args:?}: peak RSS {} MB for a {} MB file", peak >> 20, size >> 20);
        }
    }
    for name in ["big.jsonl", "big.json", "big.csv"] {
        let out = p(&format!("{name}.imported.jsonl"));
        let args = ["data", "import", &p(name), "--text", "input", "--field", "output", "--out", &out];
        let size = fs::metadata(p(name)).unwrap().len();
        let peak = peak_rss(&args);
        assert!(peak < size + (32 << 20), "{args:?}: peak RSS {} MB for a {} MB file", peak >> 20, size >> 20);
    }
    // The outputs are read only now: this process's peak would count into a later child's.
    let read = |name: &str| fs::read(p(name)).unwrap();
    for stem in ["big-jsonl", "big-json"] {
        assert_eq!(read(&format!("{stem}.fixed.jsonl")), read("big.jsonl"), "synthetic records need no fix");
    }
    let lines = |name: &str| read(name).split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
    assert_eq!((lines("big-jsonl.train.jsonl"), lines("big-jsonl.eval.jsonl")), (54000, 6000));
    assert_eq!(read("big-json.train.jsonl"), read("big-jsonl.train.jsonl"), "both forms split alike");
    assert_eq!(lines("big.jsonl.imported.jsonl"), 60000);
    assert_eq!(fs::read(p("big.csv.imported.jsonl")).unwrap(), fs::read(p("big.jsonl.imported.jsonl")).unwrap(), "every form imports alike");
    assert_eq!(fs::read(p("big.json.imported.jsonl")).unwrap(), fs::read(p("big.jsonl.imported.jsonl")).unwrap(), "every form imports alike");
}
