"""``python -m llm experiment=NAME [overrides]`` (``-m`` for a sweep); see conf/llm/."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from sweeps import cli
from sweeps.jobs import execute

# an absolute path, so that the app also runs in-process (imported as llm.__main__), as tests do
CONF = str(Path(__file__).resolve().parent.parent / "conf" / "llm")


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def main(cfg: DictConfig) -> dict:
    return execute(cfg, "llm")


if __name__ == "__main__":
    sys.exit(cli.main(main))
