//! Sharded extraction as a job engine runs it (issue 17): this test plays the controller of a
//! 4-task job array over a synthetic input of 2,000 lines, kills two tasks with SIGKILL mid-way,
//! starts them again, and checks that `tiqu parts merge` gives output byte-identical to one
//! process over the whole input; then that a retried finished task does nothing, that `--shard
//! auto` reads the job engines' variables, and that merge names a missing or torn part. With
//! moto's S3 server installed (scripts/test installs it), the same runs read the input and the
//! model from object storage and write parts and output there.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SHARDS: usize = 4;

fn model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-untied").display().to_string()
}

fn tiqu() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tiqu"));
    c.env("HF_HUB_OFFLINE", "1");
    c
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "exit {:?}: {}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Lines of varied length and content, with blank and non-UTF-8 lines that get error lines.
fn synthetic_input(lines: usize) -> Vec<u8> {
    let names = ["龙琳", "王小明", "张伟", "Li Na", "陈静"];
    let places = ["宁夏回族自治区璐市城东林街g座 955491", "上海市浦东新区", "北京市朝阳区建国路88号", "广州市天河区"];
    let mut out = Vec::new();
    for i in 0..lines {
        match i % 97 {
            13 => {}
            51 => out.extend_from_slice(b"\xff\xfe bad bytes"),
            _ => {
                let line = format!(
                    "{}，{}，邮箱 u{i}@example.com。{}",
                    names[i % names.len()],
                    places[i % places.len()],
                    "小区垃圾堆积成山".repeat(1 + i % 3)
                );
                out.extend_from_slice(line.as_bytes());
            }
        }
        out.push(b'\n');
    }
    out
}

fn extract_args<'a>(m: &'a str, input: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["--backend", "cpu", "extract", "--model", m, "--input", input, "--out", out, "--max-new-tokens", "12", "--batch", "8"]
}

