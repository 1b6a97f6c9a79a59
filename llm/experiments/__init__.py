"""One module per Hydra experiment: ``run(cfg) -> metrics`` and, for sweeps, ``summarize(table)``."""
