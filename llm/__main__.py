"""``python -m llm experiment=NAME [overrides]`` (``-m`` for a sweep); see conf/llm/."""

import sys

import hydra
from omegaconf import DictConfig

from sweeps import cli
from sweeps.jobs import execute


@hydra.main(version_base="1.3", config_path="../conf/llm", config_name="config")
def main(cfg: DictConfig) -> dict:
    return execute(cfg, "llm")


if __name__ == "__main__":
    sys.exit(cli.main(main))
