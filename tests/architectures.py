"""A corpus of generator architectures, with random weights and tiny widths, and the files users make of them.

Used by tests/core/test_architectures.py and benchmarks/architectures.py (the table in docs/architectures.md).
Each architecture is written here from its definition; each format is written the way PyTorch writes it today.
"""

from __future__ import annotations

import io
import math
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Z = 8  # latent size of every architecture here


class DCGAN(nn.Module):
    """Radford et al.: transposed convolutions with BatchNorm and ReLU, Tanh; 16x16."""

    def __init__(self, w: int = 8) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(Z, 4 * w, 4, 1, 0, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(True),  # 4x4
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(True),  # 8x8
            nn.ConvTranspose2d(2 * w, 3, 4, 2, 1, bias=False), nn.Tanh())  # 16x16

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z[:, :, None, None])  # type: ignore[no-any-return]


class ModulatedConv(nn.Module):
    """StyleGAN2's modulated and demodulated convolution (Karras et al., CVPR 2020, Eq. 1-3), as a grouped
    convolution over the batch, with an optional 2x upsampling followed by a [1, 2, 1] blur, and a noise input."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, k: int = 3, demodulate: bool = True, up: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k))
        self.affine = nn.Linear(w_dim, c_in)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("blur", torch.outer(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, 1.0])) / 16)
        self.demodulate, self.up, self.k = demodulate, up, k

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = F.conv2d(x.reshape(-1, 1, *x.shape[2:]), self.blur[None, None], padding=1).reshape(n, c, *x.shape[2:])
        style = self.affine(w) + 1.0  # [N, c_in]
        wt = self.weight[None] * style[:, None, :, None, None] / math.sqrt(c * self.k * self.k)  # Eq. 1
        if self.demodulate:
            wt = wt * torch.rsqrt(wt.pow(2).sum([2, 3, 4], keepdim=True) + 1e-8)  # Eq. 3
        out = F.conv2d(x.reshape(1, -1, *x.shape[2:]), wt.reshape(-1, c, self.k, self.k), padding=self.k // 2, groups=n)
        out = out.reshape(n, -1, *out.shape[2:])
        return out + self.noise_strength * torch.randn_like(out[:, :1])


class StyleGAN2(nn.Module):
    """A StyleGAN2-type generator: a mapping network (normalised z through an MLP), a learned constant input,
    modulated convolutions with noise, upsampling with blur, and a toRGB layer; 16x16."""

    def __init__(self, ch: int = 8, w_dim: int = 8) -> None:
        super().__init__()
        self.mapping = nn.Sequential(nn.Linear(Z, w_dim), nn.LeakyReLU(0.2), nn.Linear(w_dim, w_dim), nn.LeakyReLU(0.2))
        self.const = nn.Parameter(torch.randn(1, ch, 4, 4))
        self.convs = nn.ModuleList([ModulatedConv(ch, ch, w_dim, up=i in (1, 3)) for i in range(5)])
        self.to_rgb = ModulatedConv(ch, 3, w_dim, k=1, demodulate=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.mapping(F.normalize(z, dim=1) * math.sqrt(Z))
        x = self.const.expand(z.shape[0], -1, -1, -1)
        for conv in self.convs:
            x = F.leaky_relu(conv(x, w), 0.2)
        return torch.tanh(self.to_rgb(x, w))


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.bn1, self.bn2 = nn.BatchNorm2d(c), nn.BatchNorm2d(c)
        self.conv1, self.conv2 = sn(nn.Conv2d(c, c, 3, padding=1)), sn(nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x + self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))  # type: ignore[no-any-return]


class ResNetSN(nn.Module):
    """An SNGAN-type ResNet generator: residual up-blocks with BatchNorm and spectrally normalised convolutions; 16x16."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(Z, c * 4 * 4)
        self.blocks = nn.Sequential(ResBlock(c), ResBlock(c))
        self.bn = nn.BatchNorm2d(c)
        self.out = nn.Conv2d(c, 3, 3, padding=1)
        self.c = c

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.fc(z).reshape(-1, self.c, 4, 4))
        return torch.tanh(self.out(F.relu(self.bn(x))))


class Conditional(nn.Module):
    """A class-conditional generator: z concatenated with a learned class embedding, then an MLP to 1x16x16 images."""

    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_classes, 4)
        self.net = nn.Sequential(nn.Linear(Z + 4, 64), nn.ReLU(), nn.Linear(64, 256), nn.Tanh())

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, self.embed(c)], 1)).reshape(-1, 1, 16, 16)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[[], nn.Module]
    config: dict[str, Any]  # the upload config (family set per format)

    def make(self) -> nn.Module:
        torch.manual_seed(0)
        net = self.build()
        with torch.no_grad():  # non-trivial batch-norm statistics, then eval mode as a released generator ships
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.8, 1.2)
        return net.eval()

    def inputs(self, n: int) -> tuple[torch.Tensor, ...]:
        z = torch.randn(n, Z)
        return (z, torch.arange(n) % self.config["n_classes"]) if self.config.get("n_classes") else (z,)


def _project_net() -> nn.Module:
    from core.nets import Generator, GeneratorConfig

    return Generator(GeneratorConfig(z_dim=Z, img_size=16, channels=1, width=8))


ARCHS = [
    Arch("DCGAN", DCGAN, {"z_dim": Z, "img_size": 16, "channels": 3}),
    Arch("the project's generator (core/nets/gan.py)", _project_net, {"z_dim": Z, "img_size": 16, "channels": 1}),
    Arch("StyleGAN2-type", StyleGAN2, {"z_dim": Z, "img_size": 16, "channels": 3}),
    Arch("ResNet, BatchNorm + spectral norm", ResNetSN, {"z_dim": Z, "img_size": 16, "channels": 3}),
    Arch("class-conditional", Conditional, {"z_dim": Z, "img_size": 16, "channels": 1, "n_classes": 3, "class_input": "index"}),
]

# format -> (family, how the file is written); each writer returns the file's bytes or raises what the exporter raised
FORMATS = ["pt2 dynamic", "pt2 fixed batch", "ONNX legacy", "ONNX default exporter", "ONNX fixed batch"]


def write(fmt: str, arch: Arch, net: nn.Module) -> tuple[str, bytes]:
    """(family, file bytes) of ``net`` in format ``fmt``, written as its documentation says."""
    example = arch.inputs(2)
    names = ["z", "c"][: len(example)]
    batch = torch.export.Dim("n", min=1, max=1024)
    buf = io.BytesIO()
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        if fmt.startswith("pt2"):
            dynamic = {k: {0: batch} for k in names} if fmt == "pt2 dynamic" else None
            ep = torch.export.export(net, arch.inputs(1) if dynamic is None else example, dynamic_shapes=dynamic)
            torch.export.save(ep, buf)
            return "pt2", buf.getvalue()
        path = Path(tmp) / "g.onnx"
        if fmt == "ONNX legacy":
            torch.onnx.export(net, example, path, dynamo=False, input_names=names, output_names=["images"],
                              dynamic_axes={k: {0: "n"} for k in [*names, "images"]}, opset_version=17)
        elif fmt == "ONNX default exporter":
            torch.onnx.export(net, example, path, dynamic_shapes={k: {0: batch} for k in names}, external_data=False)
        else:  # fixed batch of 1, the default exporter
            torch.onnx.export(net, arch.inputs(1), path, external_data=False)
        return "onnx", path.read_bytes()
