//! Tokenizers from `tokenizer.json` or rebuilt from GGUF metadata.
//!
//! A GGUF file carries its vocabulary, merges (or SentencePiece scores) and the name of its
//! pre-tokenizer. We turn those into an HF `tokenizers` description and let that crate do the
//! work, so both sources share one implementation. candle's own GGUF tokenizer is not used: it
//! ignores `tokenizer.ggml.pre` and splits SmolLM2's text differently from llama.cpp.

use crate::error::{PolicyError, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::{json, Map, Value as Json};
use std::collections::HashMap;
use std::path::Path;

/// GPT-2's pre-tokenizer regex, which most byte-level BPE vocabularies build on.
const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3 / Qwen 2 style: case-insensitive contractions, and numbers in groups.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

/// A tokenizer plus the ids generation needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// `inner` with special-token parsing off, for text people and models wrote.
    plain: tokenizers::Tokenizer,
    bos: Option<u32>,
    /// Prepend `bos` to every encoded prompt (unless the prompt already starts with it).
    add_bos: bool,
    /// Tokens that end a generation: EOS and the end-of-turn markers of chat templates.
    stop: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("bos", &self.bos)
            .field("stop", &self.stop)
            .finish()
    }
}

/// Token strings that end an assistant turn in the chat formats we know.
const END_OF_TURN: [&str; 5] = [
    "<|im_end|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|endoftext|>",
    "</s>",
];

fn tok_err(e: impl std::fmt::Display) -> PolicyError {
    PolicyError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Loads an HF `tokenizer.json`. `bos`/`eos` names come from `tokenizer_config.json` when the
    /// caller has it.
    pub fn from_file(path: &Path, bos: Option<&str>, eos: Option<&str>) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(tok_err)?;
        let id = |t: Option<&str>| t.and_then(|t| inner.token_to_id(t));
        let bos = id(bos);
        let mut stop: Vec<u32> = id(eos).into_iter().collect();
        stop.extend(END_OF_TURN.iter().filter_map(|t| inner.token_to_id(t)));
        stop.sort_unstable();
        stop.dedup();
        // HF tokenizers add BOS in their post-processor when they want one.
        Ok(Self::new(inner, bos, false, stop))
    }

    /// Rebuilds the tokenizer described by a GGUF header.
    pub fn from_gguf(content: &Content) -> Result<Self> {
        let md = &content.metadata;
        let get = |k: &str| {
            md.get(k)
                .ok_or_else(|| PolicyError::MissingMetadata(k.to_string()))
        };
        let tokens = strings(get("tokenizer.ggml.tokens")?)?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(tok_err)?
                .iter()
                .map(|t| t.to_i32().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let model = get("tokenizer.ggml.model")?
            .to_string()
            .map_err(tok_err)?
            .clone();
        let id_of = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
        let flag = |k: &str| md.get(k).and_then(|v| v.to_bool().ok());
        let bos = id_of("tokenizer.ggml.bos_token_id");
        let eos = id_of("tokenizer.ggml.eos_token_id");

        let added: Vec<Json> = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (_, &ty))| ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED)
            .map(|(id, (content, &ty))| {
                json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": ty == TOKEN_CONTROL})
            })
            .collect();

        let spec = match model.as_str() {
            "gpt2" => {
                let merges = strings(get("tokenizer.ggml.merges")?)?;
                let pre = md
                    .get("tokenizer.ggml.pre")
                    .and_then(|v| v.to_string().ok())
                    .cloned();
                byte_level_spec(&tokens, &merges, pre.as_deref().unwrap_or("default"), added)
            }
            "llama" => {
                let scores: Vec<f32> = get("tokenizer.ggml.scores")?
                    .to_vec()
                    .map_err(tok_err)?
                    .iter()
                    .map(|s| s.to_f32().unwrap_or(0.0))
                    .collect();
                let prefix = flag("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                sentencepiece_spec(&tokens, &scores, &types, prefix, added)
            }
            other => {
                return Err(PolicyError::Tokenizer(format!(
                    "unsupported GGUF tokenizer model `{other}`"
                )))
            }
        };
        let inner: tokenizers::Tokenizer = spec.to_string().parse().map_err(tok_err)?;
        let add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(model == "llama");
        let mut stop: Vec<u32> = eos.into_iter().collect();
        stop.extend(END_OF_TURN.iter().filter_map(|t| inner.token_to_id(t)));
        stop.sort_unstable();
        stop.dedup();
        Ok(Self::new(inner, bos, add_bos, stop))
    }

    fn new(inner: tokenizers::Tokenizer, bos: Option<u32>, add_bos: bool, stop: Vec<u32>) -> Self {
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        Self {
            inner,
            plain,
            bos,
            add_bos,
            stop,
        }
    }

    /// Encodes text as text: the spelling of a control token inside it (`<|im_end|>`) becomes
    /// ordinary tokens, never the control token itself. For what users and models wrote, so
    /// that a message cannot close its turn or open another role's.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .plain
            .encode_fast(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Encodes markup (a rendered template, a prompt of hone's own), parsing the special tokens
    /// written in it, without adding BOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode_fast(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Encodes a full prompt: BOS first when the model expects one.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.with_bos(self.encode(text)?))
    }

    /// `ids` with BOS put first when the model expects one and it is not there yet.
    pub fn with_bos(&self, mut ids: Vec<u32>) -> Vec<u32> {
        if let (true, Some(bos)) = (self.add_bos, self.bos) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        ids
    }

    /// Decodes ids to text; special tokens are dropped when `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    pub fn is_stop(&self, id: u32) -> bool {
        self.stop.contains(&id)
    }

    pub fn stop_ids(&self) -> &[u32] {
        &self.stop
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

fn strings(v: &Value) -> Result<Vec<String>> {
    v.to_vec()
        .map_err(tok_err)?
        .iter()
        .map(|s| s.to_string().cloned().map_err(tok_err))
        .collect()
}

fn vocab_map(tokens: &[String]) -> Map<String, Json> {
    let mut vocab = Map::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(json!(id));
    }
    vocab
}

