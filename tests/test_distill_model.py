"""The byte policy (backend ``byte``): persistence, prompt/action text, decoding, training (CPU)."""

from __future__ import annotations

import json
import math
import pickle
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distill import (
    MAX_PROMPT_BYTES,
    Policy,
    PolicyConfig,
    action_grammar,
    evaluate,
    pick_device,
    propose,
    render_action,
    render_prompt,
    train,
    valid_action_rate,
)
from distill._byte_model import EOS
from distill._decode import _Walker


class Toy(BaseModel):
    """The toy search space of these tests."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    lr: float = Field(3e-3, ge=1e-4, le=3e-1, json_schema_extra={"log": True})
    width: int = Field(64, ge=16, le=512)
    act: Literal["gelu", "relu", "silu"] = "gelu"
    nesterov: bool = False


TINY = PolicyConfig(n_layer=2, n_head=4, n_embd=64, block_size=256)
GUIDANCE = ["lower lr", "avoid act=relu", "wider is better", "try nesterov", "lr above 1e-1 diverges"]


def random_recipe(r: random.Random) -> dict[str, Any]:
    """A recipe drawn over the whole toy space (log-uniform lr, bounds included)."""
    return {
        "lr": r.choice([1e-4, 3e-1, math.exp(r.uniform(math.log(1e-4), math.log(3e-1)))]),
        "width": r.choice([16, 512, r.randint(16, 512)]),
        "act": r.choice(["gelu", "relu", "silu"]),
        "nesterov": r.random() < 0.5,
    }


def good_recipe(r: random.Random) -> dict[str, Any]:
    """A recipe like the ones that succeed: lr around 3e-3, power-of-two widths."""
    return {
        "lr": min(3e-1, max(1e-4, 10 ** r.gauss(-2.5, 0.4))),
        "width": r.choice([32, 64, 128, 256]),
        "act": r.choice(["gelu", "relu", "silu"]),
        "nesterov": r.random() < 0.5,
    }


def toy_examples(n: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, completion) pairs: a good parent (or none) and a good child."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        parent = good_recipe(r) if r.random() < 0.8 else None
        objective = r.uniform(0.0, 3.0) if parent else None
        prompt = render_prompt(
            f"toy/{r.randint(0, 99)}", parent, objective, r.sample(GUIDANCE, r.randint(0, 2))
        )
        out.append((prompt, render_action(good_recipe(r), Toy)))
    return out


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny matrices: one intra-op thread is fastest, and robust when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained() -> Policy:
    """A tiny policy briefly trained on toy examples (shared by the decoding tests)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Policy(TINY)
    train(
        model,
        toy_examples(1000, seed=1),
        steps=150,
        batch_size=32,
        lr=1.5e-2,
        warmup=10,
        device="cpu",
        progress=False,
    )
    return model.eval()


# ---------------------------------------------------------------------------- model and persistence


def test_save_load_round_trip(tmp_path: Path) -> None:
    """save/load through safetensors restores config and weights exactly; the file is standard safetensors."""
    from safetensors import safe_open

    torch.manual_seed(0)
    model = Policy(TINY).eval()
    path = model.save(tmp_path / "policy.safetensors")
    loaded = Policy.load(path)
    assert loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    idx = torch.randint(0, 256, (2, 30))
    assert torch.equal(model(idx)[0], loaded(idx)[0])
    with safe_open(str(path), framework="pt") as f:  # readable by the reference implementation
        assert PolicyConfig.from_json(f.metadata()["config"]) == TINY
        assert set(f.keys()) == set(model.state_dict())
    assert Policy.from_bytes(model.to_bytes()).config == TINY


def test_load_refuses_pickle(tmp_path: Path) -> None:
    """torch.save / pickle files are refused with ValueError, and nothing in them is executed."""
    model = Policy(TINY)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ValueError):
        Policy.load(tmp_path / "weights.pt")

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError):
        Policy.load(tmp_path / "evil.pkl")
    assert not marker.exists()
    with pytest.raises(ValueError):
        PolicyConfig.from_json('{"n_layer": 2, "evil": 1}')


def test_forward_cached_matches_forward() -> None:
    """Prefill plus chunked cached steps give the same logits as one full forward pass."""
    torch.manual_seed(0)
    model = Policy(TINY).eval()
    idx = torch.randint(0, 256, (3, 40))
    full, _ = model(idx)
    with torch.no_grad():
        last, cache = model.forward_cached(idx[:, :25])
        assert torch.allclose(last, full[:, 24], atol=1e-5)
        last, cache = model.forward_cached(idx[:, 25:32], cache)  # a chunk
        assert torch.allclose(last, full[:, 31], atol=1e-5)
        for t in range(32, 40):  # one token at a time
            last, cache = model.forward_cached(idx[:, t : t + 1], cache)
            assert torch.allclose(last, full[:, t], atol=1e-5)


