"""The ``ck-dagster`` command: what Dagster has no verb for.

``register`` (experiment files -> partitions), ``status`` (where an experiment's runs stand),
``ui`` (the Dagster UI behind a token),
``dry-run`` (render every run's files to a folder), ``recipes`` (the torchtune catalog, like
``tune ls``), ``make-tiny-model`` and ``demo``.
Materializing is Dagster's job: ``dagster asset materialize -m ck_dagster.definitions ...``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ck_dagster.errors import CkError


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``ck-dagster`` verb; user errors print a message (no traceback) and exit 2."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CkError as exc:
        print(f"ck-dagster: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ck-dagster: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ck-dagster",
        description="Fine-tuning experiments on SLURM as partitioned Dagster assets.",
        epilog="Materialize with Dagster, e.g. dagster asset materialize -m ck_dagster.definitions "
        "--select run_config --partition EXPERIMENT/RUN",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    register = verbs.add_parser(
        "register",
        help="validate experiment files and add their runs as partitions",
        description="Validate each experiment file (every run's merged config included) and add "
        "its runs to the Dagster instance in $DAGSTER_HOME. Registering an edited "
        "file adds new runs, marks changed ones stale and reports removed ones "
        "without deleting anything.",
    )
    register.add_argument("files", nargs="+", type=Path, metavar="FILE")
    register.set_defaults(func=_register)

    dry_run = verbs.add_parser(
        "dry-run",
        help="render every run's finetune.yaml and finetune.slurm to a folder",
        description="Validate an experiment file and write every run's files under OUT/<run>/ "
        "without touching Dagster or submitting anything. When a SLURM controller "
        "answers, ask it whether each training job could ever run (sinfo, sbatch "
        "--test-only) and exit 1 naming every job it would refuse.",
    )
    dry_run.add_argument("file", type=Path, metavar="FILE")
    dry_run.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder to write to (default: ./dry-run/<experiment>)",
    )
    dry_run.add_argument(
        "--no-preflight",
        action="store_true",
        help="do not ask the SLURM cluster whether the jobs could run",
    )
    dry_run.set_defaults(func=_dry_run)

    recipes = verbs.add_parser("recipes", help="list torchtune's recipes and configs (tune ls)")
    recipes.set_defaults(func=_recipes)

    tiny = verbs.add_parser(
        "make-tiny-model",
        help="write the tiny-llama model (and a capitalization dataset)",
        description="Write a small Llama-style model that the model registry knows as "
        "`tiny-llama` (HF format, tokenizer built locally, pre-trained on CPU to echo "
        "words) into DIR, for models.base[].path. Nothing is downloaded.",
    )
    tiny.add_argument("directory", type=Path, metavar="DIR")
    tiny.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write a capitalization dataset (train/validation/test JSON)",
    )
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_make_tiny_model)

    status = verbs.add_parser(
        "status",
        help="one line per run of an experiment: config, job, epochs, evals, stale",
        description="Where every registered run of EXPERIMENT stands: its config (fresh, stale "
        "or missing), its training job (pending or running now, with the last "
        "progress observed, else the last one recorded), epochs saved, evaluations "
        "done, and which of its assets are stale or missing. Read from the Dagster "
        "instance in $DAGSTER_HOME, the run folders and the job scheduler.",
    )
    status.add_argument("experiment", metavar="EXPERIMENT")
    status.add_argument(
        "--no-jobs",
        action="store_true",
        help="do not ask the scheduler for running jobs (instance and files only)",
    )
    status.set_defaults(func=_status)

    ui = verbs.add_parser(
        "ui",
        help="the Dagster UI and daemon for $DAGSTER_HOME, on localhost, behind a token",
        description="Run Dagster's webserver and daemon for the instance in $DAGSTER_HOME, "
        "bound to 127.0.0.1 and reachable only with your secret token (kept in "
        "$DAGSTER_HOME/ui_token, mode 0600), as Jupyter does on shared login nodes. "
        "Prints the URL with the token and the ssh -L command for a laptop.",
    )
    ui.add_argument(
        "--port",
        type=int,
        default=None,
        help="port on 127.0.0.1 (default: the first free one from 3000)",
    )
    ui.set_defaults(func=_ui)

    demo = verbs.add_parser(
        "demo",
        help="train and evaluate a tiny model end to end on this machine",
        description="Make the tiny model and data, register the demo experiment and "
        "materialize every asset with the local launcher on a local Dagster "
        "instance; print the report. Running it again reuses what exists.",
    )
    demo.add_argument(
        "--folder",
        type=Path,
        default=Path("demo"),
        help="where the model, data, experiment and runs go (default: ./demo)",
    )
    demo.add_argument(
        "--home",
        type=Path,
        default=Path(".dagster_home"),
        help="the Dagster instance folder (default: ./.dagster_home)",
    )
    demo.set_defaults(func=_demo)
    return parser


def _register(args: argparse.Namespace) -> int:
    from ck_dagster.assets.registry import apply_registration, prepare_registration
    from ck_dagster.slurm.preflight import summarize

    instance = _instance()
    # Validate every file before registering any: a refused file registers nothing.
    registrations = []
    errors = []
    for file in dict.fromkeys(args.files):  # a file named twice is registered once
        try:
            registrations.append(prepare_registration(instance, file))
        except CkError as exc:
            errors.append(str(exc))
    files_by_name: dict[str, Path] = {}
    for registration in registrations:  # one experiment name, one file: within a command too
        experiment = registration.plan.experiment
        first = files_by_name.setdefault(experiment.name, experiment.file)
        if first != experiment.file:
            errors.append(
                f"{experiment.file}: experiment `{experiment.name}` is also in {first}; "
                "each experiment name belongs to one file. Rename one"
            )
    if errors:
        raise CkError("\n".join(errors))
    for registration in registrations:
        apply_registration(instance, registration)
        print(registration.summary())
        for refused in summarize(registration.plan.preflight() or []):
            print(
                f"ck-dagster: warning: {registration.plan.experiment.file}: the cluster could "
                f"never run {refused}",
                file=sys.stderr,
            )
    return 0


def _dry_run(args: argparse.Namespace) -> int:
    from ck_dagster.evaluation.spec import eval_specs_for
    from ck_dagster.finetune.plan import plan_experiment_file
    from ck_dagster.slurm.preflight import summarize
    from ck_dagster.slurm.script import check_script

    plan = plan_experiment_file(args.file)
    eval_specs_for(plan)  # the data and evaluation are checked as `register` checks them
    out = (args.out or Path("dry-run") / plan.experiment.name).expanduser().absolute()
    files = {}
    for name, run in plan.runs.items():
        if run.is_control:
            print(f"{name}: control run (evaluated on {run.model_path}, not trained)")
            continue
        assert run.finetune_yaml is not None and run.slurm_script is not None
        files[name] = {
            "finetune.yaml": run.finetune_yaml,
            "finetune.slurm": check_script(run.slurm_script),
        }
        print(
            f"{name}: {out / name}/finetune.yaml, finetune.slurm  ({run.recipe}, "
            f"{run.resources.gpus} GPU, {run.resources.mem})"
        )
    write_tree(out, files)
    print(f"{len(plan.runs)} runs valid; nothing was registered or submitted")
    if args.no_preflight:
        return 0
    refusals = plan.preflight()
    if refusals is None:
        print("no SLURM controller answered: the cluster was not asked about the jobs")
        return 0
    for refused in summarize(refusals):
        print(f"ck-dagster: {args.file}: the cluster could never run {refused}", file=sys.stderr)
    if refusals:
        print(
            f"ck-dagster: {len({r.run for r in refusals})} run(s) would be refused by the "
            "cluster (sinfo, sbatch --test-only)",
            file=sys.stderr,
        )
        return 1
    print("the cluster would run every job (sinfo, sbatch --test-only)")
    return 0


def write_tree(out: Path, files: dict[str, dict[str, str]]) -> None:
    """Write ``out/<folder>/<file>`` for every entry, all or nothing: everything is staged in
    a temporary folder beside ``out`` and moved in only when every file could be written."""
    import shutil
    import tempfile

    from ck_dagster.fileio import file_in_the_way

    folders = [out, *(out / folder for folder in files)]
    targets = [out / folder / name for folder, names in files.items() for name in names]
    blocker = file_in_the_way(out) or next(
        (path for path in folders if path.exists() and not path.is_dir()),
        next((path for path in targets if path.is_dir()), None),
    )
    if blocker is not None:
        raise CkError(
            f"cannot write to {out}: {blocker} is in the way (a "
            f"{'folder' if blocker.is_dir() else 'file'}); choose another --out. "
            "Nothing was written"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise CkError(f"cannot write to {out}: {exc.strerror}; nothing was written") from None
    try:
        for folder, names in files.items():
            (stage / folder).mkdir()
            for name, text in names.items():
                (stage / folder / name).write_text(text, encoding="utf-8")
                if name.endswith(".slurm"):
                    (stage / folder / name).chmod(0o755)
        out.mkdir(exist_ok=True)
        for folder, names in files.items():
            (out / folder).mkdir(exist_ok=True)
            for name in names:
                os.replace(stage / folder / name, out / folder / name)
    except OSError as exc:
        raise CkError(f"cannot write to {out}: {exc}; nothing was written") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _recipes(args: argparse.Namespace) -> int:
    from ck_dagster.finetune.catalog import recipe_catalog

    print(recipe_catalog().listing())
    return 0


def _make_tiny_model(args: argparse.Namespace) -> int:
    from ck_dagster.tiny.data import make_capitalization_dataset
    from ck_dagster.tiny.make import make_tiny_model

    if args.directory.exists() and any(args.directory.iterdir()):
        raise CkError(
            f"{args.directory} exists and is not empty: choose a new folder, so that "
            "no model is overwritten"
        )
    if args.data and args.data.exists():
        raise CkError(f"{args.data} exists: choose another file, so that no data is overwritten")
    print(f"tiny-llama written to {make_tiny_model(args.directory, seed=args.seed)}")
    if args.data:
        print(
            f"capitalization data written to "
            f"{make_capitalization_dataset(args.data, seed=args.seed)}"
        )
    return 0


def _status(args: argparse.Namespace) -> int:
    from ck_dagster.assets.status import status_lines
    from ck_dagster.definitions import defs
    from ck_dagster.slurm.choose import choose_launcher

    instance = _instance()
    launcher = None if args.no_jobs else choose_launcher(log=lambda message: None)
    for line in status_lines(instance, defs, args.experiment, launcher):
        print(line)
    return 0


def _ui(args: argparse.Namespace) -> int:
    import os

    from ck_dagster.assets.webserver import serve_ui
    from ck_dagster.settings import Settings

    os.umask(0o077)  # what the UI, the daemon and their code servers create is yours only
    _instance().dispose()  # refuses a missing DAGSTER_HOME before anything starts
    serve_ui(Path(str(Settings.from_env().dagster_home)).resolve(), args.port)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ck_dagster.demo import run_demo

    run_demo(args.folder.resolve(), args.home.resolve())
    return 0


def _instance():  # -> DagsterInstance (imported lazily: dagster is slow to import)
    from dagster import DagsterInstance

    from ck_dagster.settings import Settings

    configured = Settings.from_env().dagster_home
    if not configured:
        raise CkError(
            "DAGSTER_HOME is not set: point it at the folder of the Dagster instance "
            "to register with (e.g. export DAGSTER_HOME=$PWD/.dagster_home; "
            "mkdir -p $DAGSTER_HOME)"
        )
    home = Path(configured)
    if not home.is_dir():
        raise CkError(f"DAGSTER_HOME={home} does not exist: create it (mkdir -p {home})")
    return DagsterInstance.get()


if __name__ == "__main__":
    sys.exit(main())
