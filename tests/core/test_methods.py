from dataclasses import replace
from pathlib import Path

import pytest
import torch

from core.methods import FUSION_METHODS, METHODS, MethodError, RunConfig, build_modules, plan, train
from core.model_file import load_model
from core.trainer import Stopped
from tests.conftest import tiny_source

TINY = dict(mining_steps=2, finetune_steps=2, batch_size=8, n_critic=2, checkpoint_every=1)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in FUSION_METHODS])  # fusion: test_fusion.py
def test_every_method_trains_and_samples(method: str, source, target, tmp_path: Path) -> None:
    progress: list[tuple[str, int, int]] = []
    res = train(RunConfig(method=method, **TINY), source, target, tmp_path,
                on_progress=lambda ph, s, t, st: progress.append((ph, s, t)))
    steps = [s for ph, s, t in progress if ph != "select"]
    assert steps == [1, 2, 3, 4] and all(t == 4 for _, _, t in progress)
    model, meta = load_model(tmp_path / "model.pt")
    assert meta["method"] == method
    assert (model.M is not None) == method.startswith("mine")
    a, b = model.sample(5, seed=3), model.sample(5, seed=3)
    assert a.shape == (5, 1, 28, 28) and torch.equal(a, b)
    assert res.summary["steps"] == 4


def test_plans_match_the_paper() -> None:
    cfg = RunConfig(mining_steps=3, finetune_steps=2)
    mg = plan(RunConfig(method="minegan++", mining_steps=3, finetune_steps=2))
    assert [(s.name, s.train_miner, s.train_generator, s.sparse) for s in mg] == [
        ("mine", True, False, True), ("finetune", True, True, True)]
    assert [(s.name, s.steps) for s in plan(RunConfig(method="mine", mining_steps=3, finetune_steps=2))] == [("mine", 5)]
    tg = plan(RunConfig(method="transfergan", mining_steps=3, finetune_steps=2))
    assert len(tg) == 1 and tg[0].steps == cfg.total_steps and not tg[0].sparse
    assert plan(RunConfig(method="freezed"))[0].freeze_critic_layers == 2
    with pytest.raises(MethodError, match="unknown method"):
        plan(RunConfig(method="nope"))


def test_mining_keeps_generator_fixed_and_computes_no_weight_gradients(source, target, tmp_path: Path) -> None:
    before = {k: v.clone() for k, v in source.G.state_dict().items()}
    res = train(RunConfig(method="mine", **TINY), source, target, tmp_path)
    for k, v in res.model.G.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in res.model.G.parameters())
    assert any(p.grad is not None for p in res.model.M.parameters())


def test_minegan_finetunes_the_generator(source, target, tmp_path: Path) -> None:
    before = {k: v.clone() for k, v in source.G.state_dict().items()}
    res = train(RunConfig(method="minegan", **TINY), source, target, tmp_path)
    assert any(not torch.equal(v, before[k]) for k, v in res.model.G.state_dict().items())


def test_scratch_does_not_start_from_the_source(source) -> None:
    mods = build_modules(RunConfig(method="scratch"), source)
    assert not torch.equal(mods.G.fc.weight, source.G.fc.weight)
    mods = build_modules(RunConfig(method="transfergan"), source)
    assert torch.equal(mods.G.fc.weight, source.G.fc.weight) and mods.M is None


def test_resume_from_checkpoint_gives_the_uninterrupted_result(source, target, tmp_path: Path) -> None:
    cfg = RunConfig(method="minegan++", mining_steps=3, finetune_steps=3, batch_size=8, n_critic=2, checkpoint_every=2)
    full = train(cfg, source, target, tmp_path / "full").model
    calls = {"n": 0}

    def stop_after_four() -> bool:
        calls["n"] += 1
        return calls["n"] > 4  # stops inside the finetune stage, after the step-4 checkpoint

    with pytest.raises(Stopped):
        train(cfg, source, target, tmp_path / "cut", should_stop=stop_after_four)
    assert [p.name for p in (tmp_path / "cut").glob("ckpt-*.pt")] == ["ckpt-4.pt"]
    resumed = train(cfg, source, target, tmp_path / "cut").model
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_refuses_a_different_config(source, target, tmp_path: Path) -> None:
    train(RunConfig(method="mine", **TINY), source, target, tmp_path)
    with pytest.raises(MethodError, match="different run configuration"):
        train(RunConfig(method="minegan", **TINY), source, target, tmp_path)


