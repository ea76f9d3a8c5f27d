"""ClientApp: one local epoch on this SuperNode's party, from the global model it is sent."""

import os
import time

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flower_credit.task import client_rng, cosine_lr, load, train_epoch

app = ClientApp()


def _process_start():
    """This process's start (unix seconds): SuperNodes start a ClientApp process per message."""
    ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
    boot = next(float(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


@app.train()
def train(msg: Message, context: Context) -> Message:
    t0, start = time.perf_counter(), time.time()
    party = context.node_config["party"]
    data = load(context.node_config["data"])  # this party's rows only, prepared by prepare.py
    cfg = msg.content["config"]
    rnd = cfg["server-round"]
    lr = cosine_lr(cfg["lr"], rnd, cfg["num-rounds"])
    params, loss = train_epoch(msg.content["arrays"].to_numpy_ndarrays(), data["train_x"],
                               data["train_y"], lr, cfg["batch-size"],
                               client_rng(cfg["seed"], rnd, party))
    metrics = MetricRecord({"num-examples": len(data["train_y"]), "train-loss": loss,
                            "train-seconds": time.perf_counter() - t0,
                            "process-start": _process_start(), "train-start": start,
                            "train-end": time.time()})
    return Message(RecordDict({"arrays": ArrayRecord(params), "metrics": metrics}), reply_to=msg)
