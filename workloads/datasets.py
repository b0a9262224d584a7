"""The embedded datasets, in one table: name -> how to generate it and what it is.

    dataset = DATASETS["digits"]
    features, labels = dataset.generate(rows=20_000, seed=0)

Adding a dataset is one `EmbeddedDataset(...)` entry below: `raylane data prepare NAME`, the
`data.dataset` config field and its error message all read this table. Everything here is
made on the machine (scikit-learn's bundled sets, or generated): nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

TEXT_VOCAB, TEXT_LEN, TEXT_CLASSES = 64, 32, 4


@dataclass(frozen=True)
class EmbeddedDataset:
    """One embedded dataset: its facts and a generator of (features, labels)."""

    name: str
    kind: str  # "image" | "tabular" | "tokens" | "text": how the features are read and served
    description: str
    class_names: tuple[str, ...]
    make: Callable[[int, int], tuple[np.ndarray, np.ndarray]]  # (rows, seed) -> arrays
    sized: bool = False  # True: `rows` sets its size (synthetic); False: fixed size
    vocab_size: int | None = None

    def generate(self, *, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        features, labels = self.make(rows, seed)
        return features, np.asarray(labels, dtype=np.int64)

    def key(self, rows: int) -> str:
        """Storage key; sized sets carry their size in the name."""
        return f"datasets/{self.name}-{rows}" if self.sized else f"datasets/{self.name}"


def _digits(rows: int, seed: int):
    from sklearn.datasets import load_digits

    raw = load_digits()
    return raw.images.astype(np.float32)[:, None, :, :], raw.target  # N, 1, 8, 8


def _breast_cancer(rows: int, seed: int):
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer()
    return raw.data.astype(np.float32), raw.target


def _synthetic_tabular(rows: int, seed: int):
    from sklearn.datasets import make_classification

    features, labels = make_classification(
        n_samples=rows, n_features=32, n_informative=16, n_redundant=4, n_classes=4,
        class_sep=1.5, random_state=seed,
    )  # fmt: skip
    return features.astype(np.float32), labels


def _synthetic_text(rows: int, seed: int):
    """Token sequences whose class is the keyword that appears most often.

    Tokens 1..4 are the class keywords, 5.. are filler, 0 is padding. Each sequence holds its
    class keyword 3-5 times and one other keyword 1-2 times at random positions, then is
    padded to a random length: learnable by attention or pooling, not by position alone.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, TEXT_CLASSES, size=rows)
    tokens = rng.integers(1 + TEXT_CLASSES, TEXT_VOCAB, size=(rows, TEXT_LEN))
    lengths = rng.integers(TEXT_LEN // 2, TEXT_LEN + 1, size=rows)
    for i in range(rows):
        positions = rng.permutation(lengths[i])
        own, other = rng.integers(3, 6), rng.integers(1, 3)
        distractor = (labels[i] + rng.integers(1, TEXT_CLASSES)) % TEXT_CLASSES
        tokens[i, positions[:own]] = 1 + labels[i]
        tokens[i, positions[own : own + other]] = 1 + distractor
        tokens[i, lengths[i] :] = 0
    return tokens.astype(np.int64), labels


NEWS_TOPICS = {
    "sports": "match team goal coach season league players scored striker tournament referee "
    "championship stadium playoff defender winning",
    "science": "research scientists experiment laboratory physics molecules telescope genome "
    "theory observed researchers quantum particles climate study discovered",
    "business": "market shares investors profits earnings company stocks quarterly revenue "
    "economy merger banking inflation trading analysts billion",
    "food": "recipe kitchen chef flavour baking dinner restaurant cooking sauce dessert "
    "ingredients roasted delicious spices menu tasting",
}
NEWS_FILLER = (
    "the a of and to in on for with was were is at by this that from after before new "
    "local yesterday today week report says said people many more about over their its"
)


def _synthetic_news(rows: int, seed: int):
    """Short English texts whose class is their topic: each holds 2-4 words of its own topic's
    vocabulary and at most one of another topic's, among common filler words in random order.
    Many topic words share stems (play, score, research), so subwords help a tokenizer."""
    rng = np.random.default_rng(seed)
    topics = [words.split() for words in NEWS_TOPICS.values()]
    labels = rng.integers(0, len(topics), size=rows)
    texts = np.empty(rows, dtype=object)
    for i, label in enumerate(labels):
        words = list(rng.choice(topics[label], size=rng.integers(2, 5)))
        if rng.random() < 0.5:
            other = (label + rng.integers(1, len(topics))) % len(topics)
            words.append(rng.choice(topics[other]))
        words += list(rng.choice(NEWS_FILLER.split(), size=rng.integers(4, 12)))
        texts[i] = " ".join(str(word) for word in rng.permutation(words)).capitalize() + "."
    return texts, labels


DATASETS: dict[str, EmbeddedDataset] = {
    d.name: d
    for d in (
        EmbeddedDataset(
            "digits", "image", "8x8 handwritten digits (scikit-learn, 1,797 images)",
            tuple(str(c) for c in range(10)), _digits,
        ),
        EmbeddedDataset(
            "breast-cancer", "tabular", "Wisconsin breast cancer (scikit-learn, 569 rows)",
            ("malignant", "benign"), _breast_cancer,
        ),
        EmbeddedDataset(
            "synthetic-tabular", "tabular", "4 classes over 32 features (data.rows rows)",
            tuple(f"class_{c}" for c in range(4)), _synthetic_tabular, sized=True,
        ),
        EmbeddedDataset(
            "synthetic-text", "tokens", "token sequences, class = most frequent keyword",
            tuple(f"topic_{c}" for c in range(TEXT_CLASSES)), _synthetic_text, sized=True,
            vocab_size=TEXT_VOCAB,
        ),
        EmbeddedDataset(
            "synthetic-news", "text", "English news snippets (strings), class = their topic",
            tuple(NEWS_TOPICS), _synthetic_news, sized=True,
        ),
    )
}  # fmt: skip
