"""The project's own MNIST classifier: classifier error (CVPR supplement Sec. D) and digit features.

Trained by ``minegan zoo build mnist-classifier`` on the 50k training split; its test accuracy on the
10k test split is stored in the weights file and reported by ``minegan zoo list``.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from core import checkpoints
from core.data import load_mnist
from core.nets import Classifier, ClassifierConfig

log = logging.getLogger(__name__)

CLASSIFIER_FORMAT = "minegan-classifier/1"


def default_path() -> Path:
    return Path(__file__).resolve().parent.parent / "zoo_weights" / "mnist-classifier.pt"


@torch.no_grad()
def accuracy(net: Classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    net.eval()
    preds = torch.cat([net(images[i : i + 1000]).argmax(1) for i in range(0, images.shape[0], 1000)])
    return float((preds == labels).float().mean())


def build_classifier(out: Path, epochs: int = 3, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    x, y = load_mnist("train")
    net = Classifier(ClassifierConfig())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    t0 = time.time()
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(x.shape[0])
        for i in range(0, x.shape[0], 128):
            idx = perm[i : i + 128]
            # small random shifts make the classifier robust to generated digits that sit off-centre
            xb = torch.roll(x[idx], shifts=tuple(torch.randint(-2, 3, (2,)).tolist()), dims=(2, 3))
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        log.info("classifier epoch %d done", epoch + 1)
    xt, yt = load_mnist("test")
    acc = accuracy(net, xt, yt)
    meta = {"test_accuracy": acc, "epochs": epochs, "seed": seed, "train_seconds": round(time.time() - t0, 1),
            "command": f"minegan zoo build mnist-classifier --seed {seed}"}
    log.info("classifier test accuracy %.4f", acc)
    return checkpoints.save({"format": CLASSIFIER_FORMAT, "classifier": checkpoints.pack_module("classifier", net), "meta": meta}, out)


@lru_cache(maxsize=2)
def load_classifier(path: str | None = None) -> tuple[Classifier, dict[str, object]]:
    p = Path(path) if path else default_path()
    if not p.exists():
        raise FileNotFoundError(f"{p} missing; build it with `minegan zoo build mnist-classifier`")
    obj = checkpoints.load(p)
    if obj.get("format") != CLASSIFIER_FORMAT:
        raise checkpoints.CheckpointError(f"{p} is not a classifier file")
    net = checkpoints.unpack_module(obj["classifier"])
    assert isinstance(net, Classifier)
    return net.eval(), dict(obj["meta"])


@torch.no_grad()
def classifier_features(images: torch.Tensor) -> np.ndarray:
    net, _ = load_classifier()
    return torch.cat([net.features(images[i : i + 500]) for i in range(0, images.shape[0], 500)]).double().numpy()


@torch.no_grad()
def classifier_error(images: torch.Tensor, target_labels: list[int]) -> float:
    """Fraction of images the classifier does not assign to one of ``target_labels``."""
    net, _ = load_classifier()
    preds = torch.cat([net(images[i : i + 500]).argmax(1) for i in range(0, images.shape[0], 500)])
    ok = torch.isin(preds, torch.tensor(target_labels))
    return float(1.0 - ok.float().mean())
