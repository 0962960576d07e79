"""Write a tiny random LoRA adapter (PEFT layout) for the tiny model of make_tiny_model.py.

    .venv-vllm/bin/python scripts/make_tiny_lora.py MODEL_DIR OUT_DIR [--seed N] [--rank R]

Nothing is downloaded: ``adapter_config.json`` and ``adapter_model.safetensors``
(``q_proj`` and ``v_proj`` of every layer, a few KB) are written from seeded
random numbers with torch and safetensors, which the vLLM venv carries. The
weights are large beside the base's (initialised at 0.02), so at temperature 0
the adapter's text differs from the base's; two seeds give two adapters that
answer apart, and one seed always gives the same adapter.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

TARGETS = ("q_proj", "v_proj")
ALPHA = 16
SCALE = 0.3


def shapes(config: dict[str, int]) -> dict[str, tuple[int, int]]:
    """(in, out) features of each target projection."""
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", config["num_attention_heads"])
    return {"q_proj": (hidden, hidden), "v_proj": (hidden, kv_heads * head_dim)}


def make(model_dir: Path, out_dir: Path, seed: int, rank: int) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for target, (fan_in, fan_out) in shapes(config).items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            tensors[f"{prefix}.lora_A.weight"] = SCALE * torch.randn(
                rank, fan_in, generator=generator)
            tensors[f"{prefix}.lora_B.weight"] = SCALE * torch.randn(
                fan_out, rank, generator=generator)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()},
              str(out_dir / "adapter_model.safetensors"))
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(model_dir),
        "r": rank, "lora_alpha": ALPHA, "lora_dropout": 0.0, "bias": "none",
        "target_modules": list(TARGETS), "fan_in_fan_out": False, "inference_mode": True,
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args(argv)
    make(args.model_dir, args.out_dir, args.seed, args.rank)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
