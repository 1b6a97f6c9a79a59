"""Run harness shared by the ``theory`` and ``llm`` apps: jobs, resume, aggregation, publishing."""
