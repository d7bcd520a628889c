"""The ``minegan`` command line on a tiny temporary zoo: train (one and several sources), sample, register."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from cli.main import main
from core.model_file import load_model
from core.zoo import load_source_file
from tests.helpers import target_zip_bytes, write_tiny_zoo

TINY = ["--mining-steps", "2", "--finetune-steps", "1", "--batch-size", "8", "--checkpoint-every", "1"]


@pytest.fixture
def zoo_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "zoo"
    write_tiny_zoo(d, "tiny-a")
    write_tiny_zoo(d, "tiny-b")
    monkeypatch.setattr("core.zoo.WEIGHTS_DIR", d)
    monkeypatch.setenv("MINEGAN_MODELS_DIR", str(tmp_path / "models"))  # what a test registers stays in it
    return d


def test_train_sample_and_errors(zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "t.zip"
    target.write_bytes(target_zip_bytes())
    assert main(["train", "--source", "tiny-a", "--target", str(target), "--method", "minegan", "--out", str(tmp_path / "r"), *TINY]) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["method"] == "minegan" and summary["steps"] == 3
    assert "auto for tiny-a: critic_init source, critic_warmup 0, critic_patch 0, finetune_layers 0, miner_init paper" in out.err  # the autos
    assert main(["sample", str(tmp_path / "r"), "-n", "4", "-o", str(tmp_path / "g.png")]) == 0
    assert Image.open(tmp_path / "g.png").size == (2 * 30 + 2, 2 * 30 + 2)
    assert main(["sample", str(tmp_path / "r"), "-n", "3", "--format", "zip", "-o", str(tmp_path / "s.zip")]) == 0
    assert len(zipfile.ZipFile(tmp_path / "s.zip").namelist()) == 3
    assert main(["train", "--source", "nope", "--target", str(target), "--out", str(tmp_path / "x")]) == 2
    assert "unknown source model" in capsys.readouterr().err
    assert main(["train", "--source", "tiny-a", "--target", str(tmp_path / "missing.zip"), "--out", str(tmp_path / "y")]) == 2


def test_several_sources_fusion_and_register(zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "t.zip"
    target.write_bytes(target_zip_bytes())
    assert main(["train", "--source", "tiny-a", "--source", "tiny-b", "--target", str(target), "--method", "mine",
                 "--selection", "max", "--out", str(tmp_path / "m"), *TINY]) == 0
    out = capsys.readouterr()
    assert set(json.loads(out.out.strip().splitlines()[-1])["selector_pi"]) == {"tiny-a", "tiny-b"}
    assert "selector pi: tiny-a" in out.err
    assert main(["train", "--source", "tiny-a,tiny-b", "--target", str(target), "--method", "fusion", "--fusion-steps", "2",
                 "--out", str(tmp_path / "f"), *TINY]) == 0
    assert load_source_file(tmp_path / "f" / "fused.pt").meta["fusion"]["config"]["distill"] == 30.0  # the default
    assert main(["train", "--source", "tiny-a,tiny-b", "--target", str(target), "--method", "fusion", "--fusion-steps", "2",
                 "--fusion-distill", "0", "--no-fusion-lr-decay", "--fusion-lr-generator", "1e-4", "--out", str(tmp_path / "paper"), *TINY]) == 0
    paper = load_source_file(tmp_path / "paper" / "fused.pt").meta["fusion"]["config"]  # Eq. 15-16 alone, constant rates
    assert "distill" not in paper and "lr_decay" not in paper and paper["lr_generator"] == 1e-4
    assert main(["zoo", "register", str(tmp_path / "f"), "my-fused"]) == 0
    assert main(["zoo", "register", str(tmp_path / "f"), "tiny-a"]) == 2  # built-in ids are taken
    capsys.readouterr()
    assert main(["zoo", "list"]) == 0
    assert "my-fused" in capsys.readouterr().out
    assert main(["train", "--source", "my-fused", "--target", str(target), "--method", "mine", "--out", str(tmp_path / "g"), *TINY]) == 0


def test_mnist_zip_with_ratios(tmp_path: Path) -> None:
    assert main(["mnist-zip", "--digits", "2,8", "--ratios", "0.3,0.7", "-n", "20", "-o", str(tmp_path / "m.zip")]) == 0
    names = zipfile.ZipFile(tmp_path / "m.zip").namelist()
    assert sum(n.startswith("digit2") for n in names) == 6 and sum(n.startswith("digit8") for n in names) == 14
    img = Image.open(io.BytesIO(zipfile.ZipFile(tmp_path / "m.zip").read(names[0])))
    assert img.size == (28, 28)


def test_zoo_build_into_another_directory_leaves_the_shipped_weights_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    shipped = tmp_path / "zoo"
    write_tiny_zoo(shipped, "mnist-5-9")  # stands in for the shipped weights of that recipe
    before = (shipped / "mnist-5-9.pt").read_bytes()
    monkeypatch.setattr("core.zoo.WEIGHTS_DIR", shipped)
    monkeypatch.setenv("MINEGAN_MODELS_DIR", str(tmp_path / "user"))
    out = tmp_path / "longer"
    assert main(["zoo", "build", "mnist-5-9", "--steps", "1", "--weights-dir", str(out)]) == 0
    assert (shipped / "mnist-5-9.pt").read_bytes() == before
    built = load_source_file(out / "mnist-5-9.pt")
    assert built.meta["steps"] == 1 and built.meta["digits"] == [5, 6, 7, 8, 9] and built.G.cfg.width == 32
    # registered under a new id, it is a source beside the shipped one
    assert main(["zoo", "register", str(out / "mnist-5-9.pt"), "mnist-5-9-s1"]) == 0
    from core.zoo import load_source
    assert load_source("mnist-5-9-s1").meta["steps"] == 1 and load_source("mnist-5-9").G.cfg.width != 32


def test_zoo_add_an_onnx_generator_and_mine_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.hostile import onnx_generator

    monkeypatch.setenv("MINEGAN_MODELS_DIR", str(tmp_path / "models"))
    (tmp_path / "g.onnx").write_bytes(onnx_generator(z_dim=8))
    cfg = '{"z_dim": 8, "img_size": 28, "channels": 1, "z_dist": "uniform", "output_range": [-1, 1]}'
    assert main(["zoo", "add", str(tmp_path / "g.onnx"), "--id", "my-onnx", "--family", "onnx", "--config", cfg]) == 0
    assert "no critic" in capsys.readouterr().err
    assert main(["zoo", "list"]) == 0 and "my-onnx" in capsys.readouterr().out
    target = tmp_path / "t.zip"
    target.write_bytes(target_zip_bytes())
    assert main(["train", "--source", "my-onnx", "--target", str(target), "--method", "minegan", "--critic-warmup", "1",
                 "--out", str(tmp_path / "r"), *TINY]) == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out.strip().splitlines()[-1])
    assert summary["critic"]["init"] == "fresh" and summary["steps"] == 4  # auto: a fresh critic; 1 warm-up + 3 steps
    kept = summary["keep_best"]  # a fresh critic: the best of the end of mining and each finetuning checkpoint is published
    assert kept["last_step"] == 4 and str(kept["published_step"]) in kept["scores"] and "published step" in cap.err
    (tmp_path / "bad.onnx").write_bytes(onnx_generator(out_rank=2))
    assert main(["zoo", "add", str(tmp_path / "bad.onnx"), "--id", "bad", "--family", "onnx", "--config", cfg]) == 2
    assert "rank 2" in capsys.readouterr().err and not (tmp_path / "models" / "bad.pt").exists()


def test_zoo_add_a_pt2_generator_mine_it_and_export_the_sampler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The README's path for any architecture: torch.export -> `minegan zoo add --family pt2` -> train -> `minegan export`,
    whose .pt2 draws `minegan sample`'s images and whose --triton folder holds the ONNX file and its config."""
    from tests.hostile import pt2_generator

    monkeypatch.setenv("MINEGAN_MODELS_DIR", str(tmp_path / "models"))
    (tmp_path / "g.pt2").write_bytes(pt2_generator())
    cfg = '{"z_dim": 8, "img_size": 28, "channels": 1}'
    assert main(["zoo", "add", str(tmp_path / "g.pt2"), "--id", "my-pt2", "--family", "pt2", "--config", cfg]) == 0
    target = tmp_path / "t.zip"
    target.write_bytes(target_zip_bytes())
    assert main(["train", "--source", "my-pt2", "--target", str(target), "--method", "minegan++", "--critic-warmup", "1",
                 "--out", str(tmp_path / "r"), *TINY]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "r"), "--format", "pt2", "-o", str(tmp_path / "m.pt2")]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"] == {"u": ["N", 8]}
    model, _ = load_model(tmp_path / "r" / "model.pt")
    u = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.export.load(str(tmp_path / "m.pt2")).module()(u), model.sample(5, seed=0))
    assert main(["export", str(tmp_path / "r"), "--format", "onnx", "--triton", str(tmp_path / "repo")]) == 0
    assert (tmp_path / "repo" / "minegan" / "config.pbtxt").exists() and (tmp_path / "repo" / "minegan" / "1" / "model.onnx").exists()