/// Byte-level BPE (GPT-2 family). `pre` is llama.cpp's pre-tokenizer name.
fn byte_level_spec(tokens: &[String], merges: &[String], pre: &str, added: Vec<Json>) -> Json {
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    let mut pretokenizers = Vec::new();
    let mut ignore_merges = false;
    match pre {
        // SmolLM splits every digit on its own before the GPT-2 rules.
        "smollm" => {
            pretokenizers.push(json!({"type": "Digits", "individual_digits": true}));
            pretokenizers.push(split(GPT2_SPLIT));
        }
        "llama-bpe" | "llama3" => {
            pretokenizers.push(split(LLAMA3_SPLIT));
            ignore_merges = true;
        }
        "qwen2" | "deepseek-r1-qwen" => pretokenizers.push(split(QWEN2_SPLIT)),
        _ => pretokenizers.push(split(GPT2_SPLIT)),
    }
    pretokenizers.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}));
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pretokenizers},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": ignore_merges, "vocab": vocab_map(tokens), "merges": merges},
    })
}

/// SentencePiece BPE (Llama 2, Gemma): merges are recovered from the scores, a pair ranking
/// higher when the piece it forms scores higher, which is the order SentencePiece merges in.
fn sentencepiece_spec(
    tokens: &[String],
    scores: &[f32],
    types: &[i32],
    prefix: bool,
    added: Vec<Json>,
) -> Json {
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if types.get(id) != Some(&1) {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(split);
            if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                merges.push((scores.get(id).copied().unwrap_or(0.0), id, li, ri));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Vec<Json> = merges
        .iter()
        .map(|&(_, _, l, r)| json!([tokens[l], tokens[r]]))
        .collect();
    let space = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = if prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, space]})
    } else {
        space
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let unk = types
        .iter()
        .position(|&t| t == 2)
        .map(|i| tokens[i].clone());
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                  "ignore_merges": false, "vocab": vocab_map(tokens), "merges": merges},
    })
}
