"""Fine-tune only the top layers of a sentence encoder on one CV fold, lower layers cached.

A whole-encoder fine-tune of all-mpnet-base-v2 (110M parameters) does about one epoch in ten
minutes on 2 CPU cores. Training only the top ``--top-layers`` transformer layers (plus a linear
head, cross-entropy) lets the frozen lower part run **once**: its token states are cached after a
single pass over every text, and each epoch then costs only the top layers' forward and backward.
The same pass also yields the stock (frozen) sentence vectors, so one run gives both.

Needs the optional extra (its own virtualenv, never the locked one):
    pip install torch==2.13.0 sentence-transformers
Usage (from the repository root, data outside the repo):
    nice /work/venv-extra/bin/python bench/finetune_top_layers.py \
        --model /opt/models/all-mpnet-base-v2 --data ../shared/data/banking77/train.csv \
        --fold 0 --top-layers 2 --minutes 10 --out /tmp/mpnet-top2-fold0

Folds are bench/classifier_quality.py's (StratifiedKFold(folds, shuffle=True, random_state=0));
a stratified ``--val-fraction`` of the fold's training part is held out of fine-tuning for the
per-epoch check and for choosing a blend weight later. The fold's test part is scored once, at
the end. ``--out`` receives (one row per CSV row, CSV order):

- ``frozen.npy``: stock vectors (mean-pooled, L2-normalised), as bench/classifier_encode.py;
- ``tuned.npy``: the same from the fine-tuned top layers (fair only for this fold's test part);
- ``head_log_proba.npy``: the fine-tuned head's log-probabilities (labels in ``labels.json``);
- ``split.json``: the row indices of the fold's train, test, inner-train and inner-validation.

bench/blend_finetuned_head.py then scores CaseModel with those vectors and blended with the head.
The budget (``--minutes``) counts from the start, caching pass included.
"""

from __future__ import annotations

import argparse
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

from bench.finetune_encoder import (
    bucketed_batches,
    fold_split,
    lr_factor,
    mean_pool,
    read_rows,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="sentence-transformers folder")
    parser.add_argument("--data", type=Path, required=True, help="CSV with text and label columns")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="category")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--top-layers", type=int, default=2, help="layers trained (from the top)")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget, all in")
    parser.add_argument("--epochs", type=float, default=6.0, help="upper bound on epochs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-5, help="learning rate of the layers")
    parser.add_argument("--head-lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup", type=float, default=0.06, help="fraction of the schedule")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="folder for the arrays")
    parser.add_argument(
        "--final-refit",
        action="store_true",
        help="fine-tune on the whole training part (no inner hold-out) for the head's figures",
    )
    return parser.parse_args()


class TopLayers:
    """The top ``k`` layers of an MPNet- or BERT-style encoder, callable on cached token states.

    Contract: ``forward(states, mask)`` with ``states`` the hidden states entering layer
    ``n - k`` (padded, float32) and ``mask`` 1 for real tokens returns the encoder's last hidden
    state, identical (up to float rounding) to running the whole encoder; ``check`` proves it on
    a batch before any training.
    """

    def __init__(self, encoder: Any, k: int) -> None:
        self.encoder = encoder
        self.layers = encoder.encoder.layer[len(encoder.encoder.layer) - k :]
        self.mpnet = hasattr(encoder.encoder, "compute_position_bias")

    def forward(self, states: Any, mask: Any) -> Any:
        import torch

        additive = (1.0 - mask[:, None, None, :].to(states.dtype)) * torch.finfo(states.dtype).min
        hidden = states
        if self.mpnet:
            bias = self.encoder.encoder.compute_position_bias(hidden)
            for layer in self.layers:
                hidden = layer(hidden, additive, bias)[0]
        else:
            for layer in self.layers:
                hidden = layer(hidden, additive)[0]
        return hidden


def pad_states(states: list[Any]) -> tuple[Any, Any]:
    import torch

    width = max(s.shape[0] for s in states)
    out = torch.zeros((len(states), width, states[0].shape[1]), dtype=torch.float32)
    mask = torch.zeros((len(states), width), dtype=torch.long)
    for i, s in enumerate(states):
        out[i, : s.shape[0]] = s.float()
        mask[i, : s.shape[0]] = 1
    return out, mask


