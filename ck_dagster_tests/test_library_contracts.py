"""The private APIs of Dagster, inspect-ai and torchtune that ck_dagster still uses, each behind
one adapter module: these tests fail loudly, naming the adapter, when a library changes them."""

from __future__ import annotations

import pytest

# Imported here, at collection: importing Dagster runs `file` (platform.architecture) once, and a
# unit test may start no process.
from dagster import AssetObservation

pytestmark = pytest.mark.unit


def test_dagster_observation_data_version_tag() -> None:
    """assets/dagster_internals.py: the tag is what the public ``data_version`` reads back."""
    from ck_dagster.assets.dagster_internals import data_version_tags

    observation = AssetObservation("spec", tags=data_version_tags("v-123"))
    assert observation.data_version == "v-123", "Dagster moved DATA_VERSION_TAG: fix the adapter"


def test_dagster_materialization_tags_read_back_as_provenance() -> None:
    """assets/dagster_internals.py: a materialization logged per partition carries the lineage
    Dagster reads back (its input's data version and event, the code version)."""
    from dagster import AssetKey, AssetMaterialization, DagsterInstance, DataProvenance

    from ck_dagster.assets.dagster_internals import data_version_tags, materialization_tags

    config = AssetKey("run_config")
    with DagsterInstance.ephemeral() as instance:
        instance.report_runless_asset_event(
            AssetMaterialization(config, partition="e/r", tags=data_version_tags("v7"))
        )
        [record] = instance.fetch_materializations(config, limit=1).records
        tags = materialization_tags(instance, "code-1", {config: "e/r"})
    provenance = DataProvenance.from_tags(tags)
    assert provenance is not None, "Dagster moved its provenance tags: fix the adapter"
    assert provenance.code_version == "code-1"
    assert provenance.input_data_versions[config].value == "v7"
    assert provenance.input_storage_ids[config] == record.storage_id
    assert AssetMaterialization("checkpoint", tags=tags).tags == tags  # accepted as they are


def test_dagster_automation_context_reaches_instance_and_subsets() -> None:
    """assets/dagster_internals.py: what the custom automation condition reaches through."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView
    from dagster._core.asset_graph_view.entity_subset import EntitySubset

    assert isinstance(getattr(AssetGraphView, "instance", None), property), "fix the adapter"
    assert callable(getattr(EntitySubset, "compute_intersection_with_partition_keys", None))


def test_inspect_default_max_tokens_is_still_inspects() -> None:
    """evaluation/provider.py mirrors inspect-ai's default for new tokens."""
    from inspect_ai._util.constants import DEFAULT_MAX_TOKENS

    from ck_dagster.evaluation.provider import DEFAULT_MAX_NEW_TOKENS

    assert DEFAULT_MAX_NEW_TOKENS == DEFAULT_MAX_TOKENS


def test_torchtune_recipe_registry_loaded_by_path_is_torchtunes() -> None:
    """finetune/torchtune_internals.py: the file loaded by path lists what torchtune lists."""
    import torchtune._recipe_registry as imported

    from ck_dagster.finetune.torchtune_internals import TORCHTUNE_DIR, recipe_registry

    assert (TORCHTUNE_DIR / "_recipe_registry.py").is_file()
    names = [(r.name, [c.name for c in r.configs]) for r in recipe_registry().get_all_recipes()]
    assert names == [(r.name, [c.name for c in r.configs]) for r in imported.get_all_recipes()]
    assert any(name == "lora_finetune_single_device" for name, _ in names)


def test_torchtune_config_errors_are_what_validate_raises() -> None:
    from omegaconf import OmegaConf
    from torchtune.config import validate

    from ck_dagster.finetune.torchtune_internals import config_errors

    config_error, instantiation_error = config_errors()
    with pytest.raises(config_error) as raised:
        validate(
            OmegaConf.create(
                {"loss": {"_component_": "torch.nn.CrossEntropyLoss", "no_such_argument": 1}}
            )
        )
    assert raised.value.errors, "ConfigError lost its .errors list"
    with pytest.raises(instantiation_error):
        validate(OmegaConf.create({"model": {"_component_": "no.such.module.builder"}}))


def test_torchtune_recipe_sources_still_read_cfg_keys() -> None:
    from ck_dagster.finetune.torchtune_internals import RECIPES_ROOT, keys_read_by

    assert (RECIPES_ROOT / "lora_finetune_single_device.py").is_file()
    assert {"epochs", "batch_size", "optimizer", "gradient_accumulation_steps"} <= keys_read_by(
        "lora_finetune_single_device"
    )
