"""The runtime layer: the Trainer's only path to hardware (devices, precision, processes)."""

from fulmen.runtime.strategy import SingleDeviceStrategy, Strategy

__all__ = ["SingleDeviceStrategy", "Strategy"]
