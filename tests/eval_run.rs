//! `hone eval run` end to end on the default model: three prompts of the built-in set, plain and
//! best-of-N at one small budget, and the files it writes.

use serde_json::Value;
use std::process::Command;

#[test]
fn eval_run_writes_results_report_and_chart() {
    let out = std::env::temp_dir().join(format!("hone-eval-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_hone"))
        .args([
            "eval",
            "run",
            "--limit",
            "3",
            "--strategies",
            "plain,best_of_n",
        ])
        .args(["--budgets", "300", "--seed", "3", "--out"])
        .arg(&out)
        .output()
        .expect("run hone");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("6/6 runs"), "{stderr}");

    let text = std::fs::read_to_string(out.join("results.json")).unwrap();
    let results: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(results["meta"]["prompts"], 3);
    assert_eq!(results["meta"]["reward"], "default");
    assert_eq!(results["budgets"], serde_json::json!([300]));
    let runs = results["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6);
    // Three prompts spread over the set: the first (a word limit stated in words), one from the
    // first third (requirements stated in words) and one from the second third (a question with
    // a reference answer).
    let lines: Vec<u64> = runs.iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(lines[0], 1);
    assert!(lines[2] > 1 && lines[2] == lines[3], "{lines:?}");
    assert!(lines[4] > lines[2] && lines[4] == lines[5], "{lines:?}");
    for r in runs {
        assert!(r["refused"].is_null(), "{r}");
        let compute = r["compute"].as_u64().unwrap();
        assert!(compute > 0 && compute <= 300, "{r}");
        assert!(r["latency_ms"].as_u64().unwrap() > 0, "{r}");
        assert!(!r["answer"].as_str().unwrap().trim().is_empty(), "{r}");
        assert!(r["restates"].is_null(), "{r}");
        let score = r["score"].as_f64().unwrap();
        assert!((0.0..=11.0).contains(&score), "{r}");
        if r["line"] != lines[4] {
            assert!(r["pass"].is_boolean() && r["exact"].is_null(), "{r}");
        } else {
            assert!(r["pass"].is_null() && r["exact"].is_boolean(), "{r}");
        }
    }
    // Best-of-N may spend more than plain decoding, never less: its first candidate is plain's.
    assert!(runs[1]["compute"].as_u64() >= runs[0]["compute"].as_u64());
    assert!(runs[1]["score"].as_f64() >= runs[0]["score"].as_f64());

    let cells = results["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2);
    for c in cells {
        assert_eq!(c["runs"], 3);
        let pass = &c["pass"];
        assert_eq!(pass["n"], 2, "two of the three prompts have constraints");
        let (lo, rate, hi) = (
            pass["lo"].as_f64().unwrap(),
            pass["rate"].as_f64().unwrap(),
            pass["hi"].as_f64().unwrap(),
        );
        assert!(0.0 <= lo && lo <= rate && rate <= hi && hi <= 1.0, "{c}");
        assert_eq!(c["exact"]["n"], 1);
        assert_eq!(c["restated"], 0);
    }

    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| plain | 300 |") && report.contains("| best_of_n | 300 |"));
    let svg = std::fs::read_to_string(out.join("pass_rate.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("class=\"series\"").count(), 2);
    let log = std::fs::read_to_string(out.join("runs.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 6);
    std::fs::remove_dir_all(&out).ok();
}
