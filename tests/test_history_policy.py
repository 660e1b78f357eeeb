"""The history-conditioned model (``distill.model``): encoding, persistence and its bounds, hindsight
data with skip reporting, and a trained model's research value on held-out instances (CPU)."""

from __future__ import annotations

import functools
import json
import math
import pickle
import random
import statistics
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from agents import load_task, normalized_regret, run_study
from agents._proposer import History, MutationProposer, PriorProposer, Proposer, Trial, policy_loaders
from agents._task import Task
from distill import load_published
from distill._history import build_history_dataset, hindsight_examples, read_trajectories, split_instances
from distill._train import evaluate_history, train_history
from distill.model import (
    CATEGORICAL,
    ELITE_TRIALS,
    MAX_ELITE_FAMILIES,
    MAX_ELITES,
    NUMBER,
    HistoryConfig,
    HistoryModel,
    HistoryProposer,
    decode_recipe,
    encode_context,
    encode_history,
    encode_recipe,
    load_proposer,
    select_trials,
    space_code,
)

FAMILY = "branin"
TRAIN_INSTANCES = 10
HELDOUT = [f"{FAMILY}/{5000 + i}" for i in range(8)]
SMALL = {"n_layer": 1, "n_embd": 32, "n_head": 2}


class Mixed(BaseModel):
    """A space with every kind of knob: log float, float, int, log int, bool, categorical."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    lr: float = Field(3e-3, ge=1e-5, le=1.0, json_schema_extra={"log": True})
    momentum: float = Field(0.9, ge=0.0, le=0.99)
    layers: int = Field(4, ge=1, le=12)
    width: int = Field(64, ge=8, le=4096, json_schema_extra={"log": True})
    nesterov: bool = False
    act: Literal["gelu", "relu", "silu", "tanh"] = "gelu"


class MixedTask(Task):
    """A task over :class:`Mixed` (only its space is used here)."""

    name = "mixed"
    space = Mixed
    metric = "loss"
    direction = "min"
    default_budget = 1.0
    deadline_s = 1.0

    def run(self, recipe: BaseModel, seed: int, budget: float) -> dict[str, float]:
        """A cheap deterministic loss."""
        return {"loss": float(abs(recipe.model_dump()["momentum"] - 0.5))}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny matrices: one intra-op thread is fastest, and robust when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def study_rows(refs: Sequence[str], trials: int, *, start_seq: int = 0) -> list[tuple[Any, ...]]:
    """``TRAJECTORY_SQL``-shaped rows of simulated studies (a mutation/prior mix, as researchers
    without a model run them) on ``refs``: baselines first, then the trials, in log order."""
    mutation, prior = MutationProposer(), PriorProposer()

    def mix(history: History, rng: random.Random) -> tuple[BaseModel, str]:
        p: Proposer = mutation if rng.random() < 0.7 else prior
        return p.propose(history, rng), p.name

    rows: list[tuple[Any, ...]] = []
    seq = start_seq
    for i, ref in enumerate(refs):
        task = load_task(ref)
        res = run_study(task, mix, trials=trials, seed=i)
        for b in res.baselines:
            seq += 1
            rows.append((seq, ref, json.dumps(task.baseline().model_dump()), b, "ok", "baseline"))
        for recipe, objective, name in zip(res.recipes, res.objectives, res.proposers, strict=True):
            seq += 1
            status = "ok" if objective is not None else "failed"
            rows.append((seq, ref, json.dumps(recipe), objective, status, name))
    return rows


@functools.cache
def trained_model() -> HistoryModel:
    """A small model trained on pooled trajectories of branin/0..9 (cached: shared by test files)."""
    torch.set_num_threads(1)
    refs = [f"{FAMILY}/{i}" for i in range(TRAIN_INSTANCES)]
    cfg = HistoryConfig(**SMALL)
    ds = build_history_dataset(study_rows(refs, 60), cfg, load=load_task)
    torch.manual_seed(0)
    model = HistoryModel(cfg)
    train_history(model, ds.train + ds.heldout, steps=300, batch_size=64, lr=3e-3, device="cpu")
    return model.eval()


def mean_auc(proposer: Proposer, refs: Sequence[str], seeds: int, trials: int = 30) -> float:
    """Mean normalised regret of the best-so-far (true objective), over instances and seeds."""
    out = []
    for ref in refs:
        task = load_task(ref)
        for s in range(seeds):
            res = run_study(task, lambda h, r: (proposer.propose(h, r), proposer.name), trials=trials, seed=s)
            out.append(
                statistics.fmean(min(2.0, normalized_regret(task, v or math.inf)) for v in res.best_so_far())
            )
    return statistics.fmean(out)


# ------------------------------------------------------------------------------------- encoding


def test_encoding_round_trips_every_kind_of_knob() -> None:
    """Encoding a recipe to slot values and decoding it gives the knob values back: numbers within
    1e-9 relative (log knobs in log space), ints, bools and categoricals exactly."""
    cfg = HistoryConfig()
    code = space_code(Mixed, cfg)
    assert code.kinds[:6] == (NUMBER, NUMBER, NUMBER, NUMBER, CATEGORICAL, CATEGORICAL)
    assert code.n_choices[4:6] == (2, 4) and set(code.kinds[6:]) == {0}
    task = MixedTask()
    rng = random.Random(0)
    for _ in range(200):
        recipe = task.sample(rng).model_dump()
        nums, cats = encode_recipe(code, recipe, cfg)
        assert all(0.0 <= u <= 1.0 for u in nums)
        back = decode_recipe(code, nums, cats)
        assert back["layers"] == recipe["layers"] and back["width"] == recipe["width"]
        assert back["nesterov"] is recipe["nesterov"] and back["act"] == recipe["act"]
        assert math.isclose(back["lr"], recipe["lr"], rel_tol=1e-9)
        assert math.isclose(back["momentum"], recipe["momentum"], rel_tol=1e-9, abs_tol=1e-12)
        Mixed.model_validate(back)


def test_history_encoding_round_trips_and_ranks_match_history_normalized() -> None:
    """A History's context holds the best and latest trials: each token decodes back to its trial's
    recipe, its rank feature equals ``History.normalized()``, failures are flagged, and z is
    measured against the baselines."""
    cfg = HistoryConfig(n_best=4, n_latest=3)
    task = load_task("hartmann6/3")
    code = space_code(task.space, cfg)
    rng = random.Random(1)
    trials = []
    for i in range(20):
        r = task.sample(rng)
        value = None if i == 18 else task.objective(task.run(r, i, 1.0))
        trials.append(
            Trial(recipe=r.model_dump(), objective=value, status="ok" if value is not None else "failed")
        )
    history = History(task=task, trials=tuple(trials), baselines=(2.0, 2.2, 1.8))
    ctx = encode_history(history, code, cfg)
    chosen = select_trials([t.objective if t.ok else None for t in trials], 4, 3)
    assert len(ctx.nums) == len(chosen) and {17, 18, 19} <= set(chosen)
    normalized = history.normalized()
    for token, i in enumerate(chosen):
        back = decode_recipe(code, ctx.nums[token], ctx.cats[token])
        for k, v in trials[i].recipe.items():
            assert back[k] == v if isinstance(v, str | int) else math.isclose(back[k], v, rel_tol=1e-9)
        rank, z, has_z, failed, _age = ctx.outcome[token]
        if i == 18:
            assert failed == 1.0
        else:
            assert failed == 0.0 and has_z == 1.0 and math.isclose(rank, normalized[i] or 0.0)
            objective = trials[i].objective
            assert objective is not None and math.isclose(
                z, math.asinh((objective - 2.0) / 0.2) / 4, rel_tol=1e-6
            )
    best = sorted((t.objective, i) for i, t in enumerate(trials) if t.ok and t.objective is not None)[:4]
    assert {i for _, i in best} <= set(chosen)


def test_module_shapes_are_the_computed_ones() -> None:
    """The bounds check relies on computed tensor shapes: they equal the module's actual state dict."""
    for cfg in (
        HistoryConfig(),
        HistoryConfig(**SMALL),
        HistoryConfig(max_knobs=5, max_choices=3, n_components=2),
    ):
        model = HistoryModel(cfg)
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == cfg.tensor_shapes()
        assert model.num_params() == cfg.param_count()


