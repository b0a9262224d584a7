"""Fine-tuning: a training run that starts from a registered version's weights.

    raylane train --config my-task.yaml --init-from digits@production --register my-task
    raylane train --config my-task.yaml --set train.init_from=digits:3 \\
        --set 'train.freeze=[net.1.*]' --set train.pretrained_lr_scale=0.1

`train.init_from` is a config field, so a sweep config can set it too. The training driver
(workloads/train.py) calls `plan` once: it pins the reference to one version (NAME:VERSION, so
an alias moved mid-run changes nothing), checks that the parent's input schema and architecture
fit the new config, and hands the workers a Recipe (workloads/recipe.py) that loads the
parent's weights before the model is made distributed. When the class count differs, the
layers whose shape depends on it (the classification head) keep their fresh initialisation,
and the run says which. The parent goes into every checkpoint's meta and so into the lineage
of the version registered from it.

Pruning and distillation (workloads/prune.py, distill.py) also start from a registered version;
`resolve_parent`, `check_input`, `add_derived_args` and `train_and_register` serve all three.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from cluster.config import add_common_args
from cluster.errors import ConfigError
from cluster.storage import Storage
from workloads.checkpoint import InputSpec, input_spec_of, meta_key, open_registry
from workloads.config import JobConfig
from workloads.models import build_model, count_parameters
from workloads.recipe import Recipe
from workloads.trust import CodePolicy

# What a model's input is; normalization is not among them (each run standardizes its own data).
INPUT_FIELDS = ("shape", "dtype", "feature_columns", "vocab_size")


@dataclass(frozen=True)
class Parent:
    """A registered version that a run starts from (or learns from)."""

    ref: str  # NAME:VERSION
    key: str  # storage key of its checkpoint
    meta: dict

    @property
    def num_classes(self) -> int:
        return len(self.meta["input"]["class_names"])


def resolve_parent(storage: Storage, ref: str) -> Parent:
    """`ref` (NAME, NAME@ALIAS or NAME:VERSION) -> the version it names now, or NotFoundError."""
    registry = open_registry(storage)
    name, version = registry.resolve(ref)
    key = registry.version_key(name, version)
    return Parent(f"{name}:{version}", key, storage.read_json(meta_key(key)))


def check_code(parent: Parent, storage: Storage) -> None:
    """A parent with a custom class is code that the registry names, not this job's config: it
    runs here and on the workers only if the operator allows it (workloads/trust.py)."""
    spec = parent.meta.get("model") or {}
    if spec.get("family") == "custom":
        CodePolicy.for_loading(storage_root=storage.local_root).check(spec.get("class"))


def check_input(
    parent: Parent, data: InputSpec, *, option: str, fields: tuple[str, ...] = INPUT_FIELDS
) -> None:
    """ConfigError naming each input field where the parent and the run's data differ."""
    theirs = input_spec_of(parent.meta)
    differences = [
        f"input.{name}: {parent.ref} has {_plain(getattr(theirs, name))}, "
        f"the data has {_plain(getattr(data, name))}"
        for name in fields
        if getattr(theirs, name) != getattr(data, name)
    ]
    if differences:
        raise ConfigError(
            f"{option}: {parent.ref} takes other inputs than this run's data "
            f"({'; '.join(differences)}); use data with the same features or another model"
        )


