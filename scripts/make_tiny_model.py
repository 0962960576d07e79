"""Write a tiny random Llama model that real vLLM can serve on the CPU.

    .venv-vllm/bin/python scripts/make_tiny_model.py OUT_DIR

No weights can be downloaded here, so the model (random weights, seeded) and
its tokenizer (byte-level BPE trained on generated text) are both made
locally; nothing touches a hub. The result is under 1 MB and takes seconds.
Its output is gibberish, which is all the gateway's tests need: real
start-up, real OpenAI-shaped responses, real processes.

Run it with the vLLM venv's python: it needs torch, transformers and
tokenizers, which the gateway's own venv does not carry.

Idempotent: when OUT_DIR already holds a model made from the same recipe it
exits at once. The files are written to a sibling temporary folder and moved
into place, so an interrupted run never leaves a half-written model behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

# Set before transformers is imported: it reads these once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

SEED = 1234
VOCAB_SIZE = 1000
# Two heads (head dim 32): a four-head variant (head dim 16) crashed the CPU
# backend on its first request.
MODEL_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    # Large on purpose: RoPE costs nothing per position, and long-stream tests
    # can then raise --max-model-len without VLLM_ALLOW_LONG_MAX_MODEL_LEN.
    "max_position_embeddings": 32768,
}
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = [PAD, BOS, EOS]
# Plain string content only, so vLLM detects the "string" content format.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
RECIPE_FILE = ".tiny-model-recipe"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def recipe_digest() -> str:
    """Fingerprint of everything that shapes the output, to detect stale folders."""
    recipe = {
        "seed": SEED,
        "vocab": VOCAB_SIZE,
        "shape": MODEL_SHAPE,
        "special": SPECIAL_TOKENS,
        "template": CHAT_TEMPLATE,
        # Bump when the corpus or the way files are written changes.
        "version": 2,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def is_current(out_dir: Path) -> bool:
    stamp = out_dir / RECIPE_FILE
    if not stamp.is_file() or stamp.read_text().strip() != recipe_digest():
        return False
    return all((out_dir / name).is_file() for name in REQUIRED_FILES)


def training_corpus(rng: random.Random) -> list[str]:
    """Pseudo-English sentences: enough distinct words for 1000 BPE tokens."""
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(3000)]
    sentences = []
    for _ in range(4000):
        sentence = " ".join(rng.choices(words, k=rng.randint(4, 14)))
        sentences.append(sentence.capitalize() + rng.choice([".", "?", "!", ","]))
    return sentences


def write_tokenizer(out_dir: Path, rng: random.Random) -> dict[str, int]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(rng), trainer)
    # The model's embedding has exactly VOCAB_SIZE rows; a tokenizer with fewer
    # tokens would let the random model emit ids that decode to nothing.
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise SystemExit(f"tokenizer has {tokenizer.get_vocab_size()} tokens, not {VOCAB_SIZE}")
    tokenizer.save(str(out_dir / "tokenizer.json"))

    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "add_bos_token": False,
        "model_max_length": MODEL_SHAPE["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    special_map = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    return ids


def write_model(out_dir: Path, token_ids: dict[str, int]) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        bos_token_id=token_ids[BOS],
        eos_token_id=token_ids[EOS],
        pad_token_id=token_ids[PAD],
        tie_word_embeddings=False,
        **MODEL_SHAPE,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(str(out_dir), safe_serialization=True)


def check(out_dir: Path) -> None:
    """Load what was written the way vLLM will, so a broken folder fails here."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello there"}], tokenize=False, add_generation_prompt=True
    )
    if not isinstance(prompt, str) or "<|assistant|>" not in prompt:
        raise SystemExit(f"chat template produced {prompt!r}")


def make(out_dir: Path) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model folder is not secret
    try:
        rng = random.Random(SEED)
        token_ids = write_tokenizer(tmp, rng)
        write_model(tmp, token_ids)
        check(tmp)
        (tmp / RECIPE_FILE).write_text(recipe_digest() + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        try:
            tmp.rename(out_dir)
        except OSError:
            # Another run finished first; its result is as good as ours.
            if not is_current(out_dir):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUT_DIR", file=sys.stderr)
        return 2
    out_dir = Path(argv[1]).resolve()
    if is_current(out_dir):
        print(f"tiny model already in {out_dir}")
        return 0
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / RECIPE_FILE).exists():
        # Only a folder this script made (stale recipe) is replaced, never a user's.
        print(f"refusing to overwrite {out_dir}: not a tiny model folder", file=sys.stderr)
        return 1
    make(out_dir)
    print(f"tiny model written to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
