"""Which finetuning mechanism keeps a generator-only source intact -> docs/faces.md section "adapt_screen" (issue 32).

The faces pair of benchmarks/faces.py (the ``gan-face-generate`` DCGAN without a critic -> the 100 LFW faces), method
``minegan++`` at 200 mining + 100 finetuning steps, batch 16, seed ``--seed``. Every variant starts its finetuning from the
same end-of-mining checkpoint (step 250: 50 warm-up + 200 mining steps, the service's defaults for this source at the
time: no adaptation option on), so variants differ only in what the finetuning stage does; the critic regularisers
(r1_weight, lecam_weight) therefore act from the start of finetuning only. Per variant: KID (Inception, 250 samples:
a screen, not the final table) and the share of 200 samples in which OpenCV's Haar cascade finds a face, at the end of
finetuning (the last candidate: ``keep_best`` off).

Usage:  python benchmarks/adapt_screen.py [--variants NAME=JSON;...] [--seed 0] [--out DIR] [--report]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._doc import update_section  # noqa: E402
from benchmarks.faces import _faces_zip, _weights  # noqa: E402
from benchmarks.finetune_faces import DOC, face_rate  # noqa: E402
from core import checkpoints, zoo  # noqa: E402
from core import methods as engine  # noqa: E402
from core.data import load_target_bytes  # noqa: E402
from core.metrics import evaluate  # noqa: E402
from core.options import CRITIC_AUTO, RunConfig, resolve  # noqa: E402

OFF = {"g_ema": 0, "cdc_weight": 0, "r1_weight": 0, "lecam_weight": 0, "keep_best": "off"}
PAPER_CRITIC = dict(zip(("n_critic", "lr_critic"), CRITIC_AUTO["source"]))  # Appendix A's: what the screens' mining ran
MINER_AS_MEASURED = {"lr_miner": 4e-5}  # the identity miner's rate the finetuning screens ran (their shared mining checkpoint)
VARIANTS = ('none={};ema99={"g_ema":0.99};ema995={"g_ema":0.995};ema999={"g_ema":0.999};lrg1e5={"lr_generator":1e-5};'
            'fl2={"finetune_layers":2};aug={"augment":"color,translation,cutout"};cdc100={"cdc_weight":100};'
            'cdc1000={"cdc_weight":1000};r1={"r1_weight":10};lecam={"lecam_weight":0.1};'
            'ema99cdc={"g_ema":0.99,"cdc_weight":1000};ema99aug={"g_ema":0.99,"augment":"color,translation,cutout"};'
            'ema995lrg2={"g_ema":0.995,"lr_generator":2e-4};ema995lrg4={"g_ema":0.995,"lr_generator":4e-4};'
            'ema999lrg4={"g_ema":0.999,"lr_generator":4e-4};ema995nc2={"g_ema":0.995,"n_critic":2};'
            'ema995nc10={"g_ema":0.995,"n_critic":10};ema995lrd4={"g_ema":0.995,"lr_critic":4e-4}')


def _source() -> zoo.SourceModel:
    src = zoo.source_from_state_dicts("faces", "dcgan64", {"z_dim": 100, "width": 64, "channels": 3}, _weights())
    path = Path(tempfile.mkdtemp()) / "faces.pt"
    checkpoints.save(src, path)
    return zoo.load_source_file(path)


def _mined(source: zoo.SourceModel, target: torch.Tensor, seed: int, out: Path) -> Path:
    """The end-of-mining checkpoint every variant starts from (a run with nothing on, stopped after mining)."""
    path = out / f"mined-s{seed}.pt"
    if not path.exists():
        cfg = RunConfig(method="minegan++", mining_steps=200, finetune_steps=0, batch_size=16, seed=seed, **OFF, **PAPER_CRITIC, **MINER_AS_MEASURED)
        with tempfile.TemporaryDirectory() as tmp:
            engine.train(cfg, source, target, tmp, after_checkpoint=lambda p: shutil.copy(p, path) if p.name == "ckpt-250.pt" else None)
    return path


def _variant(name: str, opts: dict, source: zoo.SourceModel, target: torch.Tensor, mined: Path, seed: int) -> dict:  # type: ignore[type-arg]
    given = {**OFF, **PAPER_CRITIC, **MINER_AS_MEASURED, **opts}
    # mining is the shared checkpoint, so a variant's n_critic and lr_critic are its finetuning critic's
    given.setdefault("finetune_n_critic", given["n_critic"])
    given.setdefault("finetune_lr_critic", given["lr_critic"])
    cfg = RunConfig(method="minegan++", mining_steps=200, finetune_steps=100, batch_size=16, seed=seed, **given)
    with tempfile.TemporaryDirectory() as tmp:
        run = engine.mining_run(cfg, [source], target, Path(tmp), resolve(cfg, [source.info]))
        run.same_config = lambda a, b: True  # the mining checkpoint was written by another config: only finetuning differs
        shutil.copy(mined, Path(tmp) / "ckpt-250.pt")
        run.resume()
        t0 = time.time()
        run.run(checkpoint_every=50)
        model = engine._finish(resolve(cfg, [source.info]), run, Path(tmp), target).model
        x = torch.cat([model.sample(250, seed=123), model.sample(250, seed=124)])
    return {"opts": opts, "kid": evaluate(x[:250], target, ["kid"])["kid"], "faces": face_rate(x[:200]), "wall_s": round(time.time() - t0)}


def _whole(name: str, opts: dict, source: zoo.SourceModel, target: torch.Tensor, seed: int) -> dict:  # type: ignore[type-arg]
    """A whole job at the service's defaults for this source with ``opts`` set (warm-up, mining and finetuning all run, so
    an option that acts before finetuning is measured too); the model ``train`` publishes is scored."""
    cfg = RunConfig(method="minegan++", mining_steps=200, finetune_steps=100, batch_size=16, seed=seed, **opts)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        model = engine.train(cfg, source, target, tmp).model
        wall = round(time.time() - t0)
        x = torch.cat([model.sample(250, seed=123), model.sample(250, seed=124)])
        res = {"opts": opts, "kid": evaluate(x[:250], target, ["kid"])["kid"], "faces": face_rate(x[:200]), "wall_s": wall}
        if model.colour is not None and model.colour.band:  # the same model without Eq. BAND's band limit
            res["band"] = model.colour.band
            model.colour.band = 0
            x = model.sample(250, seed=123)
            res |= {"kid_no_band": evaluate(x, target, ["kid"])["kid"], "faces_no_band": face_rate(x[:200])}
    return res


def diagnose(source: zoo.SourceModel, target: torch.Tensor, mined: Path, seed: int) -> dict:  # type: ignore[type-arg]
    """Why plain finetuning hurts: the "none" variant scored at every 25th finetuning step (KID on 250 samples, faces found,
    the pixel-space MMD of core/keep_best.py), how far each generator layer moved, and what the critic keys on at the end of
    mining (the share of its input gradient's power below 4 cycles per image; the critic's mean on targets and fakes)."""
    from core.keep_best import pixel_mmd
    from core.nets import generate

    cfg = RunConfig(method="minegan++", mining_steps=200, finetune_steps=100, batch_size=16, seed=seed, **OFF, **PAPER_CRITIC, **MINER_AS_MEASURED)
    steps: dict[str, dict[str, float]] = {}

    def score(step: int, sample: object) -> None:
        x = torch.cat([sample(250, 123), sample(250, 124)])  # type: ignore[operator]
        steps[str(step)] = {"kid": evaluate(x[:250], target, ["kid"])["kid"], "faces": face_rate(x[:200]), "pixel_mmd": pixel_mmd(x[:256], target)}

    with tempfile.TemporaryDirectory() as tmp:
        run = engine.mining_run(cfg, [source], target, Path(tmp), resolve(cfg, [source.info]))
        run.same_config = lambda a, b: True
        shutil.copy(mined, Path(tmp) / "ckpt-250.pt")
        run.resume()
        before = {k: v.clone() for k, v in run.mods.G.state_dict().items()}
        D = run.mods.D
        with torch.no_grad():
            fake = generate(run.mods.G, run.mods.M, torch.randn(100, 100, generator=torch.Generator().manual_seed(5)))
            fake = run.mods.colour(fake) if run.mods.colour is not None else fake
        spectrum = {}
        for name, x in (("targets", target), ("fakes", fake)):
            x = x.clone().requires_grad_(True)
            out = D(x)
            (g,) = torch.autograd.grad(out.sum(), x)
            power = torch.fft.fft2(g.mean(1)).abs().pow(2).mean(0)
            f = torch.fft.fftfreq(64).abs() * 64
            low = power[(f[:, None] ** 2 + f[None] ** 2).sqrt() < 4].sum() / power.sum()
            spectrum[name] = {"critic_mean": out.mean().item(), "grad_power_below_4_cycles": low.item()}
        score(250, lambda n, seed: engine._current_model(run.mods).sample(n, seed=seed))
        run.run(engine._reporting(None, score, 25, run.mods), checkpoint_every=50)
        after = run.mods.G.state_dict()
        layers = {k: ((after[k] - v).norm() / v.norm()).item() for k, v in before.items() if k.endswith("weight") and v.dim() > 1}
    return {"steps": steps, "layers": layers, "critic": spectrum}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default=VARIANTS, help="name=JSON options, separated by ';'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "adapt_screen"))
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--section", default="adapt_screen", help="the docs/faces.md section to write: adapt_screen (every cached "
                    "variant, the cause) or another name (only --variants, under --title)")
    ap.add_argument("--title", default="The finetuning mechanisms, one at a time")
    ap.add_argument("--whole", action="store_true", help="each variant is a whole job from the start (warm-up, mining, "
                    "finetuning) at the service's defaults for this source with its options set, not a finetuning stage "
                    "from the shared end-of-mining checkpoint")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    target = load_target_bytes(_faces_zip(), 3, 64).images
    if not a.report:
        source = _source()
        if not a.whole:
            mined = _mined(source, target, a.seed, out)
            diag = out / f"diagnose-s{a.seed}.json"
            if not diag.exists():
                diag.write_text(json.dumps(diagnose(source, target, mined, a.seed)))
        for item in a.variants.split(";"):
            name, opts = item.split("=", 1)
            res = out / f"{name}-s{a.seed}.json"
            if not res.exists():
                run = _whole(name, json.loads(opts), source, target, a.seed) if a.whole else \
                    _variant(name, json.loads(opts), source, target, mined, a.seed)
                res.write_text(json.dumps(run))
            print(name, res.read_text(), flush=True)
    rows = [f"| {'job' if a.whole else 'finetuning'} variant (options) | KID (250 samples) | faces found (Haar, 200 samples) |" +
            (" job time |" if a.whole else ""),
            "|---|---|---|" + ("---|" if a.whole else "")]
    listed = VARIANTS if a.section == "adapt_screen" else a.variants
    for item in listed.split(";"):
        name = item.split("=", 1)[0]
        res = out / f"{name}-s{a.seed}.json"
        if res.exists():
            m = json.loads(res.read_text())
            rows.append(f"| {name} `{json.dumps(m['opts'])}` | {m['kid']:.4f} | {100 * m['faces']:.0f} % |" +
                        (f" {m['wall_s']} s |" if a.whole else ""))
    diag = out / f"diagnose-s{a.seed}.json"
    cause: list[str] = []
    if diag.exists() and a.section == "adapt_screen":
        d = json.loads(diag.read_text())
        cause = ["", "Plain finetuning (`none`) step by step (step 250 is the end of mining):", "",
                 "| step | KID (250 samples) | faces found | pixel-space MMD to the targets (Eq. PMMD) |", "|---|---|---|---|",
                 *[f"| {k} | {m['kid']:.4f} | {100 * m['faces']:.0f} % | {m['pixel_mmd']:.4f} |" for k, m in d["steps"].items()], "",
                 "Relative change of each generator layer's weights over the 100 steps (first to last): " +
                 ", ".join(f"{v:.3f}" for v in d["layers"].values()) + ".", "",
                 "The critic at the end of mining: mean score " + ", ".join(f"{k} {v['critic_mean']:.1f}" for k, v in d["critic"].items()) +
                 "; share of its input gradient's power below 4 cycles per image: " +
                 ", ".join(f"{k} {100 * v['grad_power_below_4_cycles']:.0f} %" for k, v in d["critic"].items()) + "."]
    # the command that measures (a --report run rewrites the table from the cache)
    cmd = " ".join(["python benchmarks/adapt_screen.py", *(shlex.quote(x) for x in sys.argv[1:] if x != "--report")])
    how = ("every variant a whole job (warm-up, 200 mining and 100 finetuning steps, batch 16) at the service's defaults for "
           "this generator-only upload with the variant's options set (two jobs at a time, one thread each); the published "
           "model (keep_best's choice) is scored, job time without the scoring" if a.whole else
           "every variant finetuned for 100 steps from the same end-of-mining checkpoint (a variant's `n_critic` and `lr_critic` "
           "are its finetuning critic's, `finetune_n_critic` and `finetune_lr_critic` in a job); the published model is the last step")
    update_section(a.section, "\n".join([
        f"### {a.title}", "",
        f"Command: `{cmd}` ({datetime.date.today().isoformat()}, 2-core CPU). `minegan++`, seed {a.seed}, {how}.", "", *rows, *cause]), DOC)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