def head_layers(parent: Parent, spec: dict) -> tuple[str, ...]:
    """The layers to re-initialise (those sized by the class count, when it changed); a
    ConfigError naming the mismatched layers and model fields when the architectures differ."""
    theirs = parent.meta["model"]
    if (theirs.get("family"), theirs.get("class")) != (spec["family"], spec.get("class")):
        raise ConfigError(
            f"train.init_from: {parent.ref} is a {theirs.get('class') or theirs.get('family')} "
            f"model, this config builds {spec.get('class') or spec['family']}; set model.family "
            "(and its sizes) to the parent's"
        )
    classes = theirs["kwargs"].get("num_classes", parent.num_classes)
    ours = _shapes(spec)
    like_parent = _shapes({**spec, "kwargs": {**spec["kwargs"], "num_classes": classes}})
    parents = _shapes(theirs)
    mismatched = [k for k in {**like_parent, **parents} if like_parent.get(k) != parents.get(k)]
    if mismatched:
        layers = ", ".join(
            f"{k} ({parent.ref} {parents.get(k, 'absent')}, config {like_parent.get(k, 'absent')})"
            for k in mismatched[:4]
        )
        raise ConfigError(
            f"train.init_from: {parent.ref} does not fit this model: layers {layers}"
            f"{_fields(theirs['kwargs'], spec['kwargs'])}; set them as the parent has them"
        )
    return tuple(k for k in ours if ours[k] != like_parent[k])


def _shapes(spec: dict) -> dict[str, list[int]]:
    # The parent's class equals the config's (checked above), which the operator named.
    model = build_model(spec, policy=CodePolicy.CONFIGURED)
    return {name: list(tensor.shape) for name, tensor in model.state_dict().items()}


def _fields(theirs: dict, ours: dict) -> str:
    skip = {"num_classes", "dropout"}
    names = sorted(
        k for k in set(theirs) | set(ours) if k not in skip and theirs.get(k) != ours.get(k)
    )
    if not names:
        return ""
    return "; fields " + ", ".join(f"model.{k} ({theirs.get(k)} vs {ours.get(k)})" for k in names)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def plan(config: JobConfig, spec: dict, data: InputSpec, storage: Storage, *,
         verbose: bool = True) -> Recipe:  # fmt: skip
    """The recipe of a run with `train.init_from` set: checked here, on the driver."""
    parent = resolve_parent(storage, config.train.init_from)
    check_input(parent, data, option="train.init_from")
    reinit = head_layers(parent, spec)
    if verbose:
        fresh = (
            f"; the class count changed ({parent.num_classes} -> {len(data.class_names)}), "
            f"so these layers start afresh: {', '.join(reinit)}"
            if reinit
            else ""
        )
        print(f"[{config.name}] fine-tuning from {parent.ref}{fresh}", flush=True)
    settings = {"init_from": config.train.init_from, "freeze": list(config.train.freeze),
                "pretrained_lr_scale": config.train.pretrained_lr_scale, "reinit": list(reinit)}  # fmt: skip
    return Recipe(
        init_key=parent.key,
        reinit=reinit,
        lineage={"parent": parent.ref, "method": "finetune", "settings": settings},
    )


# ---------------------------------------------------------------------- optimize commands


def add_derived_args(parser: argparse.ArgumentParser) -> None:
    """The arguments prune and distill share with train: storage, overrides, the register."""
    add_common_args(parser)
    parser.add_argument("--name", help="run name (default: derived from the parent)")
    parser.add_argument("--epochs", type=int, help="training epochs (train.epochs)")
    parser.add_argument("--register", metavar="NAME", required=True,
                        help="register the result as a new version of NAME")  # fmt: skip
    parser.add_argument("--promote", metavar="ALIAS", help="then point ALIAS at that version")


def train_and_register(config: JobConfig, storage: Storage, recipe: Recipe,
                       args: argparse.Namespace) -> dict:  # fmt: skip
    """Run the recipe with Ray Train, then register the best checkpoint (its meta carries the
    lineage). A failed run raises before anything is registered."""
    from workloads.train import register_run, run_training

    summary = run_training(config, storage, address=args.address, recipe=recipe)
    record = register_run(storage, summary, args.register, args.promote)
    parent = resolve_parent(storage, recipe.lineage["parent"])
    child = resolve_parent(storage, f"{record['name']}:{record['version']}")
    sizes = [count_parameters(build_model(p.meta["model"], policy=CodePolicy.CONFIGURED))
             for p in (parent, child)]  # fmt: skip
    print(f"parameters: {parent.ref} {sizes[0]:,} -> {child.ref} {sizes[1]:,} "
          f"({sizes[1] / sizes[0]:.2f}x)")  # fmt: skip
    return record
