"""``python -m figures``: redraw every figure in figures/ from the tables in results/."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from figures import llm, theory

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--out", type=Path, default=ROOT / "figures")
    parser.add_argument(
        "--demo",
        type=Path,
        metavar="RUN_DIR",
        help="draw only the demo figure from RUN_DIR/metrics.json into RUN_DIR/demo.png",
    )
    parser.add_argument(
        "--audit",
        type=Path,
        metavar="RUN_DIR",
        help="draw only the report of an experiment=audit run from RUN_DIR/metrics.json into RUN_DIR/audit.png",
    )
    args = parser.parse_args()
    for run_dir, report, name in ((args.demo, llm.demo, "demo.png"), (args.audit, llm.audit_report, "audit.png")):
        if run_dir is not None:
            metrics = json.loads((run_dir / "metrics.json").read_text())
            print(f"[figure] {report(metrics, run_dir / name)}")
            return
    args.out.mkdir(parents=True, exist_ok=True)
    missing = []
    for folder, draw in [("theory", d) for d in theory.ALL] + [("llm", d) for d in llm.ALL]:
        try:
            print(f"[figure] {draw(args.results / folder, args.out)}")
        except FileNotFoundError as err:
            missing.append(f"{draw.__name__}: {err.filename} (run `make results`)")
    for line in missing:
        print(f"[missing] {line}")
    if missing:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