# ------------------------------------------------------------------------------ persistence, loader


def test_save_load_round_trip_and_entry_point() -> None:
    """Weights survive safetensors; the ``history`` entry point (and ``distill.load_published``)
    gives a proposer named ``model-v<N>`` whose proposals are valid and reproducible given the RNG."""
    model = HistoryModel(HistoryConfig(**SMALL))
    blob = model.to_bytes()
    again = HistoryModel.from_bytes(blob)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    meta = {"backend": "history", "config": json.loads(model.cfg.to_json())}
    loader = policy_loaders()["history"]
    proposer = loader(blob, meta, 7)
    assert proposer.name == "model-v7"
    assert load_published(blob, json.dumps(meta).encode(), 8).name == "model-v8"
    task = load_task("branin/2")
    history = History(task=task, baselines=(1.0, 1.1))
    a = [proposer.propose(history, random.Random(3)) for _ in range(2)]
    assert a[0] == a[1] and isinstance(a[0], task.space)


def _forged(blob: bytes, config: dict[str, Any]) -> bytes:
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    header["__metadata__"]["config"] = json.dumps(config)
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + blob[8 + n :]


@pytest.mark.parametrize(
    "change",
    [
        {"n_embd": 1 << 20},
        {"max_knobs": 100_000},
        {"max_choices": 10_000},
        {"n_layer": 1000},
        {"n_components": 1 << 16},
        {"n_best": 10**9},
        {"n_embd": 1024, "n_layer": 16},  # each within bounds, too many parameters together
        {"n_embd": "64"},
        {"n_layer": True},
        {"extra": 1},
    ],
)
def test_loader_refuses_out_of_bound_configs(change: dict[str, Any]) -> None:
    """A forged config in the weights' header (a huge or mistyped dimension, an unknown key) or in
    ``meta.json`` is refused with ValueError before any tensor is allocated."""
    model = HistoryModel(HistoryConfig(**SMALL))
    blob = model.to_bytes()
    config = {**json.loads(model.cfg.to_json()), **change}
    with pytest.raises(ValueError):
        HistoryModel.from_bytes(_forged(blob, config))
    with pytest.raises(ValueError):
        load_proposer(blob, {"backend": "history", "config": config}, 1)


