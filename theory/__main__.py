"""``python -m theory experiment=NAME [overrides]`` (``-m`` for a sweep); see conf/theory/."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from theory.runs import METRICS, flatten, read_metrics, write_json_atomic


@hydra.main(version_base="1.3", config_path="../conf/theory", config_name="config")
def main(cfg: DictConfig) -> dict | None:
    if cfg.get("experiment_name") is None:
        raise ValueError("choose an experiment: python -m theory experiment=twin|gauge_scale|capacity|ntk")
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    done = read_metrics(run_dir)
    if done is not None and cfg.resume:
        print(f"[skip] {run_dir / METRICS} exists (resume=true)")
        return done
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    experiment = importlib.import_module(f"theory.experiments.{cfg.experiment_name}")
    start = time.perf_counter()
    metrics = flatten(experiment.run(cfg))
    metrics["wall_time_s"] = round(time.perf_counter() - start, 3)
    metrics["torch_threads"] = torch.get_num_threads()
    write_json_atomic(run_dir / METRICS, metrics)
    width = max(map(len, metrics))
    for key, value in metrics.items():
        print(f"{key:<{width}}  {value:.6g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    print(f"[metrics] {run_dir / METRICS}")
    if hasattr(experiment, "report"):
        print(experiment.report(metrics))
    return metrics


if __name__ == "__main__":
    main()
