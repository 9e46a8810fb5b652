"""What a worker detects about its machine, and the queues it then serves."""

from __future__ import annotations

from orchestration.settings import Settings
from workers.main import Machine, detect_gpus, detect_machine, queues_for


def test_gpus_come_from_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert detect_gpus() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpus() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert detect_gpus() == 0


def test_flags_override_detection(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    machine = detect_machine(gpus=4, memory_gb=512)
    assert (machine.gpus, machine.memory_gb) == (4, 512)
    assert machine.cpus >= 1


def test_queues_follow_the_machine():
    settings = Settings()
    assert queues_for(Machine(cpus=8, memory_gb=8, gpus=0), settings) == ["cpu"]
    assert queues_for(Machine(cpus=8, memory_gb=64, gpus=0), settings) == ["cpu", "highmem"]
    assert queues_for(Machine(cpus=8, memory_gb=8, gpus=2), settings) == ["cpu", "gpu"]
    only_cpu = Settings(queues=("cpu",))
    assert queues_for(Machine(cpus=8, memory_gb=64, gpus=2), only_cpu) == ["cpu"]
