"""The Hydra callback of both apps (``hydra.callbacks.harness`` in ``conf/APP/config.yaml``).

* A single run takes its run folder before Hydra writes anything into it; a folder that another
  live run holds is refused.
* A multirun takes its sweep folder for its whole length (one multirun per folder at a time),
  starts the folder's job list empty, and when its jobs are done writes the table of those jobs
  (:func:`sweeps.aggregate.summarize_sweep`), publishing it with ``publish=true``.

Hydra turns an ``Exception`` raised by a callback into a warning and carries on; a refusal here is
raised as :class:`Abort` instead, which Hydra lets through, so the command fails
(:func:`sweeps.cli.main` prints it as one line).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sweeps.aggregate import Target, summarize_sweep
from sweeps.errors import ConfigError, SweepError
from sweeps.jobs import flatten, publish_mode, read_job_list, start_job_list
from sweeps.locks import FolderInUse, claim, release


class Abort(BaseException):  # a control-flow signal, like SystemExit
    """Carries ``error`` out of a Hydra callback (Hydra catches ``Exception`` there, not this)."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        super().__init__(str(error))


def _folder(config: DictConfig, key: str) -> Path:
    """The absolute folder ``key`` names. The config is the one Hydra goes on to use, so a
    time stamp in it resolves (and is cached) once, here, to the value Hydra uses too."""
    HydraConfig.instance().set_config(config)  # for ${hydra:...} in the path; Hydra sets it next anyway
    return Path(os.path.abspath(str(OmegaConf.select(config, key))))


class HarnessCallback(Callback):
    """Run-folder claims, the multirun's job list, and aggregation when a multirun ends."""

    def __init__(self, app: str) -> None:
        self.app = app
        self._folder: Path | None = None  # the run or sweep folder this callback claimed

    @property
    def folder(self) -> Path:
        if self._folder is None:
            raise SweepError("aggregate", "the run's start was not seen: no folder was claimed")
        return self._folder

    def _claim(self, config: DictConfig, key: str) -> None:
        self._folder = _folder(config, key)
        try:
            claim(self._folder, key)
        except FolderInUse as error:
            raise Abort(error) from None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "hydra.run.dir")

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._folder is not None:
            release(self._folder)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "hydra.sweep.dir")
        start_job_list(self.folder)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            summary = flatten(self.aggregate(config))
        except (SweepError, ConfigError) as error:
            raise Abort(error) from error
        except Exception as error:  # anything else: still no exit 0 with a stale or missing table
            raise Abort(SweepError("aggregate", f"{type(error).__name__}: {error}")) from error
        finally:
            if self._folder is not None:
                release(self._folder)
        print(f"[aggregate] {self.folder}/summary.csv")
        for key, value in summary.items():
            print(f"[aggregate] {key} = {value}")

    def aggregate(self, config: DictConfig) -> dict[str, Any]:
        """The table and summary of this multirun's jobs, published with ``publish=true``."""
        folder = self.folder
        jobs = read_job_list(folder)
        if jobs is None:
            raise SweepError("aggregate", f"{folder} has no job list; was it cleared during the multirun?")
        exclude = OmegaConf.select(config, "hydra.job.config.override_dirname.exclude_keys", default=[]) or []
        target = None
        if config.get("publish"):
            target = Target(
                Path(config.results_dir),
                config.get("results_name") or config.experiment_name,
                merge=publish_mode(config) == "merge",
                exclude=tuple(exclude),
            )
        experiment = config.get("runner") or config.experiment_name
        return summarize_sweep(folder, self.app, experiment, jobs, target)
