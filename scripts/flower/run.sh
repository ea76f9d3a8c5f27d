#!/usr/bin/env bash
# fedmesh's credit-branches FedAvg job (3 parties by EDUCATION, 20 rounds) in Flower's deployment
# mode (one SuperLink and three SuperNodes as separate processes on 127.0.0.1, insecure), then
# the same FedAvg loop in one plain Python process. Prints one JSON line per run and a summary.
#
# Usage: scripts/flower/run.sh            (SEEDS="1 2 3" by default)
#   SEEDS="1"  ROUNDS=20  PORT=19100  FLOWER_VENV=~/.cache/fedmesh-flower/venv  KEEP=1 (keep logs)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
data=${DATA_DIR:-$(cd "$here/../../.." && pwd)/shared/data/uci-credit}
seeds=${SEEDS:-1 2 3}
rounds=${ROUNDS:-20}
port=${PORT:-19100}
venv=${FLOWER_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/fedmesh-flower/venv}
work=$(mktemp -d "${TMPDIR:-/tmp}/fedmesh-flower.XXXXXX")
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill -- -"$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 -- -"$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- -"$pid" 2>/dev/null || true
  done
  pids=()
}
trap 'cleanup; [ -n "${KEEP:-}" ] && echo "logs kept in $work" >&2 || rm -rf "$work"' EXIT

# 1. Environment: a venv outside the repo, with the pinned requirements.
if [ ! -x "$venv/bin/flwr" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
fi
"$venv/bin/pip" install -q -r "$here/requirements.txt"
export PATH="$venv/bin:$PATH" FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
cores=$(nproc)
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # 3 clients share 2 cores
flwr_version=$(python -c 'import flwr; print(flwr.__version__)')

echo "machine: $cores cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "load average $(cut -d' ' -f1-3 /proc/loadavg) at start; flwr $flwr_version," \
  "numpy $(python -c 'import numpy; print(numpy.__version__)'), $(python -V)" >&2

# 2. The parties' rows and features, written outside the repo (startup of both modes excludes it).
python "$here/prepare.py" "$work/data" "$data/UCI_Credit_Card.csv" "$data/test-ids.txt" >&2

# 3. Flower, deployment mode: a fresh SuperLink and three SuperNodes for every seed.
flower_run() {
  local seed=$1 dir="$work/flower-$seed" i=0 t_launch
  mkdir -p "$dir/cli"
  printf '[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:%s"\ninsecure = true\n' \
    "$port" > "$dir/cli/config.toml"
  t_launch=$(date +%s.%N)
  FLWR_HOME="$dir/superlink" setsid flower-superlink --insecure --port "$port" \
    --disable-runtime-dependency-installation > "$dir/superlink.log" 2>&1 &
  pids+=($!)
  for party in graduate university high-school; do
    i=$((i + 1))
    FLWR_HOME="$dir/$party" setsid flower-supernode --insecure --superlink "127.0.0.1:$port" \
      --port $((port + i)) --node-config "party=\"$party\" data=\"$work/data/$party.npz\"" \
      > "$dir/supernode-$party.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 600); do grep -q "Uvicorn running" "$dir/superlink.log" && break; sleep 0.1; done
  (cd "$here" && FLWR_HOME="$dir/cli" flwr run . loopback --stream --run-config \
    "num-rounds=$rounds seed=$seed test-data=\"$work/data/test.npz\" out=\"$dir/out.json\"") \
    > "$dir/flwr-run.log" 2>&1 || true
  for _ in $(seq 600); do [ -s "$dir/out.json" ] && break; sleep 1; done
  cleanup
  [ -s "$dir/out.json" ] || { echo "flower run failed, see $dir (KEEP=1 keeps it)" >&2; exit 1; }
  python - "$dir/out.json" "$t_launch" <<'EOF' | tee -a "$work/results.jsonl"
import json, sys
out = json.load(open(sys.argv[1]))
out["startup_seconds"] = round(out.pop("first_round_start_unix") - float(sys.argv[2]), 3)
print(json.dumps(out))
EOF
}

: > "$work/results.jsonl"
for seed in $seeds; do flower_run "$seed"; done  # not in a pipe: the EXIT trap must see $pids

# 4. The same FedAvg loop in one process, without Flower.
for seed in $seeds; do
  python "$here/baseline.py" "$work/data" "$seed" "$rounds" | tee -a "$work/results.jsonl"
done

echo "load average $(cut -d' ' -f1-3 /proc/loadavg) at end" >&2
python - "$work/results.jsonl" <<'EOF'
import json, statistics as st, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
print(f"{'mode':<20}{'seeds':>6}{'startup s':>16}{'s/round':>18}{'test ROC-AUC':>20}")
for mode in dict.fromkeys(r["mode"] for r in runs):
    rs = [r for r in runs if r["mode"] == mode]
    f = lambda k, d: (f"{st.mean(r[k] for r in rs):.{d}f}"
                      + (f" ± {st.stdev(r[k] for r in rs):.{d}f}" if len(rs) > 1 else ""))
    print(f"{mode:<20}{len(rs):>6}{f('startup_seconds', 2):>16}{f('seconds_per_round', 3):>18}"
          f"{f('test_auc', 4):>20}")
EOF
