"""The GPU gauges read the serving GPU, not NVML's device with the same number (NVML ignores CUDA_VISIBLE_DEVICES:
with CUDA_VISIBLE_DEVICES=2 the server's cuda:0 is NVML's device 2). The mapping logic runs on CPU against a fake
NVML listing three GPUs."""

from __future__ import annotations

import pytest

from server.metrics import nvml_handle

GPUS = [  # NVML index -> (UUID, PCI bus id)
    ("GPU-aaaaaaaa-0000-0000-0000-000000000000", "00000000:17:00.0"),
    ("GPU-bbbbbbbb-1111-1111-1111-111111111111", "00000000:65:00.0"),
    ("GPU-cccccccc-2222-2222-2222-222222222222", "00000000:CA:00.0"),
]


class FakeNvml:
    def nvmlDeviceGetCount(self):
        return len(GPUS)

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("nvml", index)

    def nvmlDeviceGetUUID(self, handle):
        return GPUS[handle[1]][0].encode()  # old pynvml returns bytes

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return ("nvml", [u for u, _ in GPUS].index(uuid))

    def nvmlDeviceGetHandleByPciBusId(self, bus_id):
        return ("nvml", [p for _, p in GPUS].index(bus_id))


def test_identity_from_cuda_wins_over_the_ordinal():
    nvml = FakeNvml()
    # CUDA_VISIBLE_DEVICES=2: torch's device 0 is the third GPU; its UUID / PCI id say so.
    assert nvml_handle(nvml, 0, {"uuid": GPUS[2][0]}, "2") == ("nvml", 2)
    assert nvml_handle(nvml, 0, {"pci_bus_id": GPUS[1][1]}, None) == ("nvml", 1)


def test_cuda_visible_devices_is_honoured_without_an_identity():
    nvml = FakeNvml()
    assert nvml_handle(nvml, 0, {}, "2,0") == ("nvml", 2)
    assert nvml_handle(nvml, 1, {}, "2,0") == ("nvml", 0)
    assert nvml_handle(nvml, 0, {}, "GPU-bbbbbbbb") == ("nvml", 1)  # CUDA accepts UUID prefixes
    assert nvml_handle(nvml, 1, None, None) == ("nvml", 1)  # all GPUs visible: ordinal == NVML index
    with pytest.raises(LookupError, match="no entry for CUDA device 1"):
        nvml_handle(nvml, 1, {}, "2")
    with pytest.raises(LookupError, match="matches no GPU"):
        nvml_handle(nvml, 0, {}, "GPU-ffff")