# ---------------------------------------------------------------------------- prompt and action text


def test_render_action_json_round_trip() -> None:
    """render_action is compact JSON in field order, 3 significant digits, always inside the bounds."""
    text = render_action({"lr": 0.0031, "width": 64, "act": "gelu", "nesterov": False}, Toy)
    assert text == '{"lr":3.10e-03,"width":64,"act":"gelu","nesterov":false}'
    assert render_action(Toy(), Toy) == '{"lr":3.00e-03,"width":64,"act":"gelu","nesterov":false}'
    # rounding to 3 digits never leaves the bounds (0.29999 -> 3.00e-01, 1.0004e-4 -> 1.00e-04)
    assert json.loads(render_action({"lr": 0.29999}, Toy))["lr"] <= 0.3
    r = random.Random(0)
    for _ in range(300):
        recipe = random_recipe(r)
        text = render_action(recipe, Toy)
        parsed = json.loads(text)
        assert list(parsed) == ["lr", "width", "act", "nesterov"]
        back = Toy.model_validate(parsed)  # still valid
        assert math.isclose(back.lr, recipe["lr"], rel_tol=6e-3)
        assert (back.width, back.act, back.nesterov) == (recipe["width"], recipe["act"], recipe["nesterov"])
        assert render_action(back, Toy) == text  # canonical: a fixed point
    with pytest.raises(ValidationError):
        render_action({"lr": 1.0}, Toy)


def test_render_prompt_deterministic_and_bounded() -> None:
    """render_prompt ignores dict order, keeps one line per part and never exceeds MAX_PROMPT_BYTES."""
    parent = {"width": 64, "lr": 0.0031, "act": "gelu", "nesterov": True}
    a = render_prompt("hartmann6/17", parent, 0.1234, ["lower lr", "avoid\nrelu"])
    b = render_prompt("hartmann6/17", dict(reversed(parent.items())), 0.1234, ["lower lr", "avoid\nrelu"])
    assert a == b
    assert a.splitlines() == [
        "task: hartmann6/17",
        'parent: {"act":"gelu","lr":3.10e-03,"nesterov":true,"width":64}',
        "objective: 1.23e-01",
        "guidance: lower lr | avoid relu",
    ]
    assert render_prompt("t", None, None, []).endswith("parent: none\nobjective: none\nguidance: none")
    long = render_prompt("x" * 500, parent, float("nan"), ["é" * 300] * 20)
    assert len(long.encode()) <= MAX_PROMPT_BYTES
    assert "objective: none" in long


def test_grammar_accepts_every_canonical_action() -> None:
    """Every rendered valid recipe is a path of the decoding grammar, with or without bound masking
    (so every training target can be produced)."""
    grammar = action_grammar(Toy)
    r = random.Random(1)
    for _ in range(300):
        text = render_action(random_recipe(r), Toy)
        for bounds in (False, True):
            walker = _Walker(grammar, bounds)
            for tok in [*text.encode(), EOS]:
                assert tok in walker.allowed(), text
                walker.feed(tok)
            assert walker.done
        assert len(text) + 1 <= grammar.max_len


class Awkward(BaseModel):
    """Negative, exclusive, sign-crossing, narrow and unbounded ranges, int Literals, odd strings."""

    a: float = Field(0.0, ge=-2.5, le=7.0)
    b: int = Field(-5, ge=-120, le=-3)
    c: Literal[1, 10, 100] = 1
    d: Literal["x", "x,y", 'q"'] = "x"
    e: float = Field(1.0, gt=0.0, lt=1e6)
    f: float = Field(-0.5, ge=-0.9, le=-0.0123)
    g: int = Field(5, gt=4, lt=9)
    h: float = Field(0.1, ge=0.1, le=0.1)
    i: int = 3


@pytest.mark.parametrize("space", [Toy, Awkward])
def test_bound_masked_walks_are_always_valid(space: type[BaseModel]) -> None:
    """Any path through the bound-masked grammar (random choices at every free position) parses
    and validates; without the bounds, random paths mostly do not."""
    grammar = action_grammar(space)
    r = random.Random(2)
    invalid = {True: 0, False: 0}
    for _ in range(300):
        for bounds in (True, False):
            walker = _Walker(grammar, bounds)
            while not walker.done:
                walker.feed(r.choice(walker.allowed()))
            try:
                space.model_validate(json.loads(walker.text()))
            except ValidationError:
                invalid[bounds] += 1
    assert invalid[True] == 0
    assert invalid[False] > 100


# ---------------------------------------------------------------------------- decoding


