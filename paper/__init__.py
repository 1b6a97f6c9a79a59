"""The paper: ``paper.tex`` and ``refs.bib`` by hand, every number and table generated.

``python -m paper`` reads ``results/`` (and the recipe settings in ``conf/``) and writes
``paper/generated/numbers.tex`` (one macro per quoted number, :mod:`paper.numbers`) and one
booktabs table per ``paper/generated/<name>.tex`` (:mod:`paper.tables`); it also fills the
README's generated headline block (:mod:`paper.readme`). ``make paper`` then builds
``paper/paper.pdf`` with latexmk.
"""
