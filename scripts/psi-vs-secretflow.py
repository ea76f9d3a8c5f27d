#!/usr/bin/env python3
"""SecretFlow's two-party PSI (pip `spu`, `spu.psi.psi_execute`) on the key sets of
`fedmesh bench psi`: two processes linked over 127.0.0.1 (brpc), wall time from both
processes' start of `psi_execute` to the later one's end.

    python3 -m venv /tmp/spu && /tmp/spu/bin/pip install spu==0.9.5
    /tmp/spu/bin/python scripts/psi-vs-secretflow.py --size 1000000 --protocol ECDH,KKRT,RR22
"""

import argparse
import multiprocessing as mp
import os
import random
import tempfile
import time


def key_sets(size, overlap):
    """Two sets of `size` keys, `overlap` of them shared: the key strings fedmesh's bench uses."""
    shared = round(size * overlap)
    sets = []
    rng = random.Random(7)
    for p in range(2):
        keys = [f"entity-{k}" for k in range(shared)] + [f"party{p}-{k}" for k in range(shared, size)]
        rng.shuffle(keys)
        sets.append(keys)
    return sets


def party(rank, protocol, inputs, outputs, ports, result):
    import spu.libspu.link as link
    import spu.psi as psi

    desc = link.Desc()
    for i, port in enumerate(ports):
        desc.add_party(f"party{i}", f"127.0.0.1:{port}")
    lctx = link.create_brpc(desc, rank)
    config = psi.PsiExecuteConfig(
        protocol_conf=psi.PsiProtocolConfig(
            protocol=psi.parse_protocol(f"PROTOCOL_{protocol}"),
            receiver_rank=0,
            broadcast_result=True,
            ecdh_params=psi.EcdhParams(curve=psi.EllipticCurveType.CURVE_25519),
        ),
        input_params=psi.InputParams(path=inputs[rank], selected_keys=["id"], keys_unique=True),
        output_params=psi.OutputParams(path=outputs[rank], disable_alignment=True),
    )
    started = time.time()
    report = psi.psi_execute(config, lctx)
    result.put((rank, started, time.time(), report.intersection_count))
    lctx.stop_link()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--protocol", default="ECDH,KKRT,RR22")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as dir:
        inputs, outputs = [], []
        for p, keys in enumerate(key_sets(args.size, args.overlap)):
            path = os.path.join(dir, f"party{p}.csv")
            with open(path, "w") as f:
                f.write("id\n")
                f.write("\n".join(keys))
                f.write("\n")
            inputs.append(path)
            outputs.append(os.path.join(dir, f"out{p}.csv"))
        for n, protocol in enumerate(args.protocol.split(",")):
            ports = [61530 + 2 * n, 61531 + 2 * n]
            result = mp.Queue()
            procs = [
                mp.Process(target=party, args=(r, protocol, inputs, outputs, ports, result))
                for r in range(2)
            ]
            for p in procs:
                p.start()
            times = [result.get() for _ in procs]
            for p in procs:
                p.join()
            start = min(t[1] for t in times)
            end = max(t[2] for t in times)
            print(
                f"secretflow spu psi {protocol}, 2 parties × {args.size} keys, overlap {args.overlap}: "
                f"intersection {times[0][3]}, {end - start:.2f} s wall (two processes on 127.0.0.1)"
            )


if __name__ == "__main__":
    main()
