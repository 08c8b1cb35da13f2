"""PyTorch layouts shared by the weight-conversion test and the PyTorch bench baselines.

Imported only where torch is installed (the optional `torch` extra).
"""

from torch import nn


def alexnet_features() -> nn.Sequential:
    """torchvision AlexNet's `features` (the SketchZooms trunk), state-dict keys
    `features.{0, 3, 6, 8, 10}.{weight, bias}` once assigned to a module's `features`."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(3, 2),
    )  # fmt: skip