fn spawn_shard(args: &[&str], shard: usize) -> Child {
    tiqu()
        .args(args)
        .args(["--shard", &format!("{shard}/{SHARDS}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn lines_in(path: &Path) -> usize {
    fs::read(path).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0)
}

#[test]
fn killed_and_restarted_shards_merge_to_the_single_process_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("in.txt");
    fs::write(&input, synthetic_input(2000)).unwrap();
    let (m, inp) = (model(), input.to_str().unwrap().to_string());
    let single = d.join("single.jsonl");
    ok(tiqu().args(extract_args(&m, &inp, single.to_str().unwrap())).output().unwrap());
    assert_eq!(lines_in(&single), 2000);

    let parts = d.join("parts");
    let parts_s = parts.to_str().unwrap().to_string();
    let args = extract_args(&m, &inp, &parts_s);
    let mut tasks: Vec<Child> = (0..SHARDS).map(|i| spawn_shard(&args, i)).collect();
    // Kill tasks 1 and 2 once each has written part of its output (and before it finishes).
    for victim in [1, 2] {
        let part = parts.join(format!("part-{victim:05}-of-{SHARDS:05}.jsonl"));
        let deadline = Instant::now() + Duration::from_secs(300);
        while lines_in(&part) < 20 {
            assert!(Instant::now() < deadline, "shard {victim} wrote nothing");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(tasks[victim].try_wait().unwrap().is_none(), "shard {victim} finished before it could be killed");
        tasks[victim].kill().unwrap(); // SIGKILL
        tasks[victim].wait().unwrap();
        assert!(!parts.join(format!("part-{victim:05}-of-{SHARDS:05}.jsonl.done")).exists(), "a killed shard has no marker");
    }
    // Merge refuses while parts are unfinished, naming one.
    let early = tiqu().args(["parts", "merge", "--input", &inp, "--parts", &parts_s, "--shards", "4"]).output().unwrap();
    assert!(!early.status.success());
    assert!(String::from_utf8_lossy(&early.stderr).contains("has not finished"), "{}", String::from_utf8_lossy(&early.stderr));
    // The controller starts the killed tasks again with the same command.
    for victim in [1, 2] {
        tasks[victim] = spawn_shard(&args, victim);
    }
    for (i, t) in tasks.iter_mut().enumerate() {
        let out = t.wait_with_output_ref();
        assert!(out.0.success(), "shard {i}: {}", out.1);
    }
    let merged = d.join("merged.jsonl");
    let report = ok(tiqu()
        .args(["parts", "merge", "--input", &inp, "--parts", &parts_s, "--shards", "4", "--out", merged.to_str().unwrap()])
        .output()
        .unwrap());
    assert!(report.contains("4 parts complete: 2000 lines"), "{report}");
    assert_eq!(fs::read(&merged).unwrap(), fs::read(&single).unwrap(), "byte-identical to one process");
    // --out may never be the input or a file among the parts, --force or not.
    let part0 = parts.join("part-00000-of-00004.jsonl");
    let (input_before, part_before) = (fs::read(&inp).unwrap(), fs::read(&part0).unwrap());
    for (out, needle) in [(inp.clone(), "is the --input file"), (part0.display().to_string(), "inside the --parts folder")] {
        let o = tiqu().args(["parts", "merge", "--input", &inp, "--parts", &parts_s, "--shards", "4", "--out", &out, "--force"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && stderr.lines().count() == 1 && stderr.contains(needle), "{stderr}");
    }
    assert_eq!((fs::read(&inp).unwrap(), fs::read(&part0).unwrap()), (input_before.clone(), part_before.clone()), "nothing replaced");
    // --parts a file or a missing folder: said of the folder, once.
    let missing_dir = parts.join("nowhere").display().to_string();
    for (dir, needle) in [(inp.as_str(), "not a folder"), (missing_dir.as_str(), "no such folder")] {
        let o = tiqu().args(["parts", "merge", "--input", &inp, "--parts", dir, "--shards", "4"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && stderr.lines().count() == 1 && stderr.contains(&format!("--parts {dir}: {needle}")), "{stderr}");
    }

    // The input edited in place, its size kept (u0 -> v0 in shard 0's first line): the finished
    // parts answer another input; the merge and the retried shard both say so.
    let mut edited = input_before.clone();
    let at = edited.windows(3).position(|w| w == b"u0@").unwrap();
    edited[at] = b'v';
    fs::write(&inp, &edited).unwrap();
    let verify = tiqu().args(["parts", "merge", "--input", &inp, "--parts", &parts_s, "--shards", "4"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(!verify.status.success() && stderr.contains("part-00000-of-00004.jsonl.done") && stderr.contains("other input bytes"), "{stderr}");
    let retry = tiqu().args(&args).args(["--shard", "0/4"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&retry.stderr);
    assert!(!retry.status.success() && stderr.contains("other input bytes"), "{stderr}");
    fs::write(&inp, &input_before).unwrap();
    // A part answered under another schema (a key renamed): named by part and line.
    let renamed = String::from_utf8_lossy(&part_before).replacen("\"email\":", "\"mail\":", 1);
    fs::write(&part0, renamed.as_bytes()).unwrap();
    let verify = tiqu().args(["parts", "merge", "--input", &inp, "--parts", &parts_s, "--shards", "4"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(!verify.status.success() && stderr.contains("part-00000-of-00004.jsonl:") && stderr.contains("another schema"), "{stderr}");
    fs::write(&part0, &part_before).unwrap();
    // Killed before its marker (three lines short) and the input then edited in place: the part
    // does not resume over other bytes; with the input back, it does, and merges as before.
    let marker0 = parts.join("part-00000-of-00004.jsonl.done");
    let marker_before = fs::read(&marker0).unwrap();
    fs::remove_file(&marker0).unwrap();
    let keep = part_before.iter().enumerate().filter(|(_, &b)| b == b'\n').map(|(i, _)| i + 1).rev().nth(3).unwrap();
    fs::write(&part0, &part_before[..keep]).unwrap();
    fs::write(&inp, &edited).unwrap();
    let retry = tiqu().args(&args).args(["--shard", "0/4"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&retry.stderr);
    assert!(!retry.status.success() && stderr.contains("other input bytes"), "{stderr}");
    assert_eq!(fs::read(&part0).unwrap(), &part_before[..keep], "the part is left as it was");
    fs::write(&inp, &input_before).unwrap();
    // Resumed under another schema: refused (it answered on, its lines under two sets of keys).
    let schema = parts.with_file_name("two-fields.json");
    fs::write(&schema, r#"["name", "email"]"#).unwrap();
    let other = tiqu().args(&args).args(["--shard", "0/4", "--schema", schema.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success() && stderr.contains("made under another schema"), "{stderr}");
    assert_eq!(fs::read(&part0).unwrap(), &part_before[..keep], "the part is left as it was");
    // Answers whose record of the input they answer is gone: a plain-text input's lines carry
    // no ids, so another input's answers would have been resumed and merged.
    let started0 = parts.join("part-00000-of-00004.jsonl.start");
    let started_before = fs::read(&started0).unwrap();
    fs::remove_file(&started0).unwrap();
    let unmoored = tiqu().args(&args).args(["--shard", "0/4"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&unmoored.stderr);
    assert!(!unmoored.status.success() && stderr.contains("has answers but no") && stderr.lines().count() == 1, "{stderr}");
    assert_eq!(fs::read(&part0).unwrap(), &part_before[..keep], "the part is left as it was");
    fs::write(&started0, started_before).unwrap();
    ok(tiqu().args(&args).args(["--shard", "0/4"]).output().unwrap());
    assert_eq!((fs::read(&part0).unwrap(), fs::read(&marker0).unwrap()), (part_before.clone(), marker_before));

    // A retried task whose part is complete exits at once, changing nothing.
    let before = fs::read(parts.join("part-00000-of-00004.jsonl")).unwrap();
    let again = tiqu().args(&args).args(["--shard", "auto"]).env("JOB_COMPLETION_INDEX", "0").env("JOB_COMPLETIONS", "4").output().unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already complete"), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(fs::read(parts.join("part-00000-of-00004.jsonl")).unwrap(), before);
    // A finished part changed since its marker (edited so that it still reads as answers, or cut)
    // was merged as it stood, and a retried task called it complete for ever.
    let part1 = parts.join("part-00001-of-00004.jsonl");
    let body1 = fs::read(&part1).unwrap();
    let first_end = body1.iter().position(|&b| b == b'\n').unwrap();
    let edited_part = [&body1[..first_end], b" ", &body1[first_end..]].concat();
    for changed in [edited_part, body1[..first_end + 1].to_vec()] {
        fs::write(&part1, &changed).unwrap();
        let retry = tiqu().args(&args).args(["--shard", "1/4"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&retry.stderr);
        assert!(!retry.status.success() && stderr.contains("part-00001-of-00004.jsonl: changed or removed since this shard finished"), "{stderr}");
        let verify = tiqu().args(["parts", "merge", "--input", &inp, "--parts", &parts_s, "--shards", "4"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&verify.stderr);
        assert!(!verify.status.success() && (stderr.contains("changed since its shard finished") || stderr.contains("its marker says")), "{stderr}");
    }
    fs::write(&part1, &body1).unwrap();
    // A value that is no string (the model writes strings or nulls) is not an answer.
    let text1 = String::from_utf8(body1.clone()).unwrap();
    let numbered = text1.replacen("\"fields\":{\"name\":", "\"fields\":{\"name\":12345,\"x\":", 1);
    assert_ne!(numbered, text1);
    fs::write(&part1, numbered).unwrap();
    let verify = tiqu().args(["parts", "merge", "--input", &inp, "--parts", &parts_s, "--shards", "4"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(!verify.status.success() && stderr.contains("part-00001-of-00004.jsonl:") && stderr.contains("of strings or nulls"), "{stderr}");
    fs::write(&part1, &body1).unwrap();

    // A folder as --out is named (it was "Is a directory (os error 21)", or "Device or resource
    // busy" for `.`).
    let merged_into_folder = tiqu().args(["parts", "merge", "--input", &inp, "--parts", &parts_s, "--shards", "4", "--force", "--out", &parts_s]).output().unwrap();
    let stderr = String::from_utf8_lossy(&merged_into_folder.stderr);
    assert!(!merged_into_folder.status.success() && stderr.contains("is a folder: --out takes a file"), "{stderr}");
    // A torn part (its marker says more lines) and a missing marker are named.
    let part3 = parts.join("part-00003-of-00004.jsonl");
    let body = fs::read(&part3).unwrap();
    fs::write(&part3, &body[..body.len() - 5]).unwrap();
    let torn = tiqu().args(["parts", "merge", "--input", &inp, "--parts", &parts_s, "--shards", "4"]).output().unwrap();
    let err = String::from_utf8_lossy(&torn.stderr);
    assert!(!torn.status.success() && err.contains("part-00003-of-00004.jsonl") && err.contains("torn"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    fs::remove_file(parts.join("part-00002-of-00004.jsonl.done")).unwrap();
    let missing = tiqu().args(["parts", "merge", "--input", &inp, "--parts", &parts_s, "--shards", "4"]).output().unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("part-00002-of-00004.jsonl.done: missing"));
}

trait WaitRef {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String);
}

impl WaitRef for Child {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String) {
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut err).unwrap();
        }
        (self.wait().unwrap(), err)
    }
}

#[test]
fn bad_shard_specs_are_one_line() {
    let m = model();
    for (spec, needle) in [("4/4", "does not exist"), ("x", "expected I/N"), ("auto", "neither JOB_COMPLETION_INDEX")] {
        let out = tiqu()
            .args(["extract", "--model", &m, "--input", "in.txt", "--out", "parts", "--shard", spec])
            .env_remove("JOB_COMPLETION_INDEX")
            .env_remove("SLURM_ARRAY_TASK_ID")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.starts_with("error: ") && err.contains(needle) && err.lines().count() == 1, "{spec}: {err}");
    }
    let out = tiqu().args(["extract", "--model", &m, "--shard", "0/2"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shard needs --input FILE and --out FOLDER"));
    // A file where the parts' folder belongs, and a folder where the input belongs, are named as
    // such (an OS error 17, and the folder's 4096 bytes taken for the input's size, before).
    let dir = tempfile::tempdir().unwrap();
    let (input, file) = (dir.path().join("in.txt"), dir.path().join("taken.jsonl"));
    fs::write(&input, "a\nb\n").unwrap();
    fs::write(&file, "kept\n").unwrap();
    let out = tiqu().args(["extract", "--model", &m, "--input", input.to_str().unwrap(), "--out", file.to_str().unwrap(), "--shard", "0/2"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("a file; with --shard, --out is the folder") && err.lines().count() == 1, "{err}");
    assert_eq!(fs::read_to_string(&file).unwrap(), "kept\n");
    let out = tiqu().args(["parts", "merge", "--input", dir.path().to_str().unwrap(), "--parts", dir.path().to_str().unwrap(), "--shards", "2"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("a folder, not a file") && err.lines().count() == 1, "{err}");
}

/// moto's S3 server on a free port, if installed; stopped on drop.
struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto() -> Option<Moto> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let child = Command::new("python3")
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let url = format!("http://127.0.0.1:{port}");
    let mut moto = Moto { child, url };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if moto.child.try_wait().ok().flatten().is_some() {
            return None; // not installed: python3 -m moto.server exited
        }
        if reqwest::blocking::get(&moto.url).is_ok() {
            return Some(moto);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    moto.child.kill().ok();
    None
}

fn s3_env(cmd: &mut Command, moto: &Moto, cache: &Path) {
    cmd.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", &moto.url)
        .env("AWS_ALLOW_HTTP", "true")
        .env("TIQU_CACHE", cache);
}

#[test]
fn shards_read_and_write_object_storage() {
    let Some(moto) = moto() else {
        eprintln!("skipped: moto's server is not installed (pip install 'moto[server]'; scripts/test does)");
        return;
    };
    let http = reqwest::blocking::Client::new();
    let put = |key: &str, body: Vec<u8>| {
        let r = http.put(format!("{}/{key}", moto.url)).body(body).send().unwrap();
        assert!(r.status().is_success(), "PUT {key}: {}", r.status());
    };
    put("jobs", Vec::new()); // the bucket
    let input = synthetic_input(120);
    put("jobs/in.txt", input.clone());
    put("jobs/other.txt", synthetic_input(60));
    for entry in fs::read_dir(model()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        put(&format!("jobs/model/{name}"), fs::read(&path).unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let local_in = dir.path().join("in.txt");
    fs::write(&local_in, &input).unwrap();
    let single = dir.path().join("single.jsonl");
    ok(tiqu().args(extract_args(&model(), local_in.to_str().unwrap(), single.to_str().unwrap())).output().unwrap());

    for shard in 0..2 {
        let mut cmd = tiqu();
        cmd.args(extract_args("s3://jobs/model", "s3://jobs/in.txt", "s3://jobs/parts/")).args(["--shard", &format!("{shard}/2")]);
        s3_env(&mut cmd, &moto, &dir.path().join(format!("cache{shard}")));
        ok(cmd.output().unwrap());
    }
    let mut cmd = tiqu();
    cmd.args(["parts", "merge", "--input", "s3://jobs/in.txt", "--parts", "s3://jobs/parts/", "--shards", "2", "--out", "s3://jobs/out.jsonl"]);
    s3_env(&mut cmd, &moto, &dir.path().join("cache-merge"));
    let report = ok(cmd.output().unwrap());
    assert!(report.contains("2 parts complete: 120 lines"), "{report}");
    let merged = http.get(format!("{}/jobs/out.jsonl", moto.url)).send().unwrap().bytes().unwrap();
    assert_eq!(merged.to_vec(), fs::read(&single).unwrap(), "object storage gives what local files give");

    // Another input with the same parts folder: the finished parts are refused, not taken as done.
    let mut cmd = tiqu();
    cmd.args(extract_args("s3://jobs/model", "s3://jobs/other.txt", "s3://jobs/parts/")).args(["--shard", "0/2"]);
    s3_env(&mut cmd, &moto, &dir.path().join("cache0"));
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("part-00000-of-00002.jsonl.done: made for another input"), "{err}");
}
