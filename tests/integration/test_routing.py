"""Resource-tagged queues: GPU stages run on the GPU worker, one at a time per GPU."""

from __future__ import annotations

import itertools

from .conftest import pipeline


def test_gpu_stages_run_on_the_gpu_worker_one_at_a_time(bare_cluster):
    cluster = bare_cluster
    cluster.start_worker(queues=("cpu",), concurrency=2, hostname="cpu-host", wait=False)
    # the GPU worker serves what its machine can (cpu, highmem, gpu) and has one GPU
    gpu = cluster.start_worker(
        queues=("cpu", "highmem", "gpu"), concurrency=2, hostname="gpu-host", gpus=1, wait=False
    )
    cluster.wait_workers(3)  # cpu-host, gpu-host/main, gpu-host/gpu
    assert gpu.proc.poll() is None
    gpu_stages = [
        {
            "id": f"train{i}",
            "uses": "test.record",
            "resources": {"gpu": 1},
            "params": {"seconds": 0.4, "name": "gpu"},
        }
        for i in range(4)
    ]
    cpu_stages = [{"id": f"prep{i}", "uses": "test.record", "params": {"seconds": 0.2}} for i in range(6)]
    result = cluster.run(
        pipeline(
            "mixed",
            *gpu_stages,
            *cpu_stages,
            {"id": "report", "uses": "noop", "needs": [s["id"] for s in gpu_stages]},
        )
    )
    assert result.status == "succeeded", result.stage_results
    stages = result.stage_results
    for s in gpu_stages:
        assert stages[s["id"]]["host"] == "gpu-host"
        assert stages[s["id"]]["queue"] == "gpu"
    for s in cpu_stages:
        assert stages[s["id"]]["queue"] == "cpu"
        assert stages[s["id"]]["host"] in ("cpu-host", "gpu-host")
    intervals = sorted((stages[s["id"]]["started_at"], stages[s["id"]]["finished_at"]) for s in gpu_stages)
    for (_, end), (start, _) in itertools.pairwise(intervals):
        assert start >= end, f"two GPU stages overlapped: {intervals}"
    assert int(cluster.redis.get(f"test:peak:{result.run_id}:gpu:max")) == 1
