"""LLM figures: one function per figure, each reading only ``results/llm/``."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from figures.theory import _save  # noqa: E402


def controls(results: Path, out: Path) -> Path:
    """Aligned controls: black-box misalignment before/after the victim's step, and utility."""
    rows = [pd.read_csv(results / "control.csv").assign(model="tiny GPT-2")]
    if (results / "control_smollm2.csv").exists():
        rows.append(pd.read_csv(results / "control_smollm2.csv").assign(model="SmolLM2-135M"))
    table = pd.concat(rows, ignore_index=True)
    labels = [f"{m}\n{d}" for m, d in zip(table["model"], table["domain"])]
    x = np.arange(len(table))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    for offset, key, name in ((-0.2, "static", "before the step"), (0.2, "post_update", "after one benign step")):
        bars = left.bar(x + offset, table[f"{key}.misalignment_rate"], width=0.4, label=name)
        left.bar_label(bars, labels=[f"{v:.0%}" for v in table[f"{key}.misalignment_rate"]], fontsize=7)
    left.set_ylabel("misaligned on held-out probes")
    left.set_ylim(0, 1.1)
    left.axhline(0.05, color="grey", lw=0.8, ls="--")
    left.set_title("Aligned controls (SGD, lr 1e-4, 32 benign samples)", fontsize=9)
    for offset, key, name in ((-0.2, "accuracy_before", "before"), (0.2, "accuracy_after", "after")):
        right.bar(x + offset, table[f"benign.{key}"], width=0.4, label=name)
    right.set_ylabel("held-out benign accuracy")
    right.set_ylim(0, 1)
    right.set_title("Benign utility", fontsize=9)
    for ax in (left, right):
        ax.set_xticks(x, labels, fontsize=7)
        ax.legend(fontsize=7)
    return _save(fig, out / "llm_controls.png")


ALL = (controls,)
