"""PyTorch baselines for the bench scripts (used only where torch is installed).

`pip install torch==2.13.0` (the CPU wheel; the `torch` extra of setup.py). torchvision is
not needed: the two networks are written here with `torch.nn` in the layouts of torchvision's
AlexNet and DenseNet-121, and the SketchZooms head and fusion of the public code.

- `SketchZoomsAlexNet`: views [B, K, 3, S, S] -> descriptors [B, 128] (alexnet features,
  dropout / fc 4096 / ReLU, fc 128, max over the K views).
- `DenseNet121Features`: images [B, 3, H, W] -> [B, 1024] (global max pool, as our towers).
- `zoom_views_torch`: the SketchZooms zoom views of points of one image with
  `affine_grid` + `grid_sample`, the same geometry as `sketch_tf.data.zooms.zoom_views`
  (bilinear at output pixel centres, white outside the image, min-max stretch per view).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from sketch_tf.tools.torch_reference import alexnet_features


class SketchZoomsAlexNet(nn.Module):
    """The original SketchZooms network (random weights; only its speed is measured)."""

    def __init__(self, dim: int = 128, hidden: int = 4096):
        super().__init__()
        self.features = alexnet_features()
        self.pool = nn.AdaptiveAvgPool2d(6)
        self.head = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 36, hidden), nn.ReLU(True), nn.Linear(hidden, dim)
        )

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        b, k = views.shape[:2]
        x = self.pool(self.features(views.reshape(b * k, *views.shape[2:])))
        return self.head(x.flatten(1)).reshape(b, k, -1).amax(1)


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int = 32, bn_size: int = 4):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(True), nn.Conv2d(cin, bn_size * growth, 1, bias=False),
            nn.BatchNorm2d(bn_size * growth), nn.ReLU(True),
            nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False),
        )  # fmt: skip

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class DenseNet121Features(nn.Module):
    """DenseNet-121 (growth 32, blocks 6 / 12 / 24 / 16, compression 0.5) + global max pool."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(True),
            nn.MaxPool2d(3, 2, 1),
        ]  # fmt: skip
        c = 64
        for i, n in enumerate((6, 12, 24, 16)):
            for _ in range(n):
                layers.append(_DenseLayer(c))
                c += 32
            if i < 3:
                layers += [nn.BatchNorm2d(c), nn.ReLU(True), nn.Conv2d(c, c // 2, 1, bias=False)]
                layers.append(nn.AvgPool2d(2, 2))
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU(True)]
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        return self.features(x).amax((2, 3))


def zoom_views_torch(
    image: torch.Tensor,
    points: torch.Tensor,
    zooms=(1.8, 1.3, 0.8),
    view_size: int = 224,
    base_half_size: float = 100.0,
    reference_size: float = 512.0,
) -> torch.Tensor:
    """Zoom views of N points of one image.

    Args:
      image: float32 [3, H, W] in [0, 1]; points: float32 [N, 2] (x, y) pixels, origin at
        the top-left corner of pixel (0, 0) (the convention of `sketch_tf.data.zooms`).

    Returns:
      float32 [N, K, 3, S, S], each view min-max stretched per channel.
    """
    _, h, w = image.shape
    padded = F.pad(image[None], (1, 1, 1, 1), value=1.0)  # white beyond the border
    hp, wp = h + 2, w + 2
    n, k, s = points.shape[0], len(zooms), view_size
    half = base_half_size * torch.tensor(zooms) * (h / reference_size)  # [K]
    # align_corners=False: normalised -1 / +1 are the outer edges of the padded image.
    cx = (points[:, 0] + 1.0) / wp * 2.0 - 1.0  # [N]
    cy = (points[:, 1] + 1.0) / hp * 2.0 - 1.0
    theta = torch.zeros(n, k, 2, 3)
    theta[..., 0, 0] = (half / wp * 2.0)[None]
    theta[..., 1, 1] = (half / hp * 2.0)[None]
    theta[..., 0, 2] = cx[:, None]
    theta[..., 1, 2] = cy[:, None]
    grid = F.affine_grid(theta.reshape(n * k, 2, 3), [n * k, 3, s, s], align_corners=False)
    # One sampled "image" of N K S rows against the single input: no copy of the image per view.
    views = F.grid_sample(
        padded, grid.reshape(1, n * k * s, s, 2), mode="bilinear", padding_mode="border",
        align_corners=False,
    )  # fmt: skip
    views = views.reshape(3, n * k, s, s).transpose(0, 1)
    lo = views.amin((2, 3), keepdim=True)
    hi = views.amax((2, 3), keepdim=True)
    rng = hi - lo
    views = torch.where(rng > 0, (views - lo) / torch.where(rng > 0, rng, 1.0), views)
    return views.reshape(n, k, 3, s, s)
