"""`raylane optimize distill`: train a smaller student on a registered teacher's soft targets.

    raylane optimize distill --teacher digits@production --config debug --register digits-small
    raylane optimize distill --teacher digits:3 --config digits-cnn --set model.channels=[8,16] \\
        --temperature 4 --alpha 0.7 --epochs 10 --register digits-small
    ray job submit --working-dir . -- python -m workloads.optimize distill --teacher digits:3 ...

The student is any training config (a smaller preset, or overrides). It trains with the same
Ray Train loop as `raylane train`; each worker loads the teacher (in eval mode, no gradients)
and the loss is alpha * T^2 * KL(teacher || student, both softened at temperature T) plus
(1 - alpha) * cross-entropy on the labels (workloads/recipe.py). The teacher must take the same
inputs and classes as the student's data; that is checked here, before any worker starts.
The best checkpoint is registered with lineage {parent: the teacher, method, settings}.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cluster.errors import ConfigError, run_cli
from cluster.registry import check_name
from cluster.runtime import use_code
from cluster.storage import Storage
from workloads import data
from workloads.config import load_job_config, presets
from workloads.finetune import (
    INPUT_FIELDS,
    add_derived_args,
    check_code,
    check_input,
    resolve_parent,
    train_and_register,
)
from workloads.models import build_model, count_parameters, model_spec
from workloads.recipe import Recipe
from workloads.trust import CodePolicy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raylane optimize distill",
        description="Train a student config on a registered teacher's soft targets (Ray Train) "
        "and register it as a new version.",
    )
    parser.add_argument("--teacher", required=True, help="NAME@ALIAS or NAME:VERSION")
    parser.add_argument("--config", required=True,
                        help=f"the student: a preset ({', '.join(presets())}) or a YAML file")  # fmt: skip
    parser.add_argument("--temperature", type=float, default=4.0,
                        help="softens both models' outputs (default 4)")  # fmt: skip
    parser.add_argument("--alpha", type=float, default=0.7,
                        help="weight of the teacher's soft targets; 1 - alpha on the labels")  # fmt: skip
    add_derived_args(parser)
    return parser


def check_settings(args: argparse.Namespace) -> None:
    if not args.temperature > 0:
        raise ConfigError(f"--temperature must be above 0 (4 is usual), got {args.temperature}")
    if not 0 <= args.alpha <= 1:
        raise ConfigError(f"--alpha is a weight between 0 and 1, got {args.alpha}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    use_code(args.working_dir, args.py_modules)  # before a config names a custom class
    check_settings(args)
    storage = Storage.from_uri(args.storage)
    check_name(args.register)  # a bad name fails before training, not after
    teacher = resolve_parent(storage, args.teacher)
    check_code(teacher, storage)
    run = f"{teacher.ref.replace(':', '-v')}-distill-{args.config.rsplit('/', 1)[-1]}"
    overrides = [f"name={args.name or run.removesuffix('.yaml')}", *args.set]
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    config = load_job_config(args.config, overrides)
    if config.train.init_from:
        raise ConfigError("distill trains its student from scratch: drop train.init_from")
    info = data.resolve(config.data, storage)
    check_input(teacher, info.input_spec(), option="--teacher",
                fields=(*INPUT_FIELDS, "class_names"))  # fmt: skip
    spec = model_spec(config.model, input_shape=info.feature_shape,
                      num_classes=info.num_classes, vocab_size=info.vocab_size)  # fmt: skip
    student = count_parameters(build_model(spec, policy=CodePolicy.CONFIGURED))
    taught_by = count_parameters(build_model(teacher.meta["model"], policy=CodePolicy.CONFIGURED))
    print(
        f"distilling {teacher.ref} ({taught_by:,} parameters) into {config.model.family} "
        f"({student:,} parameters, {student / taught_by:.2f}x) at T={args.temperature}, "
        f"alpha={args.alpha}"
    )
    settings = {"temperature": args.temperature, "alpha": args.alpha, "config": args.config,
                "student_parameters": student, "teacher_parameters": taught_by}  # fmt: skip
    recipe = Recipe(
        teacher_key=teacher.key,
        temperature=args.temperature,
        alpha=args.alpha,
        lineage={"parent": teacher.ref, "method": "distill", "settings": settings},
    )
    train_and_register(config, storage, recipe, args)
    return 0


if __name__ == "__main__":
    run_cli(main)
