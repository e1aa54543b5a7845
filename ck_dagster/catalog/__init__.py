"""What an experiment file may name: the models ck_dagster knows and the training parameters.

A leaf: it imports nothing of ck_dagster's but ``slurm.resources``, so ``experiment/`` (which
checks names against it) and ``finetune/`` (which plans with it) both read it without reading
each other.
"""
