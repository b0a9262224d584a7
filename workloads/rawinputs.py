"""Raw inputs, turned into the numbers a model reads: texts into token ids, images into pixels.

    tokenizer = fit_tokenizer(texts, vocab_size=4000)     # JSON text of a subword tokenizer
    ids = encode_texts(["a review", ...], text)            # (n, max_length) int64, 0 = padding
    pixels = decode_images([png_bytes, ...], shape=(1, 28, 28))   # (n, 1 * 28 * 28) float32

Training (the worker's collate, normalization, evaluation) and serving all reach these through
`workloads.checkpoint.prepare_features`, so a served model reads a string or an image exactly
as it was trained to. The tokenizer is Hugging Face `tokenizers` BPE, fitted on the training
split when the data is prepared (nothing is downloaded) and stored with every checkpoint;
`text` is the input spec's text section (max_length, truncation, the tokenizer's JSON).
"""

from __future__ import annotations

import functools
import io

import numpy as np

PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1: the models treat token 0 as padding
TRUNCATION = ("right", "left")  # which end of a text too long for max_length is cut off


# ---------------------------------------------------------------------- text


def fit_tokenizer(texts, *, vocab_size: int) -> str:
    """A BPE tokenizer (NFKC, lowercase, split on whitespace and punctuation) fitted on
    `texts`, as JSON text. Deterministic for the same texts in the same order."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, UNK], show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer.to_str()


@functools.lru_cache(maxsize=8)
def _tokenizer(tokenizer_json: str):
    # Parsed once per process and tokenizer: every batch of training and serving reuses it.
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json)


def encode_texts(texts, text: dict) -> np.ndarray:
    """Strings -> (n, max_length) int64 token ids, padded with 0 at the end and truncated at
    `text["truncation"]` ("right" keeps the beginning of a long text, "left" its end)."""
    if not text.get("tokenizer"):
        raise ValueError("this model's tokenizer was not loaded with it (tokenizer.json)")
    length = int(text["max_length"])
    texts = [value if isinstance(value, str) else "" for value in texts]  # a null is no text
    encodings = _tokenizer(text["tokenizer"]).encode_batch(texts, add_special_tokens=False)
    rows = np.zeros((len(encodings), length), dtype=np.int64)
    for row, encoding in zip(rows, encodings, strict=True):
        ids = encoding.ids[-length:] if text.get("truncation") == "left" else encoding.ids[:length]
        row[: len(ids)] = ids
    return rows


def text_problem(value) -> str | None:
    """Why `value` cannot be tokenized (a client's instance), or None when it can."""
    if not isinstance(value, str):
        return "not a string"
    if not value.strip():
        return "empty"
    try:
        value.encode("utf-8")  # a lone surrogate from JSON's \ud800 is no text a tokenizer takes
    except UnicodeEncodeError:
        return "not valid Unicode text (it holds a lone surrogate)"
    return None


# ---------------------------------------------------------------------- images


def image_shape(data: bytes) -> tuple[int, int, int]:
    """(channels, height, width) of an encoded PNG/JPEG: 1 for grayscale, else 3 (RGB)."""
    image = _open(data)
    return (1 if image.mode in ("1", "L", "I", "I;16", "F") else 3), image.height, image.width


def decode_image(data: bytes, shape) -> np.ndarray:
    """One encoded PNG/JPEG -> flat float32 pixels of `shape` (C, H, W), values 0-255 as
    stored; ValueError saying what is wrong when it is not an image of that size."""
    channels, height, width = shape
    image = _open(data)
    if (image.height, image.width) != (height, width):  # checked before decoding the pixels
        raise ValueError(
            f"is {image.width}x{image.height} pixels; expected {width}x{height} (width x height)"
        )
    try:
        pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32)
    except Exception:  # found only while decoding: OSError, SyntaxError, zlib.error, EOFError
        raise ValueError("is a damaged PNG or JPEG image (its pixels do not decode)") from None
    pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)  # HWC -> CHW
    return pixels.reshape(-1)


def decode_images(values, shape) -> np.ndarray:
    """Encoded images, or fixed-shape arrays (nested lists), -> (n, prod(shape)) float32."""
    size = int(np.prod(shape))
    rows = np.empty((len(values), size), dtype=np.float32)
    for index, value in enumerate(values):
        if isinstance(value, bytes | bytearray | memoryview):
            rows[index] = decode_image(bytes(value), shape)
            continue
        array = np.asarray(value.tolist() if hasattr(value, "tolist") else value, np.float32)
        if array.size != size:
            raise ValueError(f"an image array has shape {list(array.shape)}; expected {shape}")
        rows[index] = array.reshape(-1)
    return rows


def _open(data: bytes):
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
    except Exception:  # UnidentifiedImageError, DecompressionBombError, SyntaxError, ...
        raise ValueError("is not a PNG or JPEG image") from None
    if image.format not in ("PNG", "JPEG"):
        raise ValueError(f"is a {image.format} image; expected PNG or JPEG")
    return image
