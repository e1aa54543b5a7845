"""The private APIs of Dagster, inspect-ai and torchtune that ck_dagster still uses, each behind
one adapter module: these tests fail loudly, naming the adapter, when a library changes them."""

from __future__ import annotations

from pathlib import Path

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


def test_dagster_sqlite_observations_stored_in_one_transaction(tmp_path: Path) -> None:
    """assets/dagster_internals.py: observations reported in one batch read back as reported
    ones do, the storage is left as it was, and a batch that fails part-way stores nothing."""
    from dagster import (
        AssetKey,
        AssetRecordsFilter,
        DagsterInstance,
        DagsterInvariantViolationError,
    )

    from ck_dagster.assets.dagster_internals import data_version_tags, report_observations
    from ck_dagster.assets.instance import ensure_dagster_home

    instance = DagsterInstance.from_config(str(ensure_dagster_home(tmp_path)))
    storage = instance.event_log_storage
    lock = storage._db_lock  # type: ignore[attr-defined]

    def observed(key: str) -> dict[str, str | None]:
        records = instance.fetch_observations(AssetRecordsFilter(asset_key=AssetKey(key)), 10)
        return {r.partition_key or "": r.asset_observation.data_version for r in records.records}  # type: ignore[union-attr]

    def spec(key: str, partition: str) -> AssetObservation:
        return AssetObservation(key, partition=partition, tags=data_version_tags(partition))

    report_observations(instance, [spec("a", "p1"), spec("a", "p2")])
    assert observed("a") == {"p1": "p1", "p2": "p2"}, "fix report_observations"
    assert "_connect" not in vars(storage) and storage._db_lock is lock  # type: ignore[attr-defined]
    with pytest.raises(DagsterInvariantViolationError):
        report_observations(instance, [spec("b", "p1"), "not an observation"])  # type: ignore[list-item]
    assert observed("b") == {}, "a failed batch stored part of itself: fix report_observations"
    report_observations(instance, [spec("b", "p3")])  # the storage still works
    assert observed("b") == {"p3": "p3"}


def test_dagster_sqlite_batch_makes_other_threads_wait(tmp_path: Path) -> None:
    """assets/dagster_internals.py: a thread that writes while a batch is open (a daemon's other
    sensors share the instance) waits for the batch to end, then writes on its own connection."""
    import threading
    import time

    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

    from ck_dagster.assets.dagster_internals import data_version_tags, report_observations
    from ck_dagster.assets.instance import ensure_dagster_home

    instance = DagsterInstance.from_config(str(ensure_dagster_home(tmp_path)))
    done, errors = threading.Event(), []

    def spec(key: str, partition: str) -> AssetObservation:
        return AssetObservation(key, partition=partition, tags=data_version_tags(partition))

    def other() -> None:
        try:
            instance.report_runless_asset_event(spec("other", "x"))
        except Exception as exc:  # the failure under test, checked below
            errors.append(exc)
        done.set()

    thread = threading.Thread(target=other)

    class Batch(list):
        def __iter__(self):  # type: ignore[override]
            yield spec("a", "p1")
            thread.start()
            time.sleep(0.5)
            assert not done.is_set(), "another thread wrote inside the batch: fix the adapter"
            yield spec("a", "p2")

    report_observations(instance, Batch([None, None]))
    thread.join(timeout=30)
    assert done.is_set() and not errors, errors
    records = instance.fetch_observations(AssetRecordsFilter(asset_key=AssetKey("other")), 10)
    assert len(records.records) == 1


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


def test_dagster_observed_input_counts_by_its_observation() -> None:
    """assets/dagster_internals.py: an input that is only ever observed (eval_spec) gives a
    per-partition materialization its observation's data version and event."""
    from dagster import AssetKey, AssetObservation, DagsterInstance, DataProvenance

    from ck_dagster.assets.dagster_internals import data_version_tags, materialization_tags

    spec = AssetKey("eval_spec")
    with DagsterInstance.ephemeral() as instance:
        instance.report_runless_asset_event(
            AssetObservation(spec, partition="e/r", tags=data_version_tags("s3"))
        )
        [record] = instance.fetch_observations(spec, limit=1).records
        provenance = DataProvenance.from_tags(materialization_tags(instance, "c", {spec: "e/r"}))
    assert provenance is not None
    assert provenance.input_data_versions[spec].value == "s3"
    assert provenance.input_storage_ids[spec] == record.storage_id


def test_dagster_step_sees_its_downstream_assets_under_materialize() -> None:
    """assets/dagster_internals.py: a step learns which assets depend on it from its job's
    asset layer, also under ``materialize()`` (no repository definition there)."""
    from dagster import asset, materialize

    from ck_dagster.assets.dagster_internals import downstream_assets

    seen = []

    @asset
    def upstream(context) -> None:  # noqa: ANN001 - a local type annotation Dagster cannot read
        seen.append(downstream_assets(context))

    @asset(deps=[upstream])
    def downstream() -> None:
        pass

    assert materialize([upstream, downstream]).success
    assert [{key.to_user_string() for key in keys} for keys in seen] == [{"downstream"}]


def test_dagster_automation_context_reaches_instance_and_subsets() -> None:
    """assets/dagster_internals.py: what the custom automation condition reaches through."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView
    from dagster._core.asset_graph_view.entity_subset import EntitySubset

    assert isinstance(getattr(AssetGraphView, "instance", None), property), "fix the adapter"
    assert callable(getattr(EntitySubset, "compute_intersection_with_partition_keys", None))


def test_dagster_concurrency_pool_claims_per_key(tmp_path) -> None:
    """assets/dagster_internals.py: a pool made, claimed per key up to its limit, freed."""
    from dagster import DagsterInstance

    from ck_dagster.assets.dagster_internals import ConcurrencyPool

    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        pool = ConcurrencyPool(instance, "jobs")
        assert pool.ensure(1) and not pool.ensure(5), "fix the adapter"
        assert pool.claim("run-a", "train[r1]") and not pool.claim("run-b", "train[r2]")
        assert pool.holders() == {"run-a"}
        pool.free("run-a", "train[r1]")
        assert pool.claim("run-b", "train[r2]")
        pool.free_run("run-b")
        assert pool.holders() == set()


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


def test_omegaconf_yaml_loader_reads_configs_as_omegaconf_create_does() -> None:
    """finetune/torchtune_internals.py: OmegaConf's loader alone reads config text as
    ``OmegaConf.create`` does (floats, escapes, interpolations, block text), and refuses a
    duplicate key as it does."""
    from omegaconf import OmegaConf

    from ck_dagster.finetune.torchtune_internals import read_config_text

    text = (
        "lr: 1e-4\nquoted: '1e-4'\nwhole: 3\nflag: true\nnothing: null\n"
        "out: ${output_dir}/logs\nescaped: \\${oc.env:HOME}\n"
        "prompt: |\n  Capitalize: {input}\n  done\n"
        "model: {_component_: torchtune.models.llama3_2.lora_llama3_2_1b, lora_rank: 8,"
        " modules: [q_proj, v_proj]}\n"
    )
    expected = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    assert read_config_text(text) == expected, "OmegaConf's loader changed: fix the adapter"
    with pytest.raises(Exception) as created:
        OmegaConf.create("a: 1\na: 2\n")
    with pytest.raises(type(created.value)):
        read_config_text("a: 1\na: 2\n")
