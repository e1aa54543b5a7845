"""Shared pytest configuration: fixtures live in ck_dagster_tests/fixtures/, one module each."""

pytest_plugins: list[str] = [
    "ck_dagster_tests.fixtures.dagster",
    "ck_dagster_tests.fixtures.postgres",
    "ck_dagster_tests.fixtures.slurm",
    "ck_dagster_tests.fixtures.tiny_model",
]
