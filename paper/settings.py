"""The recipe settings the paper quotes (a learning rate, a sample count), read from ``conf/``.

Results record what they measured; the inputs that no row records (the victim's learning rate,
the update set's size, the gauge gain) come from the composed experiment configs, the same
composition ``python -m theory|llm experiment=NAME`` runs. A setting a row does record
(``size.rank``, ``construct.steps``) is read from the rows instead (:mod:`paper.numbers`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from paper.data import ROOT


@cache
def recipe(app: str, *overrides: str, conf: Path = ROOT / "conf") -> DictConfig:
    """The composed config of ``python -m <app> <overrides…>`` (nothing is run)."""
    with initialize_config_dir(str((conf / app).resolve()), version_base=None):
        return compose("config", overrides=list(overrides))


def setting(app: str, key: str, *overrides: str) -> Any:
    """One dotted ``key`` of the composed recipe (a missing key is an error naming it)."""
    node = recipe(app, *overrides)
    for part in key.split("."):
        index = int(part) if part.isdigit() else part  # a list item: model.hidden.0
        if (isinstance(index, int) and index >= len(node)) or (isinstance(index, str) and index not in node):
            raise KeyError(f"{key}: not in the composed config of `{app} {' '.join(overrides)}`")
        node = node[index]
    return node
