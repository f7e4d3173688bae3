"""Batch jobs that are safe to start from cron: `hovcaffe job run SPEC`.

spec.py (YAML/TOML spec, validated) -> runner.py (lock, state, steps as subprocesses, staged
outputs published when the job succeeds, log and summary) ; status.py for `hovcaffe job status`.
Importing this package imports nothing else: `_child` (the step launcher) must start fast.
"""
