//! deploy/ cannot be run here (no Kubernetes, Slurm or Docker engine), so this checks what can be
//! checked: the manifests parse as Kubernetes objects of the kinds and modes the README promises,
//! and every `tiqu` command line in them (and in the Slurm scripts and the Dockerfile) uses only
//! subcommands and flags that `tiqu --help` lists, so a renamed flag cannot leave them stale.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Help text of `tiqu <words> --help`.
fn help(words: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tiqu")).args(words).arg("--help").output().unwrap();
    assert!(out.status.success(), "tiqu {} --help: {}", words.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks one tiqu argument list: global flags before the subcommand(s), then its flags.
fn check_command(args: &[String], origin: &str) {
    let mut words: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if let Some(flag) = a.strip_prefix("--") {
            let text = help(&words);
            assert!(text.contains(&format!("--{flag}")), "{origin}: `tiqu {}` has no flag --{flag}", words.join(" "));
            // A flag that takes a value shows a placeholder after it in the help.
            if text.contains(&format!("--{flag} <")) {
                i += 1;
            }
        } else {
            let text = help(&words);
            let listed = text.lines().any(|l| l.split_whitespace().next() == Some(a));
            assert!(listed, "{origin}: `tiqu {}` has no subcommand {a}", words.join(" "));
            words.push(a);
        }
        i += 1;
    }
    assert!(!words.is_empty(), "{origin}: no subcommand in {args:?}");
}

#[test]
fn kubernetes_jobs_parse_and_their_commands_exist() {
    for name in ["extract-job.yaml", "merge-job.yaml"] {
        let path = deploy().join("kubernetes").join(name);
        let job: serde_norway::Value = serde_norway::from_str(&fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(job["apiVersion"].as_str(), Some("batch/v1"), "{name}");
        assert_eq!(job["kind"].as_str(), Some("Job"), "{name}");
        let spec = &job["spec"];
        let container = &spec["template"]["spec"]["containers"][0];
        let args: Vec<String> = container["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
        check_command(&args, name);
        if name == "extract-job.yaml" {
            assert_eq!(spec["completionMode"].as_str(), Some("Indexed"));
            assert!(spec["backoffLimitPerIndex"].as_u64().is_some());
            assert!(container["resources"]["limits"]["nvidia.com/gpu"].as_u64().is_some());
            let completions = spec["completions"].as_u64().unwrap().to_string();
            let env = container["env"].as_sequence().unwrap();
            let count = env.iter().find(|e| e["name"].as_str() == Some("JOB_COMPLETIONS")).expect("JOB_COMPLETIONS set");
            assert_eq!(count["value"].as_str(), Some(completions.as_str()), "JOB_COMPLETIONS equals completions");
            assert!(args.windows(2).any(|w| w == ["--shard", "auto"]));
        }
    }
}

/// `srun tiqu …` lines of a batch script, continuation lines joined.
fn tiqu_lines(script: &str) -> Vec<Vec<String>> {
    let joined = script.replace("\\\n", " ");
    joined
        .lines()
        .filter_map(|l| l.trim().strip_prefix("srun tiqu "))
        .map(|rest| rest.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[test]
fn slurm_scripts_and_dockerfile_use_existing_commands() {
    for name in ["extract.sbatch", "merge.sbatch"] {
        let script = fs::read_to_string(deploy().join("slurm").join(name)).unwrap();
        assert!(script.starts_with("#!/bin/bash") && script.contains("#SBATCH"), "{name}");
        let lines = tiqu_lines(&script);
        assert_eq!(lines.len(), 1, "{name}: one tiqu command");
        check_command(&lines[0], name);
        if name == "extract.sbatch" {
            assert!(script.contains("#SBATCH --array="), "a job array");
        }
    }
    let docker = fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    for stage in ["AS cpu", "AS cuda"] {
        assert!(docker.contains(stage), "Dockerfile stage {stage}");
    }
    assert!(docker.contains("--features cuda") && docker.contains("ENTRYPOINT [\"tiqu\"]"));
}
