"""ck_dagster: LLM fine-tuning experiments on SLURM as partitioned Dagster assets.

The domain packages (``experiment``, ``finetune``, ``slurm``, ``training``, ``evaluation``,
``report``, ``tiny``) are plain Python; only ``ck_dagster.assets`` and
``ck_dagster.definitions`` import Dagster.
"""

__version__ = "0.1.0"
