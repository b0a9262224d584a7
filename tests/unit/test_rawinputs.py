"""Text and image inputs without Ray: the tokenizer's fit, storage and reuse, user Parquet of
texts and images, and requests of strings and base64 PNGs.

    pytest tests/unit/test_rawinputs.py
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import digits_checkpoint, digits_data, png_base64, tabular_checkpoint, text_checkpoint

from cluster.errors import ConfigError, DataError
from serve.predictor import Predictor, table_instances
from serve.schemas import RequestError
from workloads.checkpoint import input_spec_of, prepare_features, read_meta
from workloads.config import load_job_config
from workloads.data import inspect_parquet, read_split, with_text_settings
from workloads.datasets import DATASETS, NEWS_TOPICS
from workloads.rawinputs import encode_texts, fit_tokenizer
from workloads.trust import CodePolicy


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Predictor:
    directory = text_checkpoint(tmp_path_factory.mktemp("text") / "checkpoint")
    return Predictor.from_checkpoint(
        directory, name="news", version=1, policy=CodePolicy.CONFIGURED
    )


@pytest.fixture(scope="module")
def image_model(tmp_path_factory) -> Predictor:
    directory = digits_checkpoint(
        tmp_path_factory.mktemp("cnn") / "c", seed=1, steps=2, family="cnn"
    )
    return Predictor.from_checkpoint(directory, name="dig", version=1, policy=CodePolicy.CONFIGURED)


# ---------------------------------------------------------------------- the tokenizer


def test_the_tokenizer_splits_unseen_words_into_subwords_it_learned():
    texts, _ = DATASETS["synthetic-news"].generate(rows=300, seed=0)
    text = {
        "max_length": 6,
        "truncation": "right",
        "tokenizer": fit_tokenizer(texts, vocab_size=200),
    }
    seen, unseen = encode_texts(["Research team", "RESEARCHERS teamwork"], text)
    assert seen[0] > 1 and seen[1] > 1 and (seen[2:] == 0).all()  # known words, then padding
    assert (unseen[:4] > 1).sum() >= 3  # an unseen word is pieces, not one [UNK] (id 1)


def test_truncation_keeps_the_beginning_or_the_end_of_a_long_text():
    tokenizer = fit_tokenizer(["one two three four five six"] * 20, vocab_size=50)
    words = "one two three four five six"
    right = encode_texts([words], {"max_length": 2, "truncation": "right", "tokenizer": tokenizer})
    left = encode_texts([words], {"max_length": 2, "truncation": "left", "tokenizer": tokenizer})
    full = encode_texts([words], {"max_length": 6, "truncation": "right", "tokenizer": tokenizer})
    assert right.tolist() == [full[0, :2].tolist()] and left.tolist() == [full[0, -2:].tolist()]


def test_the_tokenizer_is_stored_beside_the_weights_and_named_in_meta(tmp_path):
    directory = text_checkpoint(tmp_path / "c", max_length=10)
    on_disk = json.loads((directory / "meta.json").read_text())
    assert on_disk["input"]["text"] == {
        "max_length": 10, "truncation": "right", "tokenizer_file": "tokenizer.json"
    }  # fmt: skip
    assert json.loads((directory / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    spec = input_spec_of(read_meta(directory))  # read back: the same tokenizer encodes
    ids = prepare_features(np.array(["Chef roasted the sauce"], dtype=object), spec)
    assert ids.shape == (1, 10) and (ids[0, :3] > 1).all()

    (directory / "tokenizer.json").unlink()
    with pytest.raises(DataError, match="tokenizer.json is missing .* meta.json names it"):
        read_meta(directory)


def test_synthetic_news_labels_are_the_topic_its_words_are_from():
    texts, labels = DATASETS["synthetic-news"].generate(rows=500, seed=3)
    vocabularies = [set(words.split()) for words in NEWS_TOPICS.values()]
    counts = [[len(set(t.lower().strip(".").split()) & v) for v in vocabularies] for t in texts]
    assert np.mean(np.argmax(counts, axis=1) == labels) > 0.9


# ---------------------------------------------------------------------- user Parquet


def write_parquet(path, columns: dict) -> str:
    pq.write_table(pa.table(columns), path)
    return str(path)


def parquet_config(path: str, column: str, *sets: str):
    overrides = ["data.dataset=parquet", f"data.path={path}", f"data.feature_columns=[{column}]"]
    return load_job_config("debug", [*overrides, "data.label_column=y", *sets]).data


def test_a_string_column_is_text_of_max_length_tokens(tmp_path):
    texts, labels = DATASETS["synthetic-news"].generate(rows=200, seed=0)
    path = write_parquet(tmp_path / "t.parquet", {"body": list(texts), "y": labels})
    config = parquet_config(path, "body", "data.text.max_length=16", "data.text.truncation=left")
    info = with_text_settings(inspect_parquet(config), config.text)
    assert (info.kind, info.feature_shape, info.feature_dtype) == ("text", [16], "int64")
    assert info.text == {"max_length": 16, "truncation": "left"}
    train, _ = read_split(path, info.input_spec(), validation_fraction=0.2, split="train")
    again, _ = read_split(path, info.input_spec(), validation_fraction=0.2, split="train")
    assert 120 < len(train) < 200 and list(train) == list(again)  # raw strings, split by hash
    assert isinstance(train[0], str)


def test_a_text_column_beside_other_columns_is_refused(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", {"body": ["a", "b"], "n": [1, 2], "y": [0, 1]})
    with pytest.raises(
        DataError,
        match=r"'body' \(text\) are not numbers.*text or image column the only feature column",
    ):
        inspect_parquet(parquet_config(path, "body, n"))


def png_bytes(pixels) -> bytes:
    import base64

    return base64.b64decode(png_base64(pixels))


def test_png_bytes_and_nested_arrays_are_images_with_their_shape(tmp_path):
    features, labels = digits_data()
    images = features[:60].reshape(-1, 8, 8)
    pngs = write_parquet(
        tmp_path / "png.parquet", {"img": [png_bytes(i) for i in images], "y": labels[:60]}
    )
    arrays = write_parquet(
        tmp_path / "arr.parquet", {"img": [i[None].tolist() for i in images], "y": labels[:60]}
    )
    for path in (pngs, arrays):
        info = inspect_parquet(parquet_config(path, "img"))
        assert (info.kind, info.feature_shape) == ("image", [1, 8, 8])
        rows, _ = read_split(path, info.input_spec(), validation_fraction=0.2, split="all")
        np.testing.assert_array_equal(prepare_features(rows, info.input_spec())[:, 0], images)


def test_images_of_mixed_sizes_are_refused(tmp_path):
    pngs = [png_bytes(np.zeros((8, 8))), png_bytes(np.zeros((9, 8)))]
    path = write_parquet(tmp_path / "mixed.parquet", {"img": pngs, "y": [0, 1]})
    with pytest.raises(DataError, match="'img' mixes image shapes .*resize them"):
        inspect_parquet(parquet_config(path, "img"))


# ---------------------------------------------------------------------- requests


def test_served_strings_predict_what_the_model_predicts_in_process(text_model):
    texts = ["The striker scored a late goal", "Investors sold shares as stocks fell"]
    served = text_model.predict_instances(texts, max_instances=8)
    direct = text_model.predict(np.array(texts, dtype=object))  # the path training uses
    np.testing.assert_allclose(served["probabilities"], direct.probabilities, rtol=1e-6)
    described = text_model.describe()["input"]
    assert described["kind"] == "text" and described["text"]["max_length"] == 12
    assert "string" in described["accepts"]


@pytest.mark.parametrize(
    ("instance", "says"),
    [
        (12, "instances[1] is the number 12; expected a non-empty string"),
        ([1, 2], "instances[1] is a list; expected a non-empty string"),
        ("  ", "instances[1] is empty; expected"),
        ("a \ud800 b", "instances[1] is not valid Unicode text"),
    ],
)
def test_a_text_model_refuses_what_is_not_text(text_model, instance, says):
    with pytest.raises(RequestError, match=r"^" + says.replace("[", r"\[")) as error:
        text_model.predict_instances(["fine", instance], max_instances=8)
    assert error.value.status_code == 422


def test_a_base64_png_predicts_as_its_pixels_do(image_model):
    features, _ = digits_data()
    images = features[:3].reshape(-1, 8, 8)
    as_png = [png_base64(i) for i in images]
    as_png[1] = "data:image/png;base64," + as_png[1]
    served = image_model.predict_instances(as_png, max_instances=8)
    as_lists = image_model.predict_instances(images.tolist(), max_instances=8)
    assert served == as_lists


def test_raylane_predict_reads_a_parquet_of_png_bytes(image_model):
    features, labels = digits_data()
    images = features[:4].reshape(-1, 8, 8)
    table = pa.table({"features": [png_bytes(i) for i in images], "label": labels[:4]})
    instances = table_instances(table, image_model.schema)
    as_lists = image_model.predict_instances(images.tolist(), max_instances=8)
    assert image_model.predict_instances(instances, max_instances=8) == as_lists


@pytest.mark.parametrize(
    ("instance", "says"),
    [
        ("not base64!", "instances[0] is a string but not valid base64"),
        ("aGVsbG8=", "instances[0] is not a PNG or JPEG image"),
        (png_base64(np.zeros((8, 9))), "instances[0] is 9x8 pixels; expected 8x8"),
        ("a news text", "instances[0] is a string but not valid base64"),
    ],
)
def test_an_image_model_refuses_bad_images_with_a_4xx(image_model, instance, says):
    with pytest.raises(RequestError, match=r"^" + says.replace("[", r"\[")) as error:
        image_model.predict_instances([instance], max_instances=8)
    assert error.value.status_code == 422
    assert "base64 PNG/JPEG of 8x8 pixels (grayscale)" in str(error.value)


def test_a_numeric_model_refuses_a_string(tmp_path):
    directory = tabular_checkpoint(tmp_path / "t", ["a", "b"], mean=[0, 0], std=[1, 1])
    predictor = Predictor.from_checkpoint(
        directory, name="t", version=1, policy=CodePolicy.CONFIGURED
    )
    with pytest.raises(RequestError, match=r'instances\[0\] is the string "some text"; expected'):
        predictor.predict_instances(["some text"], max_instances=8)


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("data.text.truncation=middle", r"data\.text\.truncation: .*'right' or 'left'"),
        ("data.text.max_length=0", r"data\.text\.max_length: .*greater than 0"),
    ],
)
def test_bad_text_settings_name_the_field(setting, says):
    with pytest.raises(ConfigError, match=says):
        load_job_config("news-lstm", [setting])
