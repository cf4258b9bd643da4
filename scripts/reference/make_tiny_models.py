#!/usr/bin/env python3
"""Build tiny random-weight HF checkpoints + reference outputs for hone's Rust tests.

Creates, under OUT_DIR (default: <repo root>/tests/fixtures/tiny):

    llama/      LlamaForCausalLM                      (untied lm_head)
    qwen2/      Qwen2ForCausalLM                      (qkv biases, tied embeddings)
    llama_rm/   LlamaForSequenceClassification        (num_labels 1, pad 0)
    qwen2_rm/   Qwen2ForSequenceClassification        (num_labels 1, pad 0, qkv biases)
    reference.json                                    (logits / scores from PyTorch)

Each model folder holds config.json, model.safetensors (float32), and a tiny
byte-level BPE tokenizer (tokenizer.json + tokenizer_config.json with a ChatML
chat template).  Nothing is downloaded: models are built from configs and
initialised with seeded random weights, so the script is deterministic.

Usage (from the repo root):
    python scripts/reference/make_tiny_models.py [OUT_DIR]
"""

import argparse
import json
import random
import shutil
from pathlib import Path

import safetensors
import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
)

SEED = 1234
INIT_STD = 0.2  # much larger than HF's default 0.02, so logits are far from 0
DECIMALS = 6

VOCAB_SIZE = 320
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
PAD_ID, IM_START_ID, IM_END_ID = 0, 1, 2
FIRST_NORMAL_ID = len(SPECIAL_TOKENS)  # random test ids are drawn from [3, VOCAB)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Shared architecture sizes for all four models.
COMMON = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    hidden_act="silu",
    pad_token_id=PAD_ID,
    bos_token_id=None,
    eos_token_id=IM_END_ID,
    torch_dtype="float32",
)

# A few paragraphs of plain English to train the toy BPE tokenizer on.
TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog. The dog does not care; it is "
    "asleep in the warm afternoon sun, and the fox is already far away.",
    "Language models predict the next token given the previous tokens. A reward "
    "model reads a whole conversation and returns a single number that says how "
    "good the final answer is.",
    "What is 2+2? The answer is 4. What is 3+5? The answer is 8. Numbers, words "
    "and punctuation all become tokens before the model sees them.",
    "In the morning we walked to the market, bought bread, cheese and apples, and "
    "then sat by the river to eat. It was a quiet day, and nobody was in a hurry.",
    "The user asks a question and the assistant answers it. The system message "
    "tells the assistant how to behave. Good answers are short, correct and kind.",
    "Rust is a systems programming language that is fast and memory safe. Its "
    "compiler checks ownership and borrowing, so many bugs are found early.",
]


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------
def build_tokenizer() -> Tokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenizer), vocab 320, specials at 0..2."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,  # added first, so they get ids 0, 1, 2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes
        show_progress=False,
    )
    tok.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