def test_loader_refuses_mismatched_and_foreign_files() -> None:
    """Tensors that disagree with the header's config, a meta config other than the header's, a
    pickle, truncated bytes and another backend's meta are all refused."""
    model = HistoryModel(HistoryConfig(**SMALL))
    blob = model.to_bytes()
    meta = {"backend": "history", "config": json.loads(model.cfg.to_json())}
    claims_two_layers = _forged(blob, {**meta["config"], "n_layer": 2})
    other = {**meta, "config": {**meta["config"], "n_components": 4}}
    cases = [
        (claims_two_layers, meta),
        (blob, other),
        (pickle.dumps({"w": list(range(10))}), meta),
        (blob[: len(blob) // 2], meta),
        (blob, {"backend": "byte"}),
    ]
    for weights, info in cases:
        with pytest.raises(ValueError):
            load_proposer(weights, info, 1)


def test_a_space_with_too_many_knobs_is_unavailable_not_an_error() -> None:
    """A task whose space does not fit the model's slots raises ProposerUnavailable (the caller asks
    another proposer)."""
    from agents._proposer import ProposerUnavailable

    proposer = HistoryProposer(HistoryModel(HistoryConfig(max_knobs=4, n_embd=16, n_head=2)))
    with pytest.raises(ProposerUnavailable):
        proposer.propose(History(task=load_task("hartmann6/0")), random.Random(0))


# ------------------------------------------------------------------------------ hindsight data


def test_hindsight_targets_are_the_best_trials_after_the_prefix() -> None:
    """Every example's target is one of the instance's top-q trials that ran after the prefix shown,
    examples are unique and capped, and an empty prefix is among them."""
    cfg = HistoryConfig(**SMALL)
    rows = study_rows(["branin/1"], 50)
    trajectories, skipped = read_trajectories(rows, cfg, load_task)
    assert not skipped
    traj = trajectories["branin/1"]
    assert len(traj.baselines) == 3 and len(traj.objectives) == 50
    examples = hindsight_examples(traj, cfg, random.Random(0), top_q=0.1, prefixes=200, cap=40)
    assert 10 <= len(examples) <= 40
    ranked = sorted((v, i) for i, v in enumerate(traj.objectives) if v is not None)
    top = {i for _, i in ranked[:5]}
    targets = {json.dumps(encode_recipe(traj.code, traj.recipes[i], cfg)): i for i in top}
    seen = set()
    for ctx, target in examples:
        j = targets[json.dumps(target)]  # a top-5 recipe
        length = round(math.expm1(ctx.glob[0] * math.log1p(1000.0)))  # the prefix's size
        assert j >= length
        seen.add((length, j))
    assert len(seen) == len(examples)


def test_skipped_traces_are_counted_by_reason() -> None:
    """Rows of a task that cannot be imported, with unknown knobs, or with an invalid recipe are
    left out and counted per reason; the rest still make examples."""
    rows = study_rows(["branin/1", "branin/2"], 20)
    seq = len(rows)
    bad = [
        (seq + 1, "nosuchpkg.tasks:Gone/0", "{}", 1.0, "ok", "mutation"),
        (seq + 2, "nosuchpkg.tasks:Gone/0", "{}", 1.0, "ok", "mutation"),
        (seq + 3, "branin/1", json.dumps({"x1": 0.0, "bogus": 1}), 1.0, "ok", "mutation"),
        (seq + 4, "branin/1", json.dumps({"x1": 1e9}), 1.0, "ok", "mutation"),
        (seq + 5, "branin/1", "not json", 1.0, "ok", "mutation"),
        (seq + 6, "hartmann6/1", "{}", 1.0, "ok", "mutation"),
    ]
    ds = build_history_dataset(rows + bad, HistoryConfig(**{**SMALL, "max_knobs": 8}), load=load_task)
    assert ds.skipped == {
        "unimportable_task": 2,
        "unknown_knobs": 1,
        "invalid_recipe": 2,
        "unsupported_space": 1,
    }
    assert ds.skip_metrics() == {
        "skipped_unimportable_task": 2.0,
        "skipped_unsupported_space": 1.0,
        "skipped_unknown_knobs": 1.0,
        "skipped_invalid_recipe": 2.0,
    }
    assert ds.train and set(ds.trajectories) == {"branin/1", "branin/2"}
    assert len(ds.trajectories["branin/1"].objectives) == 20  # the good rows all kept


def test_instance_split_never_holds_out_everything() -> None:
    """Held-out instances by hash: with two or more instances both sides are non-empty, whatever the
    fraction; one instance trains."""
    for n in range(1, 12):
        tasks = [f"branin/{i}" for i in range(n)]
        for fraction in (0.0, 0.25, 0.99, 1.0):
            train, held = split_instances(tasks, fraction)
            assert train and sorted(train + held) == sorted(tasks)
            assert bool(held) == (n >= 2)


# ------------------------------------------------------------------------------ research value


def test_trained_model_beats_random_on_held_out_instances() -> None:
    """Trained on pooled trajectories of branin/0..9, the model's studies on 8 never-seen instances
    (2 seeds, 30 trials) reach a lower regret AUC than random search, and its held-out NLL fell
    from the untrained model's.

    Measured when written (8 instances x 2 seeds): random 0.51, mutation 0.63, an untrained model
    0.90; the trained model over training seeds 0..5: 0.33, 0.40, 0.42, 0.39, 0.36, 0.33 (mean 0.37,
    sd 0.035). The test needs < 0.46 (random - 0.05): about 2.5 sd above the mean, so with another
    torch build (whose floats could change the samples) a false failure has roughly a 1% chance;
    on one machine the run is deterministic (fixed seeds)."""
    model = trained_model()
    proposer = HistoryProposer(model)
    model_auc = mean_auc(proposer, HELDOUT, seeds=2)
    random_auc = mean_auc(PriorProposer(), HELDOUT, seeds=2)
    assert model_auc < random_auc - 0.05, (model_auc, random_auc)
    cfg = model.cfg
    ds = build_history_dataset(study_rows(HELDOUT[:2], 40), cfg, load=load_task)
    untrained = HistoryModel(cfg)
    assert evaluate_history(model, ds.train + ds.heldout) < evaluate_history(untrained, ds.train + ds.heldout)


def test_empty_context_still_encodes() -> None:
    """A fresh instance (no trials, no baselines) is a valid input: only the query token."""
    cfg = HistoryConfig(**SMALL)
    code = space_code(load_task("branin/0").space, cfg)
    ctx = encode_context(code, [], [], [], cfg)
    assert ctx.nums == [] and ctx.glob == [0.0, 0.0, 0.0]
    recipe = HistoryProposer(HistoryModel(cfg)).propose(History(task=load_task("branin/0")), random.Random(0))
    assert isinstance(recipe, load_task("branin/0").space)


def test_trajectories_are_read_in_order_and_capped_per_instance() -> None:
    """On a real hive database, ``TRAJECTORY_SQL`` returns each instance's experiments in log order
    up to the sequence asked for, at most the first N of each instance."""
    import duckdb

    from distill._history import TRAJECTORY_SQL
    from hive import migrate

    con = duckdb.connect()
    migrate(con)
    sql = (
        "INSERT INTO experiments BY NAME SELECT ? AS seq, ? AS task, '{}' AS recipe, 1.0 AS objective, "
        "'ok' AS status, 'mutation' AS proposer, 'e' || ? AS event_id, 'k' AS run_key, 'r-1' AS agent_id, "
        "'researcher' AS agent_type, 'x' AS run_id"
    )
    for seq in range(1, 21):
        con.execute(sql, [seq, f"branin/{seq % 2}", seq])
    rows = con.execute(TRAJECTORY_SQL, [15, 3]).fetchall()
    assert [(r[1], r[0]) for r in rows] == [
        ("branin/0", 2), ("branin/0", 4), ("branin/0", 6), ("branin/1", 1), ("branin/1", 3), ("branin/1", 5),
    ]  # fmt: skip
    assert len(con.execute(TRAJECTORY_SQL, [15, 1000]).fetchall()) == 15


# ----------------------------------------------------------------------------------- elite memory


def _with_metadata(blob: bytes, **metadata: str) -> bytes:
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    header["__metadata__"].update(metadata)
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + blob[8 + n :]


def test_elites_come_from_training_instances_only() -> None:
    """The dataset's elite memory holds, per family, the best finished recipe of each *training*
    instance and nothing from a held-out one (the gate studies those)."""
    refs = [f"{FAMILY}/{i}" for i in range(6)]
    rows = study_rows(refs, 20)
    ds = build_history_dataset(rows, HistoryConfig(**SMALL), load=load_task)
    best: dict[str, tuple[float, dict[str, Any]]] = {}
    for _seq, ref, recipe, objective, status, proposer in rows:
        if proposer != "baseline" and status == "ok" and (ref not in best or objective < best[ref][0]):
            best[ref] = (objective, json.loads(recipe))
    assert ds.heldout_tasks and set(ds.elites) == {FAMILY}
    want = [best[ref][1] for ref in ds.train_tasks]
    assert sorted(map(json.dumps, ds.elites[FAMILY])) == sorted(map(json.dumps, want))
    for ref in ds.heldout_tasks:
        assert best[ref][1] not in ds.elites[FAMILY]


def test_elites_survive_save_load_and_forged_ones_are_refused() -> None:
    """A model's elites travel in its safetensors header; elites that are not JSON, not an object
    of lists, too many, or not flat recipes are refused with ValueError by the loader."""
    model = HistoryModel(HistoryConfig(**SMALL))
    model.elites = {"branin": [{"x1": 0.5, "x2": 0.25}]}
    assert HistoryModel.from_bytes(model.to_bytes()).elites == model.elites
    blob = HistoryModel(HistoryConfig(**SMALL)).to_bytes()
    meta = {"backend": "history", "config": json.loads(model.cfg.to_json())}
    for forged in (
        "not json",
        json.dumps([1, 2]),
        json.dumps({"branin": {"x1": 1}}),
        json.dumps({"branin": [{"x1": {"nested": 1}}]}),
        json.dumps({"branin": [{"x1": 0.1}] * (MAX_ELITES + 1)}),
        json.dumps({f"f{i}": [] for i in range(MAX_ELITE_FAMILIES + 1)}),
    ):
        bad = _with_metadata(blob, elites=forged)
        with pytest.raises(ValueError):
            HistoryModel.from_bytes(bad)
        with pytest.raises(ValueError):
            load_proposer(bad, meta, 1)


def test_model_recalls_the_likeliest_untried_elite_then_samples() -> None:
    """With elites, the proposer first proposes the untried elite the network scores highest given
    the history, never one already run on the instance, skips one that does not fit the space,
    and samples the network once ``ELITE_TRIALS`` elites have run there."""
    model = HistoryModel.from_bytes(trained_model().to_bytes())
    task = load_task(f"{FAMILY}/5001")
    rng = random.Random(0)
    elites = [
        task.validate_recipe({"x1": rng.uniform(-5, 10), "x2": rng.uniform(0, 15)}).model_dump()
        for _ in range(ELITE_TRIALS + 3)
    ]
    model.elites = {FAMILY: [{"x1": 1.0, "unknown": 2.0}, *elites]}
    proposer = HistoryProposer(model)
    history = History(task=task, baselines=(1.0, 1.1))
    code = proposer.code(task.space)
    assert code is not None
    targets = [encode_recipe(code, e, model.cfg) for e in elites]
    scores = model.score(encode_history(history, code, model.cfg), targets)
    first = proposer.propose(history, random.Random(1))
    assert first.model_dump() == elites[max(range(len(elites)), key=scores.__getitem__)]
    proposed = []
    for i in range(ELITE_TRIALS + 2):
        recipe = proposer.propose(history, random.Random(i))
        proposed.append(recipe.model_dump())
        trial = Trial(recipe=recipe.model_dump(), objective=float(i))
        history = History(task=task, trials=(*history.trials, trial), baselines=history.baselines)
    assert proposed[:ELITE_TRIALS] == [e for e in proposed[:ELITE_TRIALS] if e in elites]
    assert len({json.dumps(e, sort_keys=True) for e in proposed[:ELITE_TRIALS]}) == ELITE_TRIALS
    assert all(e not in elites for e in proposed[ELITE_TRIALS:])  # then the network's samples


def test_elites_make_the_trained_model_faster_on_new_instances() -> None:
    """The same trained network with its training instances' elites reaches a lower regret AUC on
    8 never-seen branin instances (2 seeds, 30 trials) than without them.

    Measured when written, over training seeds 0..4 (AUC without / with elites): 0.33 / 0.24,
    0.37 / 0.24, 0.42 / 0.25, 0.40 / 0.28, 0.50 / 0.27: a gap of 0.09 to 0.24; the test needs 0.05."""
    model = HistoryModel.from_bytes(trained_model().to_bytes())
    ds = build_history_dataset(
        study_rows([f"{FAMILY}/{i}" for i in range(TRAIN_INSTANCES)], 60), model.cfg, load=load_task
    )
    plain = mean_auc(HistoryProposer(model), HELDOUT, seeds=2)
    model.elites = ds.elites
    recall = mean_auc(HistoryProposer(model), HELDOUT, seeds=2)
    assert recall < plain - 0.05, (recall, plain)
