"""Split the UCI credit table into the three parties and write their features as .npz files.

Usage: python prepare.py OUT_DIR [CSV TEST_IDS]   (defaults: ../shared/data/uci-credit/...)
"""

import json
import sys
import time
from pathlib import Path

from flower_credit.task import prepare

data = Path(__file__).resolve().parents[3] / "shared/data/uci-credit"
out = sys.argv[1]
csv_path = sys.argv[2] if len(sys.argv) > 2 else data / "UCI_Credit_Card.csv"
ids_path = sys.argv[3] if len(sys.argv) > 3 else data / "test-ids.txt"
t = time.perf_counter()
sizes = prepare(csv_path, ids_path, out)
print(json.dumps({"rows": sizes, "prepare_seconds": round(time.perf_counter() - t, 3)}))
