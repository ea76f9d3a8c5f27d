"""PyTorch baseline for `fedmesh bench split`: the seed's fraud model, single-threaded.

Run: OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python pytorch_split.py [joint_one_adam|joint_per_part_adam|split]
"""
import os
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
import sys
import time
import statistics
import torch
import torch.nn as nn

torch.set_num_threads(1)
torch.set_num_interop_threads(1)
torch.manual_seed(0)

N, F, B = 65536, 30, 256
WARMUP, STEPS, REPEATS = 100, 3000, 3

X = torch.rand(N, F, dtype=torch.float32)
Y = (torch.rand(N) < 0.10).long()
NB = N // B
xs = [[X[i * B:(i + 1) * B, 10 * k:10 * (k + 1)].contiguous() for k in range(3)] for i in range(NB)]
ys = [Y[i * B:(i + 1) * B].contiguous() for i in range(NB)]


def bottom():
    return nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Linear(32, 16), nn.BatchNorm1d(16), nn.ReLU())


def top():
    return nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 2))


def make(variant):
    torch.manual_seed(1)
    bots = [bottom() for _ in range(3)]
    t = top()
    lossf = nn.CrossEntropyLoss()
    if variant == "joint_one_adam":
        params = [p for m in bots + [t] for p in m.parameters()]
        opts = [torch.optim.Adam(params, lr=1e-3)]
    else:  # joint_per_part_adam / split
        opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in bots + [t]]

    if variant in ("joint_one_adam", "joint_per_part_adam"):
        def step(i):
            xb, yb = xs[i % NB], ys[i % NB]
            for o in opts:
                o.zero_grad()
            h = torch.cat([bots[k](xb[k]) for k in range(3)], dim=1)
            loss = lossf(t(h), yb)
            loss.backward()
            for o in opts:
                o.step()
            return loss
    else:
        def step(i):
            xb, yb = xs[i % NB], ys[i % NB]
            for o in opts:
                o.zero_grad()
            outs = [bots[k](xb[k]) for k in range(3)]
            hs = [o.detach().requires_grad_() for o in outs]
            loss = lossf(t(torch.cat(hs, dim=1)), yb)
            loss.backward()
            opts[3].step()
            for k in range(3):
                outs[k].backward(hs[k].grad)
                opts[k].step()
            return loss
    return step


def run(variant):
    step = make(variant)
    i = 0
    for _ in range(WARMUP):
        step(i); i += 1
    res = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(STEPS):
            loss = step(i); i += 1
        el = time.perf_counter() - t0
        res.append(STEPS * B / el)
    print(f"{variant}: runs = {[round(r, 1) for r in res]} samples/s, "
          f"median = {statistics.median(res):.1f} samples/s (last loss {loss.item():.4f})",
          flush=True)
    return res


if __name__ == "__main__":
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"interop={torch.get_num_interop_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"MKL_NUM_THREADS={os.environ.get('MKL_NUM_THREADS')}", flush=True)
    variants = sys.argv[1:] or ["joint_one_adam", "joint_per_part_adam", "split"]
    for v in variants:
        run(v)
