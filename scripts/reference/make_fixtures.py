#!/usr/bin/env python3
"""Produce reference fixtures for hone's tests from llama.cpp (via llama-cpp-python).

Usage:
    python make_fixtures.py MODEL.gguf OUT.json --name smollm2|gemma3

The output is one JSON file per model holding:
  * tokenizer cases: text -> ids (no BOS, special tokens parsed) and ids -> text,
  * logits for every position of a few prompts (the 32 highest entries, the
    log-sum-exp of the whole row and a few fixed "probe" ids),
  * 32-token greedy continuations of the same prompts, with the top-1/top-2
    margin at each step so that tests can tolerate near-ties.

The Rust tests (tests/reference.rs) read these files; no reference engine is
needed at test time. Rerun this script only when the models or the reference
version change.
"""

import argparse
import hashlib
import json
import math
import os
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama

# Evaluation settings. Kept identical for every model and written into the
# fixture so a reader knows exactly how the numbers were made.
N_CTX = 512
N_BATCH = 512
N_THREADS = 2
TOP_K = 32  # highest logits kept per position
GREEDY_TOKENS = 32
PROBE_IDS = [0, 1, 2, 100, 1000, 5000, 10000, 20000]
DECIMALS = 5  # logits are rounded to keep the files small

# Tokenizer cases common to every model. Chat markers of both families are
# included in both models: in the "foreign" model they are ordinary text,
# which is a useful test by itself.
TOKENIZE_TEXTS = [
    "",
    " ",
    "Hello",
    " Hello",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces",
    "trailing spaces   ",
    "multiple    spaces   between    words",
    "line one\nline two\n\nline four\n",
    "tab\tseparated\tvalues\t",
    "\n\n\n",
    "12345 3.14159 1,000,000",
    "Phone: 555-0123, year 2024, 0.5%, $19.99",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", v);\n}\n",
    "if (x != y && z >= 3) { a[i] += b->c; } // done",
    "Wait... what?! (yes) [no] {maybe} <tag/> #1 @user ~/path_to/file.rs",
    "don't I'll we've she's they're it's John's",
    "'s 're 've 'll 'd 't",
    "🙂👍🏽",
    "I love it 😂🎉!",
    "你好，世界",
    "日本語のテキスト",
    "한국어 문장입니다",
    "مرحبا بالعالم",
    "naïve café, résumé, Ångström, São Paulo, Straße",
    "Привет, мир!",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    "Mixed: ASCII, ünïcödé, 数字123, emoji🚀, and\ttabs\nnewlines.",
]

# Prompts for the logits and greedy sections. Plain text for every model; the
# chat-formatted prompt only for the instruct model.
PLAIN_PROMPTS = ["The quick brown fox", "def fibonacci(n):"]
CHATML_PROMPT = (
    "<|im_start|>user\nWhat is the capital of France? Answer briefly.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def r(x):
    """Round a float for storage (plain Python float, JSON-friendly)."""
    return round(float(x), DECIMALS)


def logsumexp(row):
    row = row.astype(np.float64)
    m = row.max()
    return float(m + math.log(np.exp(row - m).sum()))


def top_entries(row, k):
    """The k highest (id, logit) pairs, highest first; ties broken by lower id."""
    # lexsort sorts by the last key first: logit descending, then id ascending.
    ids = np.arange(row.shape[0])
    order = np.lexsort((ids, -row.astype(np.float64)))[:k]
    return [[int(i), r(row[i])] for i in order]


def eval_rows(llm, ids):
    """Evaluate a whole prompt in one batch from an empty cache; return its logits rows."""
    assert len(ids) <= N_BATCH, "prompt must fit one batch"
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids), :], dtype=np.float32)