def test_conditional_source_and_wrong_shape_are_refused(target, tmp_path: Path) -> None:
    with pytest.raises(MethodError, match="conditional source"):  # baselines take one unconditional source
        train(RunConfig(method="transfergan", **TINY), tiny_source(n_classes=10), target, tmp_path)
    with pytest.raises(MethodError, match="do not match"):
        train(RunConfig(method="mine", **TINY), tiny_source(), torch.zeros(4, 3, 28, 28), tmp_path)


def test_mining_moves_samples_towards_the_target(target, tmp_path: Path) -> None:
    """A real (if tiny) learning signal: after mining, the critic-free pixel statistics of G(M(u)) are
    closer to the target's than those of G(u) from the untouched source."""
    torch.manual_seed(0)
    src = tiny_source(width=8, z_dim=16)
    cfg = RunConfig(method="minegan", mining_steps=40, finetune_steps=40, batch_size=16, n_critic=2,
                    lr_generator=1e-3, lr_critic=1e-3, checkpoint_every=0, keep_best="off")
    res = train(cfg, src, target, tmp_path)
    tgt_mean = target.mean(0)
    before = (src.G(torch.randn(64, 16)).detach().mean(0) - tgt_mean).abs().mean()
    after = (res.model.sample(64, seed=0).mean(0) - tgt_mean).abs().mean()
    assert after < 0.7 * before


def test_resume_accepts_checkpoints_written_before_new_options_existed(source, target, tmp_path: Path) -> None:
    """A checkpoint whose config lacks options added later (at their defaults) still resumes."""
    from core import checkpoints

    cfg = RunConfig(method="mine", mining_steps=4, finetune_steps=0, batch_size=8, n_critic=1, checkpoint_every=2)
    with pytest.raises(Stopped):
        calls = {"n": 0}
        train(cfg, source, target, tmp_path, should_stop=lambda: (calls.__setitem__("n", calls["n"] + 1) or calls["n"] > 2))
    ckpt = next(tmp_path.glob("ckpt-*.pt"))
    obj = checkpoints.load(ckpt)
    for key in ("selection", "critic_source", "fusion_steps", "fusion_mean_scale", "fusion_critic", "fusion_mining", "fusion_distill",
                "fusion_lr_generator", "fusion_lr_decay"):
        obj["config"].pop(key)
    checkpoints.save(obj, ckpt)
    assert train(cfg, source, target, tmp_path).summary["steps"] == 4


