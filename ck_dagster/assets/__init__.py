"""The thin Dagster layer: partitions, assets, asset checks, sensors, schedules, resources."""

import warnings

from dagster import BetaWarning, PreviewWarning

# BackfillPolicy and partitioned checks are marked beta/preview; say so once in the docs
# rather than on every command a researcher runs.
warnings.filterwarnings("ignore", category=BetaWarning)
warnings.filterwarnings("ignore", category=PreviewWarning)
