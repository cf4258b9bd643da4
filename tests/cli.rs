//! The `hone` binary from the outside: answers, and clear errors on bad input.

use std::process::{Command, Output};

fn hone(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hone"))
        .args(args)
        .output()
        .expect("run hone")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn default_model_knows_the_capital_of_france() {
    let out = hone(&[
        "generate",
        "--prompt",
        "What is the capital of France? Answer briefly.",
        "--max-tokens",
        "24",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Paris"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr(&out).contains("tok/s"));
}

/// Draft tokens that pacing withheld, from `generate`'s speculation line.
fn withheld(o: &Output) -> usize {
    let err = stderr(o);
    let line = err
        .lines()
        .find(|l| l.starts_with("speculation:"))
        .unwrap_or_else(|| panic!("no speculation line in {err}"));
    let before = line.split(" withheld").next().unwrap_or_default();
    before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no withheld count in {line}"))
}

#[test]
fn unpaced_speculation_verifies_every_draft_and_keeps_the_text() {
    // A poem repeats little of its prompt: the first drafts are rejected, and pacing then
    // holds the row's next drafts back as not paying on this CPU.
    let prompt = "Write a short poem about the sea, with a title, in four lines.";
    let run = |extra: &[&str]| {
        let out = hone(
            &[
                &["generate", "--prompt", prompt, "--max-tokens", "32"],
                extra,
            ]
            .concat(),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        out
    };
    let plain = run(&[]);
    let paced = run(&["--speculate", "4"]);
    let unpaced = run(&["--speculate", "4", "--unpaced"]);
    // Greedy text is the plain text either way; pacing holds back drafts that would not pay,
    // and --unpaced verifies them all.
    assert_eq!(paced.stdout, plain.stdout);
    assert_eq!(unpaced.stdout, plain.stdout);
    assert!(withheld(&paced) > 0, "{}", stderr(&paced));
    assert_eq!(withheld(&unpaced), 0, "{}", stderr(&unpaced));
}

fn assert_fails_with(args: &[&str], needle: &str) {
    let out = hone(args);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = std::env::temp_dir().join(format!("hone-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.gguf");
    assert_fails_with(
        &[
            "generate",
            "--prompt",
            "hi",
            "--model",
            missing.to_str().unwrap(),
        ],
        "not found",
    );

    let corrupt = dir.join("corrupt.gguf");
    std::fs::write(&corrupt, b"definitely not a gguf file").unwrap();
    assert_fails_with(
        &[
            "generate",
            "--prompt",
            "hi",
            "--model",
            corrupt.to_str().unwrap(),
        ],
        "cannot read model",
    );

    let mamba = dir.join("mamba.gguf");
    write_gguf_with_arch(&mamba, "mamba");
    assert_fails_with(
        &[
            "generate",
            "--prompt",
            "hi",
            "--model",
            mamba.to_str().unwrap(),
        ],
        "unsupported model architecture `mamba`",
    );

    assert_fails_with(&["generate", "--prompt", "   "], "prompt is empty");
    let long = "word ".repeat(9000);
    assert_fails_with(&["generate", "--prompt", &long], "context");
    assert_fails_with(
        &["generate", "--prompt", "hi", "--temperature=-1"],
        "temperature",
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A well-formed GGUF header naming an architecture hone does not implement.
fn write_gguf_with_arch(path: &std::path::Path, arch: &str) {
    use candle_core::quantized::gguf_file::{write, Value};
    let mut f = std::fs::File::create(path).unwrap();
    let md = [("general.architecture", &Value::String(arch.to_string()))];
    write(&mut f, &md, &[]).unwrap();
}

#[test]
fn serve_reads_its_config_file_and_names_a_bad_key() {
    let dir = std::env::temp_dir().join(format!("hone-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("hone.toml");
    std::fs::write(&file, "port = 0\nmax_queu = 3\n").unwrap();
    assert_fails_with(&["serve", "--config", file.to_str().unwrap()], "max_queu");
    // A value the file sets is checked like the flag's: here a flag overrides a good file
    // with a bad value, and the error names the setting.
    std::fs::write(&file, "port = 0\nab_plain_fraction = 0.5\n").unwrap();
    assert_fails_with(
        &[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--ab-plain-fraction",
            "2",
        ],
        "--ab-plain-fraction must be between 0 and 1",
    );
    std::fs::write(&file, "ab_plain_fraction = 3.0\n").unwrap();
    assert_fails_with(
        &["serve", "--config", file.to_str().unwrap()],
        "--ab-plain-fraction must be between 0 and 1",
    );
    std::fs::remove_dir_all(&dir).ok();
}
