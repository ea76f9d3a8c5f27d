"""The same 2-party PSI with OpenMined's library (pip install openmined.psi), for comparison
with `fedmesh bench psi`: the same key sets (entity-<k> shared, others of each party's own),
the whole protocol (setup, request, response, intersection) timed, in one process (the library
is single-threaded). Usage: python3 scripts/openmined_psi.py SIZE OVERLAP"""
import sys, time
import private_set_intersection.python as psi
n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000000
overlap = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
common = round(n * overlap)
client_items = [f"entity-{i}" for i in range(common)] + [f"party0-{i}" for i in range(common, n)]
server_items = [f"entity-{i}" for i in range(common)] + [f"party1-{i}" for i in range(common, n)]
t0 = time.perf_counter()
client = psi.client.CreateWithNewKey(True)  # reveal_intersection
server = psi.server.CreateWithNewKey(True)
setup = server.CreateSetupMessage(1e-9, len(client_items), server_items, psi.DataStructure.RAW)
request = client.CreateRequest(client_items)
response = server.ProcessRequest(request)
rows = client.GetIntersection(setup, response)
t1 = time.perf_counter()
print(f"openmined.psi {psi.__version__}, 2 parties x {n} keys, overlap {overlap}: intersection {len(rows)}, {t1-t0:.2f} s wall (P-256, reveal intersection, raw setup)")
