"""PyTorch SketchZooms -> Keras conversion: descriptors must match to 1e-4.

The PyTorch models are rebuilt here with torch.nn, mirroring the public SketchZooms code
(`net/SketchNetwork*.py`: torchvision alexnet / vgg11 / resnet18 bodies, its heads and its
``view(-1, 128, 3).max(2)`` fusion), with random weights (and random BatchNorm statistics).
"""

from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (CPU) is an optional test extra")
nn = torch.nn

from sketch_tf.tools.convert_torch_sketchzooms import (  # noqa: E402
    convert_state_dict,
    load_state_dict,
    main,
)
from sketch_tf.tools.torch_reference import alexnet_features as _alexnet_features  # noqa: E402


class TorchSketchAlex(nn.Module):
    """SketchNetwork: alexnet features, classifier[:-4] (dropout, fc, relu), dimreduction."""

    def __init__(self, hidden=4096, dim=128):
        super().__init__()
        self.dim = dim
        self.features = _alexnet_features()
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(256 * 6 * 6, hidden), nn.ReLU(True))
        self.dimreduction = nn.Sequential(nn.Linear(hidden, dim))
        self.class_binary = nn.Sequential(nn.Linear(dim * 2, dim), nn.Linear(dim, 2))  # unused

    def forward(self, views):  # [B, 3, C, S, S]
        x = views.reshape(-1, *views.shape[2:])
        x = self.classifier(self.features(x).reshape(x.shape[0], 256 * 6 * 6))
        return self.dimreduction(x).reshape(-1, self.dim, 3).max(dim=2)[0]


class _Vgg11(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        cfg, layers, c = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"), [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 49, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, 10),
        )  # fmt: skip


class TorchSketchVgg(nn.Module):
    """SketchNetworkVGG: vgg11 features + avgpool, classifier[0] only, dimreduction."""

    def __init__(self, hidden, dim=128):
        super().__init__()
        self.dim = dim
        self.original_model = _Vgg11(hidden)
        self.classifier = self.original_model.classifier[0]
        self.dimreduction = nn.Sequential(nn.Linear(hidden, dim))

    def forward(self, views):
        x = views.reshape(-1, *views.shape[2:])
        x = self.original_model.avgpool(self.original_model.features(x))
        x = self.classifier(x.reshape(x.shape[0], -1))
        return self.dimreduction(x).reshape(-1, self.dim, 3).max(dim=2)[0]


class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class _Resnet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c = 64
        for i, w in enumerate((64, 128, 256, 512), start=1):
            s = 1 if i == 1 else 2
            setattr(self, f"layer{i}", nn.Sequential(_Block(c, w, s), _Block(w, w, 1)))
            c = w
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Sequential(OrderedDict([]))  # as in SketchNetworkResnet: identity

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TorchSketchResnet(nn.Module):
    def __init__(self, dim=128):
        super().__init__()
        self.dim = dim
        self.original_model = _Resnet18()
        self.dimreduction = nn.Sequential(nn.Linear(512, dim))

    def forward(self, views):
        x = self.original_model(views.reshape(-1, *views.shape[2:]))
        return self.dimreduction(x).reshape(-1, self.dim, 3).max(dim=2)[0]


def _randomise(net, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
            elif isinstance(m, nn.Conv2d | nn.Linear):
                # Scale so that activations neither vanish nor explode through the depth.
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.uniform_(-0.1, 0.1)
    return net.eval()


def _compare(torch_net, arch, size, seed, state=None):
    rng = np.random.default_rng(seed)
    views = rng.random((2, 3, size, size, 3), dtype=np.float32)  # [B, K, S, S, C]
    with torch.no_grad():
        ref = torch_net(torch.from_numpy(views).permute(0, 1, 4, 2, 3).contiguous()).numpy()
    model = convert_state_dict(state if state is not None else torch_net.state_dict(), arch, size)
    got = model(views, training=False).numpy()
    assert got.shape == ref.shape == (2, 128)
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(ref).max() > 1e-2  # a meaningful comparison, not two zero vectors
    np.testing.assert_allclose(got, ref, atol=1e-4 * scale, rtol=0)
    return model


def test_alexnet_original_size_matches_torch():
    _compare(_randomise(TorchSketchAlex(), 0), "alexnet", 224, 0)


def test_vgg11_matches_torch_and_accepts_dataparallel_prefix():
    net = _randomise(TorchSketchVgg(hidden=64), 1)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    _compare(net, "vgg11", 32, 1, state)


def test_resnet18_matches_torch():
    _compare(_randomise(TorchSketchResnet(), 2), "resnet18", 64, 2)


def test_cli_roundtrip_and_errors(tmp_path):
    net = _randomise(TorchSketchAlex(hidden=32), 3)
    ckpt = tmp_path / "ckpt.pkl"
    torch.save({"model_state_dict": net.state_dict(), "epoch": 3}, ckpt)
    assert set(load_state_dict(str(ckpt))) == set(net.state_dict())
    out = tmp_path / "m.keras"
    assert main([f"--state_dict={ckpt}", "--arch=alexnet", f"--out={out}", "--view_size=224"]) == 0
    import keras

    reloaded = keras.models.load_model(out)
    views = np.random.default_rng(3).random((1, 3, 224, 224, 3), dtype=np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(views).permute(0, 1, 4, 2, 3).contiguous()).numpy()
    np.testing.assert_allclose(reloaded(views).numpy(), ref, atol=1e-4)

    state = net.state_dict()
    state["extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="unused state-dict keys.*extra.weight"):
        convert_state_dict(state, "alexnet")
    state = net.state_dict()
    state["features.3.weight"] = torch.zeros(192, 64, 3, 3)
    with pytest.raises(ValueError, match="features.3"):
        convert_state_dict(state, "alexnet")