def test_untrained_model_always_yields_valid_recipes() -> None:
    """From random weights, propose still returns schema-valid recipes: on the first try with the
    bounds masked, else after resampling or clipping (recorded in the stats)."""
    torch.manual_seed(0)
    model = Policy(TINY)
    gen = torch.Generator().manual_seed(0)
    prompt = render_prompt("toy/1", None, None, [])
    fallbacks = 0
    for _ in range(20):
        recipe, stats = propose(model, prompt, Toy, generator=gen, max_tries=3, mask_bounds=False)
        assert isinstance(recipe, Toy)
        Toy.model_validate(recipe.model_dump())
        assert 1 <= stats.tries <= 3
        if stats.fallback:
            fallbacks += 1
            assert stats.fallback == "clipped" and not stats.first_try_valid and len(stats.errors) == 3
            assert stats.text == render_action(recipe, Toy)
    assert fallbacks > 0  # random weights: out-of-bounds values happen, and are clipped
    for _ in range(20):
        recipe, stats = propose(model, prompt, Toy, generator=gen)
        assert stats.first_try_valid and stats.fallback is None and not stats.errors
        assert Toy.model_validate(json.loads(stats.text)) == recipe
    assert valid_action_rate(model, [prompt], Toy, 50, generator=gen) == 1.0


def test_trained_policy_first_try_valid_rate(trained: Policy) -> None:
    """After brief training on toy examples, >= 99% of samples validate on the first try, even
    without bound masking (the model itself has learned the ranges)."""
    prompts = [p for p, _ in toy_examples(20, seed=7)]
    gen = torch.Generator().manual_seed(0)
    assert valid_action_rate(trained, prompts, Toy, 20, generator=gen, mask_bounds=False) >= 0.99
    assert valid_action_rate(trained, prompts[:5], Toy, 20, generator=gen) == 1.0


def test_propose_is_seeded_and_fast(trained: Policy) -> None:
    """The same generator seed gives the same recipe; a proposal takes well under a second on CPU."""
    prompt = toy_examples(1, seed=3)[0][0]
    a, stats = propose(trained, prompt, Toy, generator=torch.Generator().manual_seed(5))
    b, _ = propose(trained, prompt, Toy, generator=torch.Generator().manual_seed(5))
    assert a == b
    assert stats.latency_s < 1.0
    greedy, _ = propose(trained, prompt, Toy, temperature=0.0)
    assert greedy == propose(trained, prompt, Toy, temperature=0.0)[0]


# ---------------------------------------------------------------------------- training


def test_loss_falls_on_toy_dataset() -> None:
    """Training lowers the completion loss, on the training batches and on held-out examples."""
    torch.manual_seed(0)
    model = Policy(TINY)
    held_out = toy_examples(100, seed=2)
    before = evaluate(model, held_out)["loss"]
    report = train(
        model, toy_examples(400, seed=1), steps=40, batch_size=16, lr=2e-2, warmup=5, progress=False
    )
    after = evaluate(model, held_out)
    assert report.final_loss < 0.5 * report.first_loss
    assert after["loss"] < 0.5 * before
    assert after["tokens"] > 0 and after["examples"] == 100
    assert report.device == "cpu" and report.dtype == "float32" and report.mfu is None
    assert report.examples_per_s > 0 and report.tokens_per_s > 0 and report.steps == 40


def test_training_is_deterministic_on_cpu() -> None:
    """Same seed and data on CPU give bit-identical losses and weights."""
    data = toy_examples(64, seed=4)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = Policy(PolicyConfig(n_layer=2, n_head=4, n_embd=32, block_size=256, dropout=0.1))
        report = train(model, data, steps=6, batch_size=8, seed=9, device="cpu", progress=False)
        runs.append((report.losses, model.state_dict()))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1].values(), runs[1][1].values(), strict=True):
        assert torch.equal(a, b)


def test_train_skips_examples_too_long() -> None:
    """A completion that cannot fit block_size is skipped and counted, not truncated."""
    model = Policy(PolicyConfig(n_layer=1, n_head=2, n_embd=16, block_size=64))
    data = [("p", "x" * 100), ("p", '{"a":1}')]
    report = train(model, data, steps=1, device="cpu", progress=False)
    assert report.skipped == 1 and report.examples == 1


def test_training_gives_up_between_steps_when_asked_to_stop() -> None:
    """``should_stop`` is checked before every step: training raises TrainingStopped at the step
    it turned true (so a stopping distiller does not finish a generation first)."""
    from distill._train import TrainingStopped

    model = Policy(PolicyConfig(n_layer=1, n_head=2, n_embd=16, block_size=128))
    calls = []

    def stop_after_three() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(TrainingStopped, match="stopped at step 3 of 50"):
        train(model, toy_examples(16, seed=1), steps=50, batch_size=4, device="cpu", progress=False,
              should_stop=stop_after_three)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_pick_device_is_cpu_here() -> None:
    """Without CUDA, pick_device chooses the CPU."""
    assert pick_device() == torch.device("cpu")
