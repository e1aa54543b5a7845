"""Evaluation of a run's checkpoints with inspect-ai, prompted exactly as training was.

- ``spec``: :class:`EvalSpec` (what one run's evaluation job does) and ``eval_spec_for(plan)``;
- ``submit``: the job as SLURM sees it (``eval.slurm``, the JobRunner request);
- ``job``: what runs inside it (``python -m ck_dagster.evaluation.job``);
- ``results``: ``results.json``, ``is_current`` and the problems a check reports;
- ``provider`` / ``tasks``: the ``torchtune/`` inspect model provider and the tasks it runs.

Nothing here imports Dagster.
"""
