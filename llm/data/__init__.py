"""Data for the LLM experiments: wheel-shipped benchmarks, synthetic probes, splits (see PROVENANCE.md)."""