def cache_states(
    encoder: Any, tokenizer: Any, texts: list[str], k: int, max_len: int
) -> tuple[list[Any], np.ndarray, float]:
    """One frozen pass: token states entering the top ``k`` layers, and the stock vectors."""
    import torch

    seqs = tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]
    order = np.argsort([len(s) for s in seqs], kind="stable")
    states: list[Any] = [None] * len(texts)
    frozen = np.zeros((len(texts), int(encoder.config.hidden_size)), dtype=np.float32)
    n_layers = len(encoder.encoder.layer)
    top = TopLayers(encoder, k)
    worst = 0.0
    started = time.perf_counter()
    pad_id = int(tokenizer.pad_token_id)
    with torch.inference_mode():
        for b, lo in enumerate(range(0, len(order), 64)):
            idx = order[lo : lo + 64]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
                mask[row, : len(seqs[i])] = 1
            out = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            entering = out.hidden_states[n_layers - k]
            last = out.last_hidden_state
            if b % 20 == 0:  # the top layers, run alone on the cached states, must agree
                again = top.forward(entering, mask)
                diff = (again - last).abs() * mask[..., None]
                worst = max(worst, float(diff.max()))
            pooled = torch.nn.functional.normalize(mean_pool(last, mask), dim=-1)
            frozen[idx] = pooled.numpy()
            for row, i in enumerate(idx):
                states[i] = entering[row, : len(seqs[i])].to(torch.bfloat16).clone()
            if b % 25 == 0:
                done = lo + len(idx)
                rate = done / (time.perf_counter() - started)
                print(f"  cached {done}/{len(texts)} texts ({rate:.0f}/s)", flush=True)
    return states, frozen, worst


