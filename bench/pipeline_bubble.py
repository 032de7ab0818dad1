"""Pipeline bubble of a layer split: how long each partition's worker waits during a step.

The network has K square hidden layers and a 10-wide output layer, and is
split into K sequential partitions: partition i owns layer i+1, and the last
one also owns the output layer. With M micro-batches per step, one run
trains a job for each `in_flight` value on the same K `mpnn worker`
processes over RabbitMQ, with the scheduler (`JobRunner`) in this process.

Each worker runs through busy_worker.py, which records when it computes.
For every timed step, the bubble of a partition is the share of the
pipeline phase (from the step's start to the first `step.apply` handled)
in which its worker computed nothing. It is printed next to GPipe's
bubble (K-1)/(M+K-1), which assumes equal stages, all M micro-batches in
flight and free communication; the stages here are not equal, because the
first one computes no input gradient. The optimizer step (`apply`) is timed
apart, with the time from a partition's last computation of the step to its
`step.apply`, which an optimizer step started without that command would
overlap.

Usage:

    python bench/pipeline_bubble.py [--stages 2,4] [--micro-batches 8] [--in-flight 1,2,4,8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import WorkerPool, busy_seconds, job_document, layer_plan, record_step_windows, synthetic_dataset
from machine import machine_line

from mpnn_async.runtime.job import JobSpec
from mpnn_async.runtime.scheduler import JobRunner
from mpnn_async.store import Store
from mpnn_async.transport import open_transport

WIDTH = 2048
CLASSES = 10
MICRO_BATCH_ROWS = 128
WARM_UP_STEPS = 2


def step_bubbles(
    windows: list[tuple[float, float]], intervals: dict[str, list[list[Any]]]
) -> list[dict[str, float]]:
    """Return, per timed step, its length, its phases, the apply wait and each partition's idle share.

    The keys are "step", "phase" (pipeline), "apply", "wait" (the longest
    time a partition waited from its last computation to `step.apply`) and
    each partition's name.
    """
    rows = []
    for start, end in windows:
        apply_starts = [b for p in intervals.values() for kind, b, _ in p if kind == "apply" and start <= b <= end]
        if not apply_starts:
            raise SystemExit("no optimizer step recorded in a step: see how busy_worker.py recognizes it")
        phase_end = min(apply_starts)
        phase = phase_end - start
        idle = {name: 1 - busy_seconds(p, start, phase_end, "compute") / phase for name, p in intervals.items()}
        last_computed = [
            max((e for kind, b, e in p if kind == "compute" and start <= b <= phase_end), default=start)
            for p in intervals.values()
        ]
        wait = phase_end - min(last_computed)
        rows.append({"step": end - start, "phase": phase, "apply": end - phase_end, "wait": wait, **idle})
    return rows


async def run_job(
    label: str, widths: tuple[int, ...], partitions: list[str], micro_batches: int, in_flight: int, steps: int,
    transport: Any, store: Store,
) -> list[tuple[float, float]]:
    total_steps = WARM_UP_STEPS + steps + 1
    batch_rows = micro_batches * MICRO_BATCH_ROWS
    document = job_document(
        label, widths, layer_plan(partitions, len(widths) - 1), batch_rows=batch_rows,
        micro_batch_rows=MICRO_BATCH_ROWS, in_flight=in_flight, steps=total_steps,
    )
    dataset = synthetic_dataset(batch_rows * total_steps, widths[0], CLASSES)
    runner = JobRunner(job=JobSpec.from_dict(document), transport=transport, store=store, dataset=dataset)
    windows = record_step_windows(runner)
    await runner.run()
    # Drop the warm-up steps and the last step, which persists the weights.
    return windows[WARM_UP_STEPS:-1]


async def measure_stages(
    stages: int, micro_batches: int, in_flights: list[int], steps: int, rounds: int, broker: str,
    env: dict[str, str], workdir: Path,
) -> None:
    partitions = [f"s{index}" for index in range(stages)]
    widths = (WIDTH,) * (stages + 1) + (CLASSES,)
    namespace = env["MPNN_NAMESPACE"]
    store = Store.open(workdir / "store", create=True)
    transport = await open_transport(broker, namespace=namespace, max_message_bytes=128 << 20)
    windows: dict[int, list[tuple[float, float]]] = {}
    pool = WorkerPool(partitions, env, workdir, label=f"k{stages}")
    try:
        with pool:
            # Round-robin over the in_flight values, so a change of machine load spreads over all of them.
            for round_index in range(rounds):
                for in_flight in in_flights:
                    name = f"bubble-k{stages}-w{in_flight}-r{round_index}"
                    windows.setdefault(in_flight, []).extend(
                        await run_job(name, widths, partitions, micro_batches, in_flight, steps, transport, store)
                    )
    finally:
        for queue in pool.queues():
            await transport.delete_queue(transport.queue_name(queue))
        await transport.purge_namespace()
        await transport.close()
        shutil.rmtree(workdir / "store", ignore_errors=True)
    gpipe = (stages - 1) / (micro_batches + stages - 1)
    for in_flight in in_flights:
        rows = step_bubbles(windows[in_flight], pool.intervals)
        median = {key: float(np.median([row[key] for row in rows])) for key in rows[0]}
        idle = [median[p] for p in partitions]
        print(
            f"{stages:>2} {micro_batches:>3} {in_flight:>9} {median['step'] * 1000:8.0f} {median['phase'] * 1000:9.0f} "
            f"{median['apply'] * 1000:8.0f} {median['wait'] * 1000:8.0f}   {np.mean(idle):6.0%} {min(idle):6.0%} "
            f"{max(idle):6.0%}   {gpipe:6.0%}"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default=os.environ.get("MPNN_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--stages", default="2,4", help="comma-separated numbers of sequential partitions K")
    parser.add_argument("--micro-batches", type=int, default=8, help="micro-batches per step M (of 128 rows)")
    parser.add_argument("--in-flight", default="1,2,4,8", help="comma-separated training.in_flight values")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per job, after 2 warm-up steps")
    parser.add_argument("--rounds", type=int, default=2, help="jobs per in_flight value, run in turn with the others")
    parser.add_argument("--blas-threads", default="1", help="MPNN_BLAS_THREADS of each worker")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mpnn-bench-bubble-"))
    env = dict(
        os.environ, MPNN_BROKER_URL=args.broker, MPNN_NAMESPACE=f"bench-{uuid.uuid4().hex[:8]}",
        MPNN_STORE=str(workdir / "store"), MPNN_BLAS_THREADS=args.blas_threads,
    )
    print(machine_line())
    print(f"model: {WIDTH}-wide square layers, one per stage, float32, adam, micro-batch {MICRO_BATCH_ROWS} rows; "
          f"{args.rounds} x {args.steps} timed steps after {WARM_UP_STEPS} warm-up; worker BLAS threads {args.blas_threads}; "
          f"broker {env['MPNN_NAMESPACE']}; logs {workdir}")
    print("idle: share of the pipeline phase (step start to the first step.apply) a partition's worker computed nothing")
    print("wait: the longest time a partition waited from its last computation of the step to step.apply")
    print(" K   M  in_flight  step ms  pipe ms  apply ms  wait ms   idle mean    min    max   GPipe (K-1)/(M+K-1)")
    for stages in map(int, args.stages.split(",")):
        in_flights = [w for w in map(int, args.in_flight.split(",")) if w <= args.micro_batches]
        await measure_stages(stages, args.micro_batches, in_flights, args.steps, args.rounds, args.broker, env, workdir)
    print(f"load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    asyncio.run(main())
