"""The model registry's contract, run on every storage backend.

tests/unit/test_registry.py runs it on a local directory, tests/integration/test_registry_s3.py
on a real SeaweedFS: each imports every test below and supplies the `storage` fixture from its
own tier's conftest. Checkpoints are a few fake bytes: the registry never reads the weights.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from alias_race import PromoterProcesses

from cluster.errors import ConfigError, ConflictError, NotFoundError, RaylaneError, run_cli
from cluster.registry import MAX_HISTORY, ModelRef, Registry
from cluster.storage import Storage
from raylane.models import main
from workloads.checkpoint import open_registry


@pytest.fixture
def registry(storage) -> Registry:
    return open_registry(storage)


def make_checkpoint(path, accuracy: float = 0.9):
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.safetensors").write_bytes(b"fake-weights-" + str(accuracy).encode())
    (path / "meta.json").write_text(json.dumps({"metrics": {"val_accuracy": accuracy}}))
    return path


def register_many(registry, tmp_path, name: str, count: int) -> list[int]:
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    return [registry.register(name, checkpoint, lineage={"trial": i}) for i in range(count)]


# ---------------------------------------------------------------------- versions


def test_register_numbers_versions_and_keeps_files_and_lineage(registry, tmp_path):
    first = make_checkpoint(tmp_path / "a", accuracy=0.8)
    (first / "train_state.pt").write_bytes(b"state")
    assert registry.register("digits", first, lineage={"sweep": "s1", "trial": "t1"}) == 1
    assert registry.register("digits", make_checkpoint(tmp_path / "b"), lineage={}) == 2

    assert registry.models() == ["digits"]
    assert registry.versions("digits") == [1, 2]
    info = registry.describe("digits", 1)
    assert info["meta"] == {"metrics": {"val_accuracy": 0.8}}
    assert info["lineage"] == {"sweep": "s1", "trial": "t1"}
    assert info["uri"] == registry.storage.uri_for("registry/digits/versions/1")

    copy = registry.download("digits", 1, tmp_path / "copy")
    for name in ("model.safetensors", "meta.json", "train_state.pt"):
        assert (copy / name).read_bytes() == (first / name).read_bytes()


def test_concurrent_registrations_get_distinct_numbers(registry, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    with ThreadPoolExecutor(6) as pool:
        numbers = list(pool.map(lambda i: registry.register("m", checkpoint, lineage={}), range(6)))
    assert sorted(numbers) == [1, 2, 3, 4, 5, 6]


def test_half_written_version_is_invisible_and_its_number_never_reused(registry, tmp_path):
    register_many(registry, tmp_path, "digits", 1)
    # A registration that died after claiming 2 and uploading the weights, before meta.json.
    registry.storage.put_if_absent("registry/digits/versions/2/lineage.json", b"{}")
    registry.storage.write_bytes("registry/digits/versions/2/model.safetensors", b"partial")

    assert registry.versions("digits") == [1]
    assert registry.resolve("digits") == ("digits", 1)
    with pytest.raises(NotFoundError, match="has no version 2; versions: 1"):
        registry.resolve("digits:2")
    assert register_many(registry, tmp_path, "digits", 1) == [3]
    assert registry.versions("digits") == [1, 3]


def test_register_from_another_storage(registry, tmp_path):
    source = Storage(str(tmp_path / "elsewhere"))
    source.upload_dir(make_checkpoint(tmp_path / "trial", accuracy=0.7), "sweeps/s/trial_3/ckpt")
    version = registry.register_from("digits", source, "sweeps/s/trial_3/ckpt", lineage={"t": 3})
    assert registry.describe("digits", version)["meta"]["metrics"] == {"val_accuracy": 0.7}
    # Re-registering a registry version keeps the new lineage, not the copied lineage.json.
    again = registry.register_from(
        "copy", registry.storage, registry.version_key("digits", version), lineage={"from": 1}
    )
    assert registry.describe("copy", again)["lineage"] == {"from": 1}


def test_a_directory_without_meta_json_is_refused_before_claiming(registry, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"w")
    with pytest.raises(ConfigError, match="lacks meta.json"):
        registry.register("digits", tmp_path / "bad", lineage={})
    assert registry.models() == []


# ---------------------------------------------------------------------- resolve and errors


def test_resolve_all_three_forms(registry, tmp_path):
    register_many(registry, tmp_path, "digits", 3)
    registry.promote("digits", "production", 2)
    assert registry.resolve("digits") == ("digits", 3)
    assert registry.resolve("digits:1") == ("digits", 1)
    assert registry.resolve("digits@production") == ("digits", 2)
    assert registry.resolve(ModelRef("digits", alias="production")) == ("digits", 2)


def test_errors_list_what_exists(registry, tmp_path):
    register_many(registry, tmp_path, "digits", 4)
    register_many(registry, tmp_path, "text", 1)
    registry.promote("digits", "production", 3)
    registry.promote("digits", "staging", 4)

    with pytest.raises(NotFoundError, match="no model 'tabular'.*registered models: digits, text"):
        registry.resolve("tabular@production")
    with pytest.raises(NotFoundError, match=r"no version 9; versions: 1-4 \(latest 4\)"):
        registry.resolve("digits:9")
    with pytest.raises(NotFoundError, match="no alias 'prod'; aliases: production -> 3, staging"):
        registry.resolve("digits@prod")
    with pytest.raises(NotFoundError, match="no version 7"):
        registry.promote("digits", "production", 7)
    with pytest.raises(NotFoundError, match="none is registered yet"):
        open_registry(registry.storage.child("empty")).versions("digits")


# ---------------------------------------------------------------------- aliases


def test_promote_and_rollback_keep_history(registry, tmp_path):
    register_many(registry, tmp_path, "digits", 3)
    record = registry.promote("digits", "production", 1, expected=None)
    assert record["version"] == 1 and record["previous"] == []
    assert "@" in record["updated_by"] and record["updated_at"].startswith("20")
    registry.promote("digits", "production", 2, expected=1)
    assert registry.promote("digits", "production", 3)["previous"] == [1, 2]
    assert registry.aliases("digits") == {"production": 3}

    assert registry.rollback("digits", "production")["version"] == 2
    record = registry.rollback("digits", "production")
    assert (record["version"], record["previous"]) == (1, [])
    assert registry.resolve("digits@production") == ("digits", 1)
    with pytest.raises(RaylaneError, match="no earlier version to roll back to"):
        registry.rollback("digits", "production")


def test_promote_with_a_stale_expectation_conflicts(registry, tmp_path):
    register_many(registry, tmp_path, "digits", 3)
    registry.promote("digits", "production", 3, expected=None)
    with pytest.raises(ConflictError, match=r"already exists \(version 3\), expected it not to"):
        registry.promote("digits", "production", 1, expected=None)
    with pytest.raises(
        ConflictError,
        match=r"alias 'production' of 'digits' moved to version 3 meanwhile \(expected 2\)",
    ):
        registry.promote("digits", "production", 1, expected=2)
    with pytest.raises(
        ConflictError, match=r"'staging' .* does not exist \(expected it at version 1"
    ):
        registry.promote("digits", "staging", 2, expected=1)
    assert registry.resolve("digits@production") == ("digits", 3)
    assert registry.aliases("digits") == {"production": 3}


def test_racing_promoters_have_one_winner_and_readers_never_see_a_torn_alias(registry, tmp_path):
    threads, rounds = 8, 5
    versions = register_many(registry, tmp_path, "digits", threads + 1)
    registry.promote("digits", "production", versions[0], expected=None)
    done, seen, reader_errors = threading.Event(), set(), []

    def read_continuously():
        while not done.is_set():
            try:
                seen.add(registry.resolve("digits@production")[1])
            except Exception as error:  # a torn record raises; collect it for the assert below
                reader_errors.append(error)

    reader = threading.Thread(target=read_continuously)
    reader.start()
    try:
        for _ in range(rounds):
            start = registry.resolve("digits@production")[1]
            candidates = [v for v in versions if v != start]  # 8 different versions
            winners, conflicts = promote_at_once(registry, candidates, expected=start)
            assert len(winners) == 1, f"round from {start}: winners {winners}"
            assert len(conflicts) == threads - 1
            assert all("re-read it and try again" in str(c) for c in conflicts)
            assert registry.resolve("digits@production")[1] == winners[0]
    finally:
        done.set()
        reader.join()
    assert reader_errors == []
    assert seen and seen <= set(versions)


def promote_at_once(registry, candidates, *, expected):
    """Promote each candidate from its own thread, all released together by a barrier."""
    barrier = threading.Barrier(len(candidates))

    def promote(version):
        barrier.wait()
        try:
            registry.promote("digits", "production", version, expected=expected)
            return version
        except ConflictError as error:
            return error

    with ThreadPoolExecutor(len(candidates)) as pool:
        results = list(pool.map(promote, candidates))
    winners = [r for r in results if isinstance(r, int)]
    return winners, [r for r in results if isinstance(r, ConflictError)]


def test_racing_promoter_processes_have_one_winner_in_every_round(registry, tmp_path):
    """The same race between OS processes, each with its own storage client, over many rounds:
    the guarantee must come from storage (S3's conditional writes, a file lock and rename
    locally), not from anything the processes share."""
    processes, rounds = 6, 20
    versions = register_many(registry, tmp_path, "digits", processes + 1)
    registry.promote("digits", "production", versions[0], expected=None)
    starts = []
    with PromoterProcesses(processes) as promoters:
        for round_ in range(rounds):
            start = registry.resolve("digits@production")[1]
            starts.append(start)
            candidates = [v for v in versions if v != start]
            winners, conflicts = promoters.promote_at_once(registry, candidates, expected=start)
            assert len(winners) == 1, f"round {round_} from version {start}: winners {winners}"
            assert len(conflicts) == processes - 1
            assert all("re-read it and try again" in message for message in conflicts)
            assert registry.resolve("digits@production")[1] == winners[0]
    # The history holds each round's starting version once: every round moved it exactly once.
    record = registry.storage.read_json("registry/digits/aliases/production.json")
    assert record["previous"] == starts[-MAX_HISTORY:]


# ---------------------------------------------------------------------- CLI


def cli(storage, *args):
    return main(["--storage", storage.uri, *args])


def test_cli_list_show_promote_rollback(registry, tmp_path, capsys):
    assert cli(registry.storage, "list") == 0
    assert "no models registered" in capsys.readouterr().out
    register_many(registry, tmp_path, "digits", 3)
    register_many(registry, tmp_path, "text-transformer", 1)

    assert cli(registry.storage, "promote", "digits:2", "--alias", "staging") == 0
    assert capsys.readouterr().out.strip() == "digits@staging -> version 2 (new alias)"
    cli(registry.storage, "promote", "digits@staging", "--alias", "production")
    cli(registry.storage, "promote", "digits:3", "--alias", "production")
    assert "digits@production -> version 3 (was 2)" in capsys.readouterr().out

    cli(registry.storage, "list")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["MODEL", "VERSIONS", "LATEST", "ALIASES"]
    assert lines[1].split() == [
        "digits",
        "1-3",
        "3",
        "production",
        "->",
        "3,",
        "staging",
        "->",
        "2",
    ]
    assert lines[2].split() == ["text-transformer", "1", "1", "-"]
    assert lines[0].index("VERSIONS") == lines[1].index("1-3")  # aligned columns

    cli(registry.storage, "show", "digits@production")
    out = capsys.readouterr().out
    assert out.startswith("digits:3  ") and "aliases: production" in out
    assert "val_accuracy" in out and "0.9" in out and "trial" in out

    assert cli(registry.storage, "rollback", "digits", "--alias", "production") == 0
    assert capsys.readouterr().out.strip() == "digits@production -> version 2 (was 3)"


@pytest.mark.parametrize(
    "args, message",
    [
        (["show", "digits:9"], "model 'digits' has no version 9; versions: 1"),
        (["show", "Digits"], "malformed model reference 'Digits'"),
        (["promote", "digits", "--alias", "production"], "say which version to promote"),
        (["rollback", "digits", "--alias", "production"], "no earlier version to roll back to"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(registry, tmp_path, capsys, args, message):
    register_many(registry, tmp_path, "digits", 1)
    registry.promote("digits", "production", 1)
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ["--storage", registry.storage.uri, *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err