def run_top(top: TopLayers, states: list[Any], idx: list[int] | np.ndarray) -> Any:
    padded, mask = pad_states([states[i] for i in idx])
    return mean_pool(top.forward(padded, mask), mask)


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    import copy

    import torch
    from threadpoolctl import threadpool_limits
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    texts, labels = read_rows(args.data, args.text_column, args.label_column)
    names = sorted(set(labels))
    y = np.asarray([names.index(label) for label in labels])
    train_part, test, inner_train, inner_val = fold_split(
        labels, args.folds, args.fold, args.val_fraction, args.seed
    )
    fit_rows = train_part if args.final_refit else inner_train
    print(
        f"{len(texts)} rows, {len(names)} labels; fold {args.fold}/{args.folds}: train "
        f"{len(train_part)} (fine-tune {len(fit_rows)}, inner val {len(inner_val)}), "
        f"test {len(test)}",
        flush=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    encoder = AutoModel.from_pretrained(str(args.model)).eval()
    states, frozen, worst = cache_states(
        encoder, tokenizer, texts, args.top_layers, args.max_seq_length
    )
    cached_at = time.perf_counter() - started
    print(
        f"cached {len(texts)} texts in {cached_at:.1f}s (incl. loading); top layers alone vs "
        f"whole encoder: max |diff| {worst:.2e}",
        flush=True,
    )
    if worst > 1e-3:
        raise SystemExit("the top layers on cached states do not reproduce the encoder")

    # The trained copy: the encoder's own top layers stay stock for the frozen vectors.
    trained = copy.deepcopy(encoder)
    for p in trained.parameters():
        p.requires_grad_(False)
    top = TopLayers(trained, args.top_layers)
    layer_params = [p for layer in top.layers for p in layer.parameters()]
    for p in layer_params:
        p.requires_grad_(True)
    dim = int(encoder.config.hidden_size)
    head = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(dim, len(names)))
    optimizer = torch.optim.AdamW(
        [
            {"params": layer_params, "lr": args.lr},
            {"params": list(head.parameters()), "lr": args.head_lr},
        ],
        weight_decay=args.weight_decay,
    )
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    lengths = [int(states[i].shape[0]) for i in fit_rows]
    steps_per_epoch = math.ceil(len(fit_rows) / args.batch_size)
    total_steps = max(1, int(args.epochs * steps_per_epoch))
    budget = args.minutes * 60.0
    # Time kept back for the final forward pass over every text: after the first epoch, a third
    # of that epoch's per-text cost (forward only, no backward) times the number of texts.
    reserve = 0.0

    def evaluate(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        for layer in top.layers:
            layer.eval()
        head.eval()
        pooled, logp = [], []
        with torch.inference_mode():
            order = np.argsort([states[i].shape[0] for i in rows], kind="stable")
            for lo in range(0, len(order), 256):
                part = rows[order[lo : lo + 256]]
                v = run_top(top, states, part)
                pooled.append((order[lo : lo + 256], v))
                logp.append(torch.log_softmax(head(v), dim=-1))
        vec = np.zeros((len(rows), dim), dtype=np.float32)
        lp = np.zeros((len(rows), len(names)), dtype=np.float32)
        for (where, v), log_p in zip(pooled, logp, strict=True):
            vec[where] = torch.nn.functional.normalize(v, dim=-1).numpy()
            lp[where] = log_p.numpy()
        return vec, lp

    step, epoch, progress = 0, 0, 0.0
    log: list[dict[str, Any]] = []
    while progress < 1.0:
        epoch += 1
        for layer in top.layers:
            layer.train()
        head.train()
        t0, seen, loss_sum, n_steps = time.perf_counter(), 0, 0.0, 0
        batches = bucketed_batches(lengths, args.batch_size, rng)
        for batch in batches:
            progress = max(step / total_steps, (time.perf_counter() - started + reserve) / budget)
            if progress >= 1.0:
                break
            factor = lr_factor(progress, args.warmup)
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor
            rows = fit_rows[batch]
            logits = head(run_top(top, states, rows))
            target = torch.as_tensor(y[rows], dtype=torch.long)
            loss = torch.nn.functional.cross_entropy(
                logits, target, label_smoothing=args.label_smoothing
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(layer_params + list(head.parameters()), 1.0)
            optimizer.step()
            step += 1
            n_steps += 1
            seen += len(rows)
            loss_sum += float(loss.detach())
        if n_steps == 0:
            break
        seconds = time.perf_counter() - t0
        reserve = max(reserve, seconds * len(texts) / max(seen, 1) / 3.0)
        _, val_lp = evaluate(inner_val)
        entry = {
            "epoch": epoch,
            "fraction": round(n_steps / len(batches), 3),
            "seconds": round(seconds, 1),
            "loss": round(loss_sum / n_steps, 4),
            "inner_val_head_accuracy": round(float((val_lp.argmax(1) == y[inner_val]).mean()), 4),
        }
        log.append(entry)
        print(f"epoch {epoch}: {json.dumps(entry)}", flush=True)
        progress = max(step / total_steps, (time.perf_counter() - started + reserve) / budget)

    all_rows = np.arange(len(texts))
    tuned, head_lp = evaluate(all_rows)
    total = time.perf_counter() - started
    test_acc = float((head_lp[test].argmax(1) == y[test]).mean())
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "frozen.npy", frozen)
    np.save(args.out / "tuned.npy", tuned)
    np.save(args.out / "head_log_proba.npy", head_lp)
    (args.out / "labels.json").write_text(json.dumps(names) + "\n", encoding="utf-8")
    split = {
        "train": train_part.tolist(),
        "test": test.tolist(),
        "inner_train": inner_train.tolist(),
        "inner_val": inner_val.tolist(),
        "fit_rows": "train" if args.final_refit else "inner_train",
    }
    (args.out / "split.json").write_text(json.dumps(split) + "\n", encoding="utf-8")
    figures = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "caching_seconds": round(cached_at, 1),
        "total_minutes": round(total / 60, 2),
        "epochs": log,
        "test_head_accuracy": test_acc,
    }
    (args.out / "report.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print("\n== figures ==")
    print(f"wall time all in: {total / 60:.2f} min (caching {cached_at:.0f}s)")
    for e in log:
        print(
            f"  epoch {e['epoch']}: {e['seconds']:.0f}s ({e['fraction']:.0%}), loss {e['loss']}, "
            f"inner-val head acc {e['inner_val_head_accuracy']}"
        )
    print(f"head accuracy on fold {args.fold} test: {test_acc:.4f}")
    print(f"wrote {args.out}/{{frozen,tuned,head_log_proba}}.npy, labels.json, split.json")


if __name__ == "__main__":
    main()
