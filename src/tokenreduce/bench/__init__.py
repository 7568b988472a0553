"""The benchmark: tasks, metrics, the sweep runner, the SQLite results store and the report.

It uses only the public API (``tokenreduce.patch``, ``tokenreduce.methods``), like a user
would. Entry points: ``tokenreduce bench`` and ``tokenreduce report`` (see ``cli.py``).
"""
