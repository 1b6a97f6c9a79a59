"""The command line of both apps: ``python -m APP`` runs a Hydra main and turns a refusal into one line.

A :class:`~sweeps.errors.ConfigError` or :class:`~sweeps.errors.NonFiniteError` raised by any job
(in this process or a launcher's worker), a run folder held by another run, or a
:class:`~sweeps.errors.SweepError` when a multirun's table cannot be aggregated or published, is
printed as ``error: <key or stage>: <message>`` on stderr and the process exits 1, without a
traceback. Hydra's own usage errors (an unknown override, a missing config) are printed the same
way. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from hydra.errors import CompactHydraException
from omegaconf.errors import OmegaConfBaseException

from sweeps.callback import Abort
from sweeps.errors import ConfigError, NonFiniteError, SweepError

REFUSALS = (ConfigError, NonFiniteError, SweepError)


def main(hydra_main: Callable[[], Any]) -> int:
    """Run ``hydra_main`` (a ``@hydra.main`` function) and return the process exit status."""
    # Hydra prints any job's exception as a traceback and exits; let it reach us instead, so a
    # refusal reads as one line. A multirun raises the first failed job's error after all ran.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        with _without_hydra_job_error():
            hydra_main()
    except REFUSALS as error:
        return fail(str(error))
    except Abort as abort:  # raised by the Hydra callback: a held folder, a failed aggregation
        return fail(str(abort.error))
    except CompactHydraException as error:
        cause = error.__cause__
        return fail(f"{error}" + (f" ({cause})" if isinstance(cause, OmegaConfBaseException) else ""))
    return 0


def fail(message: str) -> int:
    """Print ``error: <message>`` as one line on stderr; the exit status of a refused command."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return 1


class _Filtered:
    """``sys.stderr`` less Hydra's own "Error executing job with overrides: [...]" line, which it
    writes before re-raising a job's error (the error itself is then reported by :func:`main`)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if text.startswith("Error executing job with overrides:"):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _without_hydra_job_error() -> Iterator[None]:
    stream = sys.stderr
    sys.stderr = _Filtered(stream)
    try:
        yield
    finally:
        sys.stderr = stream
