"""Figures redrawn from the committed tables in ``results/`` (``python -m figures``)."""
