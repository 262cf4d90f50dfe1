"""The training section: optimizer and schedule match the spec, and a tiny model learns."""

from __future__ import annotations

import math

import pytest
import torch

import archc
from archc.spec import TrainingSpec
from archc.training import build_optimizer, build_scheduler, clip_gradients, lr_factor, training_of
from exporters.torch_module import build_module
from tests.conftest import tiny_spec


def _training(**data) -> TrainingSpec:
    return TrainingSpec.model_validate(data)


# ---- schedules ---------------------------------------------------------------------------------


def test_cosine_with_warmup_and_floor_at_key_steps():
    # peak 1e-3, warm-up 10 steps, cosine over steps 10..110 down to 0.1 * peak, held afterwards
    t = _training(optimizer={"kind": "adamw", "lr": 1e-3},
                  schedule={"kind": "cosine", "warmup_steps": 10, "total_steps": 110, "min_lr_ratio": 0.1})
    expected = {0: 0.0, 1: 1e-4, 5: 5e-4, 10: 1e-3, 35: 1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),
                60: 1e-3 * 0.55, 110: 1e-4, 500: 1e-4}
    for step, lr in expected.items():
        assert 1e-3 * lr_factor(t.schedule, step) == pytest.approx(lr, abs=1e-12), step
    # and the torch scheduler follows the same values step by step
    opt = build_optimizer(t, [torch.nn.Parameter(torch.zeros(2, 2))])
    sched = build_scheduler(t, opt)
    seen = []
    for _ in range(120):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for step, lr in expected.items():
        if step < 120:
            assert seen[step] == pytest.approx(lr, abs=1e-12), step


def test_linear_and_constant_schedules():
    lin = _training(schedule={"kind": "linear", "warmup_steps": 4, "total_steps": 24, "min_lr_ratio": 0.0}).schedule
    assert [lr_factor(lin, s) for s in (0, 2, 4, 14, 24, 30)] == pytest.approx([0, 0.5, 1, 0.5, 0, 0])
    lin_floor = _training(schedule={"kind": "linear", "warmup_steps": 0, "total_steps": 10, "min_lr_ratio": 0.2}).schedule
    assert [lr_factor(lin_floor, s) for s in (0, 5, 10)] == pytest.approx([1.0, 0.6, 0.2])
    const = _training(schedule={"kind": "constant", "warmup_steps": 3}).schedule
    assert [lr_factor(const, s) for s in (0, 1, 3, 1000)] == pytest.approx([0, 1 / 3, 1, 1])
    assert lr_factor(_training(schedule={"kind": "constant"}).schedule, 0) == 1.0


# ---- optimizers --------------------------------------------------------------------------------


def test_llama_gets_adamw_with_its_hyperparameters_and_no_decay_on_vectors():
    graph = archc.compile(tiny_spec("llama"))
    model = build_module(graph)
    opt = build_optimizer(graph, model)
    assert type(opt) is torch.optim.AdamW
    decay, rest = opt.param_groups
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert decay["lr"] == 3e-4 and decay["betas"] == (0.9, 0.95) and decay["eps"] == 1e-5
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in rest["params"])
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))


def test_optimizer_kinds_follow_the_spec():
    assert type(build_optimizer(tiny_spec("gpt2"), [torch.nn.Parameter(torch.zeros(3, 3))])) is torch.optim.Adam
    palm = tiny_spec("palm")
    opt = build_optimizer(palm, [torch.nn.Parameter(torch.zeros(3, 3))])
    assert type(opt) is torch.optim.Adafactor
    group = opt.param_groups[0]
    assert group["lr"] == 1e-2 and group["beta2_decay"] == -0.8 and group["d"] == 1.0
    assert training_of(archc.compile(palm)) is palm.training


def test_grad_clip_follows_the_spec():
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.full((4,), 3.0)  # norm 6
    assert clip_gradients(_training(grad_clip=1.5), [p]) == pytest.approx(6.0)
    assert float(p.grad.norm()) == pytest.approx(1.5, rel=1e-5)
    p.grad = torch.full((4,), 3.0)
    assert clip_gradients(_training(grad_clip=None), [p]) is None and float(p.grad.norm()) == 6.0


# ---- a tiny model learns -----------------------------------------------------------------------


def _pattern_batches(vocab: int, steps: int, batch: int = 8, length: int = 16, seed: int = 0):
    """Windows of a fixed random cycle of 12 tokens at random offsets: next-token prediction is learnable."""
    g = torch.Generator().manual_seed(seed)
    cycle = torch.randperm(vocab, generator=g)[:12]
    for _ in range(steps):
        start = torch.randint(0, 12, (batch, 1), generator=g)
        yield cycle[(start + torch.arange(length + 1)) % 12]


def _train(name: str, sets: list[str], steps: int = 40) -> list[float]:
    graph = archc.compile(tiny_spec(name, ["d_model=32", "mlp.d_ff=64", "n_layers=2"] + sets))
    model = build_module(graph).train()
    opt, sched = build_optimizer(graph, model), None
    sched = build_scheduler(graph, opt)
    losses = []
    for seq in _pattern_batches(graph.spec.vocab_size, steps):
        logits, _ = model(seq[:, :-1], prefix_len=torch.zeros(len(seq), dtype=torch.long) if "prefix_len" in graph.graph_inputs() else None)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), seq[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        clip_gradients(graph, model)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(
    "name, sets",
    [
        ("llama", ["training.optimizer.lr=0.01", "training.schedule.warmup_steps=5", "training.schedule.total_steps=40"]),
        ("gpt2", ["training.optimizer.lr=0.01", "training.schedule.warmup_steps=5", "training.schedule.total_steps=40"]),
        ("palm", ["training.optimizer.lr=0.1"]),  # Adafactor (relative steps: lr 1e-2 moves 1% per step, too slow for 40)
    ],
)
def test_tiny_model_learns_a_pattern(name, sets):
    losses = _train(name, sets)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert first > 0.8 * math.log(97)  # starts near chance
    assert last < 0.3 * first, losses


def test_training_is_deterministic():
    sets = ["training.optimizer.lr=0.01", "training.schedule.warmup_steps=2", "training.schedule.total_steps=8"]
    assert _train("llama", sets, steps=8) == _train("llama", sets, steps=8)
