"""The same FedAvg job in one Python process, without Flower: per round, the three parties'
local trainings one after the other, then the average weighted by training rows.

Usage: python baseline.py DATA_DIR [SEED] [ROUNDS]   (DATA_DIR written by prepare.py)
"""

import json
import sys
import time

from flower_credit.task import (PARTIES, client_rng, cosine_lr, init_params, load, test_auc,
                                train_epoch)

LR, BATCH = 0.003, 256

t0 = time.perf_counter()
data_dir = sys.argv[1]
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 20
parties = {p: load(f"{data_dir}/{p}.npz") for p in PARTIES}
test = load(f"{data_dir}/test.npz")
params = init_params(test["test_x"].shape[1], seed)
startup = time.perf_counter() - t0

t0 = time.perf_counter()
for r in range(1, rounds + 1):
    lr = cosine_lr(LR, r, rounds)
    results = [(train_epoch(params, d["train_x"], d["train_y"], lr, BATCH, client_rng(seed, r, p))[0],
                len(d["train_y"])) for p, d in parties.items()]
    total = sum(n for _, n in results)
    params = [sum(res[0][i] * (n / total) for res, n in zip(results, [n for _, n in results]))
              for i in range(len(params))]
elapsed = time.perf_counter() - t0

print(json.dumps({"mode": "single-process", "seed": seed, "rounds": rounds,
                  "startup_seconds": round(startup, 3), "rounds_seconds": round(elapsed, 3),
                  "seconds_per_round": round(elapsed / rounds, 4),
                  "test_auc": round(test_auc(params, test), 4)}))
