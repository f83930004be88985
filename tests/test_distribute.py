"""Strategy selection."""

from simclr_tf import distribute


def test_auto_strategy_prefetches_to_a_single_accelerator(monkeypatch):
  cases = {("/device:CPU:0",): "default",
           ("/device:GPU:0",): "one_device",
           ("/device:GPU:0", "/device:GPU:1"): "mirrored",
           ("/device:CPU:0", "/device:CPU:1"): "mirrored"}
  for devices, expected in cases.items():
    monkeypatch.setattr(distribute, "_replica_devices",
                        lambda cpu_replicas, d=devices: list(d))
    assert distribute._auto_strategy_name(None, 0) == expected, devices
  assert distribute._auto_strategy_name("local", 0) == "tpu"
