"""Data, model and local training shared by the Flower app and the single-process baseline.

The model is a NumPy MLP (31 -> 64 -> ReLU -> dropout -> 32 -> ReLU -> dropout -> 2 logits,
softmax cross-entropy) trained with Adam; see README.md for why not PyTorch.
"""

import csv
import math
from pathlib import Path

import numpy as np

PARTIES = {"graduate": {1}, "university": {2}, "high-school": {3, 0, 4, 5, 6}}
LABEL = "default.payment.next.month"
LOG = ["LIMIT_BAL"] + [f"BILL_AMT{i}" for i in range(1, 7)] + [f"PAY_AMT{i}" for i in range(1, 7)]
PLAIN = ["AGE", "PAY_0"] + [f"PAY_{i}" for i in range(2, 7)]
ONE_HOT = {"EDUCATION": list(range(7)), "MARRIAGE": list(range(4))}
HIDDEN = (64, 32)
DROPOUT = 0.2


# ---------------------------------------------------------------- data


def _signed_log(x):
    return np.sign(x) * np.log1p(np.abs(x))


def prepare(csv_path, test_ids_path, out_dir, split_seed=42, valid_fraction=0.1):
    """Write <party>.npz (train/valid/test) and test.npz (union of test rows) to out_dir.

    Standardization uses the mean and deviation of all parties' training rows pooled, the same
    numbers fedmesh gets from statistics summed over the parties.
    """
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    test_ids = {int(line) for line in Path(test_ids_path).read_text().split()}
    col = lambda name: np.array([float(r[name]) for r in rows])  # noqa: E731
    ids, edu, mar, y = col("ID").astype(int), col("EDUCATION"), col("MARRIAGE"), col(LABEL)

    # Split: by party, then test by ID, then a stratified, seeded 10 % of the rest to validation.
    rng = np.random.default_rng(split_seed)
    split = {}
    for party, values in PARTIES.items():
        mine = np.flatnonzero(np.isin(edu, list(values)))
        test = mine[np.isin(ids[mine], list(test_ids))]
        rest = mine[~np.isin(ids[mine], list(test_ids))]
        valid = []
        for label in (0, 1):
            cls = rng.permutation(rest[y[rest] == label])
            valid.extend(cls[: round(valid_fraction * len(cls))])
        valid = np.sort(np.array(valid, dtype=int))
        train = np.setdiff1d(rest, valid)
        split[party] = {"train": train, "valid": valid, "test": test}

    # Features: raw numeric columns (signed log where asked), standardized with pooled train stats.
    numeric = np.column_stack([_signed_log(col(c)) for c in LOG[:1]] + [col(c) for c in PLAIN]
                              + [_signed_log(col(c)) for c in LOG[1:]])
    train_all = np.concatenate([s["train"] for s in split.values()])
    mean, std = numeric[train_all].mean(0), numeric[train_all].std(0)
    numeric = (numeric - mean) / np.where(std > 0, std, 1.0)
    one_hot = [np.array(cats) == v[:, None] for v, cats in
               ((edu, ONE_HOT["EDUCATION"]), (mar, ONE_HOT["MARRIAGE"]))]
    # Column order as in fedmesh's job: LIMIT_BAL, EDUCATION, MARRIAGE, AGE, PAY_*, BILL_*, PAY_AMT*.
    X = np.column_stack([numeric[:, :1], *one_hot, numeric[:, 1:]]).astype(np.float32)
    Y = y.astype(np.int64)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for party, s in split.items():
        np.savez(out / f"{party}.npz", **{f"{k}_{p}": a[idx] for k, idx in s.items()
                                           for p, a in (("x", X), ("y", Y))})
    test = np.concatenate([s["test"] for s in split.values()])
    np.savez(out / "test.npz", test_x=X[test], test_y=Y[test])
    return {p: {k: len(v) for k, v in s.items()} for p, s in split.items()}


def load(path):
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


# ---------------------------------------------------------------- model


def init_params(n_inputs, seed):
    """Linear layers initialized as PyTorch and burn do: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    rng = np.random.default_rng(seed)
    params, fan_in = [], n_inputs
    for width in (*HIDDEN, 2):
        bound = 1 / math.sqrt(fan_in)
        params.append(rng.uniform(-bound, bound, (fan_in, width)).astype(np.float32))
        params.append(rng.uniform(-bound, bound, width).astype(np.float32))
        fan_in = width
    return params


def logits(params, x):
    """Inference (no dropout)."""
    h = x
    for i in range(0, len(params) - 2, 2):
        h = np.maximum(h @ params[i] + params[i + 1], 0)
    return h @ params[-2] + params[-1]


def _loss_and_grads(params, x, y, rng):
    """Softmax cross-entropy (mean over the batch) with inverted dropout; returns loss, grads."""
    acts, masks, h = [x], [], x
    for i in range(0, len(params) - 2, 2):
        h = np.maximum(h @ params[i] + params[i + 1], 0)
        mask = (rng.random(h.shape, dtype=np.float32) >= DROPOUT) / np.float32(1 - DROPOUT)
        h = h * mask
        masks.append(mask)
        acts.append(h)
    z = h @ params[-2] + params[-1]
    z = z - z.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    n = len(y)
    loss = -np.log(p[np.arange(n), y] + 1e-12).mean()
    g = p
    g[np.arange(n), y] -= 1
    g /= n
    grads = [None] * len(params)
    for i in range(len(params) - 2, -1, -2):
        a = acts[i // 2]
        grads[i], grads[i + 1] = a.T @ g, g.sum(0)
        if i:
            g = (g @ params[i].T) * masks[i // 2 - 1] * (a > 0)
    return loss, grads


def cosine_lr(base, round_1based, rounds):
    return base * 0.5 * (1 + math.cos(math.pi * (round_1based - 1) / rounds))


def train_epoch(params, x, y, lr, batch_size, rng, betas=(0.9, 0.999), eps=1e-8):
    """One epoch over shuffled batches with a fresh Adam (PyTorch's defaults); returns new params
    and the mean batch loss."""
    params = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    order, losses = rng.permutation(len(y)), []
    for t, start in enumerate(range(0, len(y), batch_size), 1):
        idx = order[start:start + batch_size]
        loss, grads = _loss_and_grads(params, x[idx], y[idx], rng)
        losses.append(loss)
        c1, c2 = 1 - betas[0] ** t, 1 - betas[1] ** t
        for p, g, mi, vi in zip(params, grads, m, v):
            mi *= betas[0]
            mi += (1 - betas[0]) * g
            vi *= betas[1]
            vi += (1 - betas[1]) * g * g
            p -= (lr * (mi / c1) / (np.sqrt(vi / c2) + eps)).astype(np.float32)
    return params, float(np.mean(losses))


def client_rng(seed, round_1based, party):
    """The same stream for a party's round in Flower and in the baseline."""
    return np.random.default_rng([seed, round_1based, list(PARTIES).index(party)])


# ---------------------------------------------------------------- metric


def roc_auc(y, score):
    """Mann-Whitney ROC-AUC with ties counted half."""
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    pos = y == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_auc(params, test):
    z = logits(params, test["test_x"])
    return roc_auc(test["test_y"], z[:, 1] - z[:, 0])
