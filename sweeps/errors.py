"""The ways a command refuses to produce a result, each reported by ``python -m APP`` in one line.

* :class:`ConfigError`: a setting is invalid (bad type, non-finite or out-of-range value, an index
  beyond a data split). Raised at start-up, before any model is trained; the message names the key.
* :class:`NonFiniteError`: weights, losses or logits became NaN or infinite. Raised by the stage
  that saw it (construction, update, evaluation, ...); a broken model is never written as a result.
* :class:`SweepError`: a multirun's table could not be aggregated or published.
"""


class ConfigError(ValueError):
    """An invalid setting. ``str(error)`` starts with the dotted config key, e.g. ``update.lr: ...``."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")

    def __reduce__(self):  # a launcher's worker pickles the error back: rebuild it from both parts
        return type(self), (self.key, self.message)


class NonFiniteError(RuntimeError):
    """Non-finite numbers in a run. ``str(error)`` starts with the stage, e.g. ``update: ...``."""

    def __init__(self, stage: str, message: str) -> None:
        self.stage = stage
        self.message = message
        super().__init__(f"{stage}: {message}")

    def __reduce__(self):
        return type(self), (self.stage, self.message)


class SweepError(RuntimeError):
    """A multirun's aggregation or publishing failed. ``str(error)`` starts with the stage,
    ``aggregate`` or ``publish``; the command fails rather than leave a stale or partial table."""

    def __init__(self, stage: str, message: str) -> None:
        self.stage = stage
        self.message = message
        super().__init__(f"{stage}: {message}")

    def __reduce__(self):
        return type(self), (self.stage, self.message)