def write_tokenizer(tok: Tokenizer, out: Path) -> None:
    tok.save(str(out / "tokenizer.json"))
    # Written by hand (not via transformers' save_pretrained) so the chat
    # template stays inside tokenizer_config.json, like most hub checkpoints.
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": COMMON["max_position_embeddings"],
        "added_tokens_decoder": {
            str(i): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, t in enumerate(SPECIAL_TOKENS)
        },
        "chat_template": CHAT_TEMPLATE,
    }
    with open(out / "tokenizer_config.json", "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
def reinit_(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Overwrite every parameter with seeded random values.

    - weights of Linear/Embedding: N(0, INIT_STD)
    - biases (Qwen2 q/k/v): N(0, INIT_STD), so they are clearly non-zero
    - RMSNorm weights: U(0.5, 1.5), so a loader that ignores them is caught
    Tied parameters (Qwen2 embed_tokens == lm_head) appear once in
    named_parameters(), so they stay tied.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * INIT_STD)


def build_model(cls, config_cls, gen: torch.Generator, **overrides):
    config = config_cls(**{**COMMON, **overrides})
    model = cls(config).to(torch.float32)
    reinit_(model, gen)
    model.eval()
    return model


def save_model(model, tok: Tokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    write_tokenizer(tok, out)


def load_eager(cls, path: Path):
    """Reload a checkpoint from the local folder we just wrote (fp32, eager attn)."""
    m = cls.from_pretrained(str(path), attn_implementation="eager", dtype=torch.float32)
    m.eval()
    return m


def rnd(x):
    """Round a tensor (any shape) to DECIMALS and return nested Python lists."""
    def r(v):
        return [r(e) for e in v] if isinstance(v, list) else round(v, DECIMALS)
    return r(x.double().tolist())


def rand_ids(gen: torch.Generator, n: int) -> list:
    """n token ids from [3, VOCAB): never pad (0) nor the chat specials."""
    return torch.randint(FIRST_NORMAL_ID, VOCAB_SIZE, (n,), generator=gen).tolist()


@torch.no_grad()
def causal_reference(model, seqs):
    out = []
    for ids in seqs:
        logits = model(torch.tensor([ids]), use_cache=False).logits[0]
        out.append({"ids": ids, "logits": rnd(logits)})
    return out


@torch.no_grad()
def reward_reference(model, seqs):
    single, raw = [], []
    for ids in seqs:
        score = model(torch.tensor([ids]), use_cache=False).logits[0, 0].item()
        raw.append(score)
        single.append({"ids": ids, "score": round(score, DECIMALS)})

    # One right-padded batch; HF picks the last token != pad_token_id per row.
    width = max(len(s) for s in seqs)
    ids = [s + [PAD_ID] * (width - len(s)) for s in seqs]
    mask = [[1] * len(s) + [0] * (width - len(s)) for s in seqs]
    scores = model(
        torch.tensor(ids), attention_mask=torch.tensor(mask), use_cache=False
    ).logits[:, 0]
    batched = {"ids": ids, "attention_mask": mask, "scores": rnd(scores)}

    # Compared before rounding.
    max_diff = max(abs(a - b) for a, b in zip(raw, scores.tolist()))
    return {"single": single, "batched": batched}, max_diff


def main() -> None:
    repo_root = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "out_dir",
        nargs="?",
        default=str(repo_root / "tests" / "fixtures" / "tiny"),
        help="output folder (default: tests/fixtures/tiny under the repo root)",
    )
    args = ap.parse_args()
    out_dir = Path(args.out_dir)

    random.seed(SEED)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(SEED)

    tok = build_tokenizer()

    # (folder, model class, config class, extra config)
    specs = [
        ("llama", LlamaForCausalLM, LlamaConfig, dict(tie_word_embeddings=False)),
        ("qwen2", Qwen2ForCausalLM, Qwen2Config, dict(tie_word_embeddings=True)),
        ("llama_rm", LlamaForSequenceClassification, LlamaConfig,
         dict(num_labels=1, tie_word_embeddings=False)),
        ("qwen2_rm", Qwen2ForSequenceClassification, Qwen2Config,
         dict(num_labels=1, tie_word_embeddings=False)),
    ]

    # Fresh output folders so stale files never linger.
    for name, *_ in specs:
        shutil.rmtree(out_dir / name, ignore_errors=True)

    loaded = {}
    for name, cls, config_cls, extra in specs:
        model = build_model(cls, config_cls, gen, **extra)
        save_model(model, tok, out_dir / name)
        # Reference numbers come from the *reloaded* checkpoint, so they describe
        # exactly what is on disk; check it matches the in-memory model too.
        reloaded = load_eager(cls, out_dir / name)
        probe = torch.tensor([rand_ids(torch.Generator().manual_seed(0), 6)])
        with torch.no_grad():
            a = model(probe, use_cache=False).logits
            b = reloaded(probe, use_cache=False).logits
        assert torch.allclose(a, b, atol=1e-5), f"{name}: reload mismatch"
        loaded[name] = reloaded

    ref = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "seed": SEED,
        "causal": {},
        "reward": {},
    }

    # Causal LMs: two sequences (lengths 7 and 12), logits at every position.
    for name in ("llama", "qwen2"):
        seqs = [rand_ids(gen, 7), rand_ids(gen, 12)]
        ref["causal"][name] = causal_reference(loaded[name], seqs)

    # Reward models: three sequences (5, 9, 13), single and right-padded batch.
    diffs = {}
    for name in ("llama_rm", "qwen2_rm"):
        seqs = [rand_ids(gen, 5), rand_ids(gen, 9), rand_ids(gen, 13)]
        ref["reward"][name], diffs[name] = reward_reference(loaded[name], seqs)

    # End-to-end chat case: text -> ChatML -> ids -> reward score.
    hf_tok = AutoTokenizer.from_pretrained(str(out_dir / "llama_rm"))
    messages = [{"role": "user", "content": "What is 2+2?"}]
    response = "4"
    convo = messages + [{"role": "assistant", "content": response}]
    text = hf_tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=False)
    ids = hf_tok(text, add_special_tokens=False)["input_ids"]
    assert ids == tok.encode(text, add_special_tokens=False).ids
    with torch.no_grad():
        chat_scores = {
            n: round(loaded[n](torch.tensor([ids]), use_cache=False).logits[0, 0].item(), DECIMALS)
            for n in ("llama_rm", "qwen2_rm")
        }
    ref["chat"] = {
        "messages": messages,
        "response": response,
        "text": text,
        "ids": ids,
        "score": chat_scores["llama_rm"],  # llama_rm score of `ids`
        "scores": chat_scores,  # same, for both reward models
    }

    with open(out_dir / "reference.json", "w") as f:
        json.dump(ref, f, separators=(",", ":"))
        f.write("\n")

    # Sanity summary.
    for name, entries in ref["causal"].items():
        flat = [v for e in entries for row in e["logits"] for v in row]
        print(f"{name}: logits min {min(flat):.3f} max {max(flat):.3f} "
              f"distinct {len(set(flat))}/{len(flat)}")
        assert len(set(flat)) > len(flat) // 2, f"{name}: logits look degenerate"
    for name, d in diffs.items():
        print(f"{name}: scores {ref['reward'][name]['batched']['scores']} "
              f"max |batched - single| = {d:.2e}")
        assert d < 1e-5, f"{name}: batched vs single mismatch {d}"
    print(f"chat text {text!r}\nchat ids {ids}\nchat scores {chat_scores}")
    print(f"wrote {out_dir}")


if __name__ == "__main__":
    main()
