"""``python -m theory experiment=NAME [overrides]`` (``-m`` for a sweep); see conf/theory/."""

import sys

import hydra
from omegaconf import DictConfig

from sweeps import cli
from sweeps.jobs import execute


@hydra.main(version_base="1.3", config_path="../conf/theory", config_name="config")
def main(cfg: DictConfig) -> dict:
    return execute(cfg, "theory")


if __name__ == "__main__":
    sys.exit(cli.main(main))
