"""A user's LoRA adapter, read from a folder written by peft's ``save_pretrained``.

Only ``adapter_model.safetensors`` is read (pickled ``adapter_model.bin`` files are never
loaded), and every LoRA tensor the adapter's config declares must be in it: peft would keep a
missing factor at its initial value, which is another model.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from peft import PeftModel
from safetensors import safe_open
from transformers import PreTrainedModel

from llm.lora import ADAPTER, is_lora
from sweeps.errors import ConfigError

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def adapter_file(path: str | Path, key: str) -> Path:
    """The adapter's safetensors file, or a :class:`ConfigError` on ``key`` saying what is wrong."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(key, f"adapter folder {folder} does not exist")
    if not (folder / CONFIG).exists():
        raise ConfigError(key, f"no {CONFIG} in {folder} (save the adapter with peft's save_pretrained)")
    if not (folder / WEIGHTS).exists():
        others = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        hint = f" (found {', '.join(others)}; only safetensors are loaded)" if others else ""
        raise ConfigError(key, f"no {WEIGHTS} in {folder}{hint}")
    return folder / WEIGHTS


def load_adapter(base: PreTrainedModel, path: str | Path, key: str = "audit.adapter") -> PreTrainedModel:
    """``base`` (wrapped in place) with the adapter at ``path``, a peft model; every LoRA tensor read
    from the file."""
    weights = adapter_file(path, key)
    with safe_open(str(weights), framework="pt") as f:
        stored = set(f.keys())
    model = PeftModel.from_pretrained(base, str(weights.parent), adapter_name=ADAPTER)
    expected = {n.replace(f".{ADAPTER}.", ".") for n, _ in model.named_parameters() if is_lora(n)}
    missing = sorted(expected - stored)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ConfigError(key, f"{weights} lacks {len(missing)} LoRA tensors ({', '.join(missing[:3])}{more})")
    return cast(PreTrainedModel, model.eval())