def test_a_job_stored_before_its_default_became_auto_resumes_its_checkpoints(source, target, tmp_path: Path) -> None:
    """A job submitted under an earlier version: its checkpoints and stored run hold that version's default (here a
    critic warm-up of 1 step, explicit), while the same spec now asks "auto" (which resolves to 0 for this source). The
    worker hands train the stored run (PreparedRun); it resumes the checkpoint and ends as the uninterrupted run."""
    from core.options import PreparedRun, resolve

    old = RunConfig(method="minegan", mining_steps=2, finetune_steps=2, batch_size=8, n_critic=1, checkpoint_every=1, critic_warmup=1)
    asked = replace(old, critic_warmup=-1)
    assert resolve(asked, [source.info]).critic_warmup == 0  # today's auto differs from the stored run
    full = train(old, source, target, tmp_path / "full").model
    calls = {"n": 0}
    with pytest.raises(Stopped):
        train(old, source, target, tmp_path / "cut", should_stop=lambda: (calls.__setitem__("n", calls["n"] + 1) or calls["n"] > 3))
    assert [p.name for p in (tmp_path / "cut").glob("ckpt-*.pt")] == ["ckpt-3.pt"]
    with pytest.raises(MethodError, match="different run configuration"):  # a run that trains otherwise still refuses it
        train(PreparedRun(asked, resolve(replace(old, lr_generator=3e-4), [source.info])), source, target, tmp_path / "cut")
    resumed = train(PreparedRun(asked, resolve(old, [source.info])), source, target, tmp_path / "cut").model
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("sources", [1, 2])
def test_previews_show_the_model_at_each_step_and_do_not_change_the_run(sources: int, target, tmp_path: Path) -> None:
    srcs = [tiny_source(name=f"s{i}") for i in range(sources)]
    for i, s in enumerate(srcs):
        torch.manual_seed(i)
        for p in s.G.parameters():
            p.data.normal_(0, 0.2)
    cfg = RunConfig(method="minegan", mining_steps=3, finetune_steps=3, batch_size=8, n_critic=1, checkpoint_every=0)
    plain = train(cfg, srcs if sources > 1 else srcs[0], target, tmp_path / "plain").model
    seen: dict[int, torch.Tensor] = {}
    with_previews = train(cfg, srcs if sources > 1 else srcs[0], target, tmp_path / "prev",
                          on_preview=lambda step, sample: seen.__setitem__(step, sample(4, 0)), preview_every=2).model
    assert sorted(seen) == [2, 4, 6] and seen[2].shape == (4, 1, 28, 28)
    assert not torch.equal(seen[2], seen[6])  # the model moved between previews
    assert torch.equal(seen[6], with_previews.sample(4, seed=0))  # the last preview is the final model
    for a, b in zip(plain.state_dict().values(), with_previews.state_dict().values()):
        assert torch.equal(a, b)  # previews neither consume the training RNG nor touch batch-norm statistics


@pytest.mark.parametrize("chunk", [4, 7, 256])
def test_mined_generator_samples_in_pieces_like_in_one(source, chunk: int) -> None:  # type: ignore[no-untyped-def]
    """More than one latent block (n > 256) and pieces that do not divide it: same images, same order."""
    from core.mining import MinedGenerator
    from core.nets.miner import Miner, MinerConfig

    model = MinedGenerator(source.G.eval(), Miner(MinerConfig(z_dim=source.G.cfg.z_dim)).eval())
    whole = model.sample(300, seed=9)
    pieces = list(model.sample_chunks(300, seed=9, chunk=chunk))
    assert max(len(p) for p in pieces) <= chunk and torch.allclose(torch.cat(pieces), whole, atol=1e-6)
    assert not torch.allclose(model.sample(300, seed=10), whole)
    assert model.values_per_image == 28 * 28


def test_train_runs_a_prepared_run_as_it_is_without_preparing_it_again(source, target, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The worker and ``minegan train`` hand train a run that core.options.prepare made (the API stored it with the job):
    train runs that run, not a config it resolves again, and keeps the config as asked as the checkpoints' identity."""
    from dataclasses import replace

    import core.methods
    from core.options import PreparedRun, prepare

    asked = RunConfig(method="minegan", **TINY)
    made = prepare(asked, [source.info])
    assert made.asked == asked and made.run.critic_init == "source" and made.run.critic_warmup == 0  # "auto" made concrete
    stored = PreparedRun(asked, replace(made.run, critic_warmup=3))  # as if the rules had changed after the job was stored

    def refuse(*args: object) -> None:
        raise AssertionError("train prepared a run it was given prepared")

    monkeypatch.setattr(core.methods, "prepare", refuse)
    res = train(stored, source, target, tmp_path)
    assert res.summary["steps"] == asked.mining_steps + asked.finetune_steps + 3  # the stored warm-up ran
    assert torch.load(tmp_path / "ckpt-7.pt", weights_only=False)["config"] == asked.as_json()
