"""ServerApp: FedAvg over the three SuperNodes, every round timed; the final global model is
scored on the union of the parties' test rows and the numbers written as JSON to `out`."""

import json
import time

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flower_credit.task import init_params, load, test_auc

app = ServerApp()


class TimedFedAvg(FedAvg):
    """FedAvg (weighted by the clients' "num-examples") that notes when each round starts and ends."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.starts, self.ends, self.clients = [], [], []

    def configure_train(self, server_round, arrays, config, grid):
        self.starts.append(time.time())
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.clients.append([m.content["metrics"] for m in replies])
        result = super().aggregate_train(server_round, replies)
        self.ends.append(time.time())
        return result


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    rounds, seed, parties = cfg["num-rounds"], cfg["seed"], cfg["parties"]
    test = load(cfg["test-data"])
    while len(list(grid.get_node_ids())) < parties:  # startup: until every SuperNode is there
        time.sleep(0.05)
    strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=parties,
                           min_available_nodes=parties)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(init_params(test["test_x"].shape[1], seed)),
        num_rounds=rounds,
        train_config=ConfigRecord({"num-rounds": rounds, "lr": cfg["lr"],
                                   "batch-size": cfg["batch-size"], "seed": seed}),
    )
    elapsed = strategy.ends[-1] - strategy.starts[0]
    # Where a round's time goes, averaged over rounds and clients: from the round's start to the
    # ClientApp process's start; from there to the call of train(); loading the party's data and
    # training; from the last client's end of training to the round's end (upload, averaging).
    phases = [(c["process-start"] - s, c["train-start"] - c["process-start"],
               c["train-end"] - c["train-start"], e - max(d["train-end"] for d in cs))
              for s, e, cs in zip(strategy.starts, strategy.ends, strategy.clients) for c in cs]
    names = ["to_clientapp_process", "process_to_train", "load_data_and_train",
             "last_train_to_round_end"]
    out = {"mode": "flower-deployment", "seed": seed, "rounds": rounds,
           "first_round_start_unix": strategy.starts[0], "rounds_seconds": round(elapsed, 3),
           "seconds_per_round": round(elapsed / rounds, 4),
           "round_seconds": [round(e - s, 3) for s, e in zip(strategy.starts, strategy.ends)],
           "round_breakdown_seconds": {n: round(sum(p[i] for p in phases) / len(phases), 3)
                                       for i, n in enumerate(names)},
           "test_auc": round(test_auc(result.arrays.to_numpy_ndarrays(), test), 4)}
    with open(cfg["out"], "w") as f:
        json.dump(out, f)
