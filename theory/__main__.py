"""``python -m theory experiment=NAME [overrides]`` (``-m`` for a sweep); see conf/theory/."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from sweeps import cli
from sweeps.jobs import execute

# an absolute path, so that the app also runs in-process (imported as theory.__main__), as tests do
CONF = str(Path(__file__).resolve().parent.parent / "conf" / "theory")


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def main(cfg: DictConfig) -> dict:
    return execute(cfg, "theory")


if __name__ == "__main__":
    sys.exit(cli.main(main))
