"""The same pipelined two-process train step in PyTorch (gloo over loopback) and in mpnn-async.

The network is 784-4096-4096-10 float32 (relu, relu, softmax cross-entropy,
Adam), trained on batches of 512 rows in 4 micro-batches of 128. It is split
like the `layers` plan of bench/train_step.py: process 0 owns layer 1, and
process 1 owns layers 2 and 3 and the loss. One run measures, side by side:

- PyTorch: two processes joined by `torch.distributed` on the gloo backend
  over 127.0.0.1. Rank 0 runs the forward of every micro-batch and sends
  each activation block with `isend` as soon as it is computed, then
  receives the gradient blocks and runs the backward of each. Rank 1
  receives each activation block, runs its forward, the loss and its
  backward, and sends the input gradient back. Both run `Adam.step`, then
  meet at a barrier, which ends the step.
- mpnn-async: `JobRunner` in this process with two `mpnn worker` processes
  over RabbitMQ, all 4 micro-batches in flight.

The two alternate for `--rounds` runs each, and the ratio is taken over the
step times of all rounds.

Both use the same threads per process (`--threads`, default cores / 2):
`torch.set_num_threads` in each rank, `MPNN_BLAS_THREADS` in each worker.
Without torch installed, the script says so and exits 0.

Usage:

    python bench/torch_gloo.py [--steps 5] [--rounds 2] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WIDTHS = (784, 4096, 4096, 10)
BATCH_ROWS = 512
MICRO_BATCH_ROWS = 128
WARM_UP_STEPS = 2


def run_rank(rank: int, port: int, steps: int, threads: int) -> None:
    """Train as one rank of the PyTorch pipeline; rank 0 prints its step times as JSON."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as functional

    torch.set_num_threads(threads)
    torch.manual_seed(rank)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    micro_batches = BATCH_ROWS // MICRO_BATCH_ROWS
    if rank == 0:
        model = torch.nn.Linear(WIDTHS[0], WIDTHS[1])
    else:
        model = torch.nn.Sequential(
            torch.nn.Linear(WIDTHS[1], WIDTHS[2]), torch.nn.ReLU(), torch.nn.Linear(WIDTHS[2], WIDTHS[3])
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(WARM_UP_STEPS + steps):
        inputs = torch.randn(micro_batches, MICRO_BATCH_ROWS, WIDTHS[0], generator=generator)
        labels = torch.randint(0, WIDTHS[-1], (micro_batches, MICRO_BATCH_ROWS), generator=generator)
        started = time.perf_counter()
        optimizer.zero_grad()
        if rank == 0:
            outputs, sends = [], []
            for index in range(micro_batches):
                outputs.append(torch.relu(model(inputs[index])))
                sends.append(dist.isend(outputs[-1].detach(), dst=1))
            for output in outputs:
                gradient = torch.empty_like(output)
                dist.recv(gradient, src=1)
                output.backward(gradient)
        else:
            sends = []
            for index in range(micro_batches):
                activation = torch.empty(MICRO_BATCH_ROWS, WIDTHS[1])
                dist.recv(activation, src=0)
                activation.requires_grad_()
                loss = functional.cross_entropy(model(activation), labels[index], reduction="sum") / BATCH_ROWS
                loss.backward()
                sends.append(dist.isend(activation.grad, dst=0))
        for send in sends:
            send.wait()
        optimizer.step()
        dist.barrier()
        times.append(time.perf_counter() - started)
    if rank == 0:
        print(orjson.dumps(times[WARM_UP_STEPS:]).decode(), flush=True)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def torch_step_times(steps: int, threads: int) -> list[float]:
    port = free_port()
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo")
    command = [sys.executable, __file__, "--steps", str(steps), "--threads", str(threads), "--port", str(port)]
    ranks = [
        subprocess.Popen([*command, "--rank", str(rank)], env=env, stdout=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    outputs = [rank.communicate(timeout=600)[0] for rank in ranks]
    if any(rank.returncode != 0 for rank in ranks):
        raise SystemExit(f"a PyTorch rank failed: exit codes {[rank.returncode for rank in ranks]}")
    return orjson.loads(outputs[0].strip().splitlines()[-1])


async def mpnn_step_times(steps: int, threads: int, broker: str) -> list[float]:
    from harness import WorkerPool, job_document, layer_plan, record_step_windows, synthetic_dataset

    from mpnn_async.runtime.job import JobSpec
    from mpnn_async.runtime.scheduler import JobRunner
    from mpnn_async.store import Store
    from mpnn_async.transport import open_transport

    workdir = Path(tempfile.mkdtemp(prefix="mpnn-bench-torch-"))
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, MPNN_BROKER_URL=broker, MPNN_NAMESPACE=namespace, MPNN_STORE=str(workdir / "store"),
               MPNN_BLAS_THREADS=str(threads))
    total_steps = WARM_UP_STEPS + steps + 1
    document = job_document(
        "torch-comparison", WIDTHS, layer_plan(["a", "b"], len(WIDTHS) - 1), batch_rows=BATCH_ROWS,
        micro_batch_rows=MICRO_BATCH_ROWS, in_flight=4, steps=total_steps,
    )
    store = Store.open(workdir / "store", create=True)
    transport = await open_transport(broker, namespace=namespace, max_message_bytes=128 << 20)
    pool = WorkerPool(["a", "b"], env, workdir, label="torch-comparison")
    try:
        with pool:
            dataset = synthetic_dataset(BATCH_ROWS * total_steps, WIDTHS[0], WIDTHS[-1])
            runner = JobRunner(job=JobSpec.from_dict(document), transport=transport, store=store, dataset=dataset)
            windows = record_step_windows(runner)
            await runner.run()
    finally:
        for queue in pool.queues():
            await transport.delete_queue(transport.queue_name(queue))
        await transport.purge_namespace()
        await transport.close()
        shutil.rmtree(workdir, ignore_errors=True)
    # Without the warm-up steps and the last step, which persists the weights.
    return [end - start for start, end in windows[WARM_UP_STEPS:-1]]


def summary(times: list[float]) -> str:
    return f"median {np.median(times) * 1000:.0f} ms/step (min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default=os.environ.get("MPNN_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run, after 2 warm-up steps")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, alternating")
    parser.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0)) // 2),
                        help="threads per process: torch.set_num_threads and MPNN_BLAS_THREADS")
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank is not None:
        run_rank(args.rank, args.port, args.steps, args.threads)
        return

    try:
        import torch
    except ImportError:
        print("torch is not installed: skipping the PyTorch comparison (pip install torch to run it)")
        return
    from machine import machine_line

    print(machine_line())
    print(f"model: {'-'.join(map(str, WIDTHS))} float32, adam, batch {BATCH_ROWS} in {BATCH_ROWS // MICRO_BATCH_ROWS} "
          f"micro-batches; layer 1 | layers 2-3; threads per process: {args.threads}; {args.rounds} x {args.steps} "
          f"timed steps after {WARM_UP_STEPS} warm-up; PyTorch {torch.__version__}")
    torch_times: list[float] = []
    ours: list[float] = []
    # Alternate the two, so a change of machine load falls on both.
    for round_index in range(args.rounds):
        torch_times += torch_step_times(args.steps, args.threads)
        print(f"round {round_index + 1}: PyTorch, gloo over loopback: {summary(torch_times[-args.steps:])}")
        ours += asyncio.run(mpnn_step_times(args.steps, args.threads, args.broker))
        print(f"round {round_index + 1}: mpnn-async, RabbitMQ:        {summary(ours[-args.steps:])}")
    print(f"all rounds: PyTorch {summary(torch_times)}; mpnn-async {summary(ours)}")
    print(f"ratio mpnn-async / PyTorch: {np.median(ours) / np.median(torch_times):.2f} of the medians, "
          f"{min(ours) / min(torch_times):.2f} of the minimums")
    print(f"load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    main()