def greedy(llm, prompt_ids, eog_ids):
    """Greedy continuation: argmax at every step, one token evaluated at a time.

    The end-of-generation token, if produced, is included as the last token.
    """
    rows = eval_rows(llm, prompt_ids)
    row = rows[-1]
    tokens, margins = [], []
    for step in range(GREEDY_TOKENS):
        top2 = top_entries(row, 2)
        tok = top2[0][0]
        tokens.append(tok)
        margins.append(r(float(row[top2[0][0]]) - float(row[top2[1][0]])))
        if tok in eog_ids or step == GREEDY_TOKENS - 1:
            break
        llm.eval([tok])
        row = np.array(llm.scores[llm.n_tokens - 1, :], dtype=np.float32)
    return tokens, margins


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="path to the GGUF file")
    ap.add_argument("out", help="where to write the JSON fixture")
    ap.add_argument("--name", required=True, choices=["smollm2", "gemma3"])
    args = ap.parse_args()

    llm = Llama(
        model_path=args.model,
        n_ctx=N_CTX,
        n_batch=N_BATCH,
        n_ubatch=N_BATCH,
        n_threads=N_THREADS,
        n_threads_batch=N_THREADS,
        logits_all=True,
        flash_attn=False,
        verbose=False,
    )
    vocab = llm._model.vocab
    n_vocab = llm.n_vocab()

    meta = llm.metadata
    # What llama.cpp actually does (it falls back to a per-vocab-type default
    # when the GGUF has no tokenizer.ggml.add_bos_token key).
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    bos_id = int(llm.token_bos())
    eos_id = int(llm.token_eos())
    eog_ids = sorted(t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t))

    def tokenize(text, with_bos=False):
        return llm.tokenize(text.encode("utf-8"), add_bos=with_bos, special=True)

    def detok(ids, special=False):
        return llm.detokenize(ids, special=special).decode("utf-8", errors="replace")

    # --- tokenizer ---------------------------------------------------------
    tok_cases = []
    for text in TOKENIZE_TEXTS:
        ids = tokenize(text)
        tok_cases.append({
            "text": text,
            "ids": ids,
            # special=False: control tokens (e.g. <|im_start|>) render as "".
            "decoded": detok(ids),
            # special=True: control tokens render as their text.
            "decoded_special": detok(ids, special=True),
        })

    # --- prompts: logits + greedy -----------------------------------------
    prompts = ([CHATML_PROMPT] if args.name == "smollm2" else []) + PLAIN_PROMPTS
    logits_cases, greedy_cases = [], []
    for text in prompts:
        ids = tokenize(text, with_bos=add_bos)
        rows = eval_rows(llm, ids)
        positions = []
        for row in rows:
            positions.append({
                "top": top_entries(row, TOP_K),
                "logsumexp": r(logsumexp(row)),
                "probe": [[i, r(row[i])] for i in PROBE_IDS if i < n_vocab],
            })
        logits_cases.append({"prompt_text": text, "prompt_ids": ids, "positions": positions})

        tokens, margins = greedy(llm, ids, set(eog_ids))
        greedy_cases.append({
            "prompt_text": text,
            "prompt_ids": ids,
            "tokens": tokens,
            "margins": margins,
            "text": detok(tokens, special=True),
        })

    fixture = {
        "model_file": os.path.basename(args.model),
        "model_sha256": sha256_of(args.model),
        "reference": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})",
        "name": args.name,
        "settings": {
            "n_ctx": N_CTX, "n_batch": N_BATCH, "n_ubatch": N_BATCH, "n_threads": N_THREADS,
            "logits_all": True, "flash_attn": False, "decimals": DECIMALS,
            "tokenize": "add_bos=False, special=True",
            "greedy": "argmax (ties -> lower id), prompt in one batch then one token per eval; stops after an end-of-generation token, which is included",
        },
        "arch": meta.get("general.architecture"),
        "n_vocab": n_vocab,
        "add_bos": add_bos,
        "add_bos_metadata": meta.get("tokenizer.ggml.add_bos_token"),  # raw GGUF value, may be null
        "bos_id": bos_id,
        "eos_id": eos_id,
        "eog_ids": eog_ids,
        "tokenize": tok_cases,
        "logits": logits_cases,
        "greedy": greedy_cases,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
