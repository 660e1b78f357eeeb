"""The optional hf backend (``distill._hf``): a LoRA adapter on a local causal LM.

No network: a tiny GPT-2 and a byte-level BPE tokenizer (trained here on rendered prompts and
actions, so tokens span several bytes) are saved to a temporary directory and used as the base.
"""

from __future__ import annotations

import asyncio
import io
import json
import pickle
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch
from click.testing import CliRunner
from pydantic import BaseModel, Field, model_validator
from safetensors.torch import load as st_load
from structlog.testing import capture_logs

import streams
from agents import ModelSlot, load_task
from agents._policy import consider, load_policy
from agents._proposer import History
from distill import Policy, PolicyConfig, _hf, render_action, render_prompt
from distill._decode import _validate, _Walker, action_grammar

from .conftest import run_hive, wait_for
from .test_distill_service import _materialized, traces

SPACE_TASKS = ["branin/0", "hartmann6/0", "charlm/0"]


def pairs(refs: list[str], n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``(prompt, completion)`` examples: a mutation chain of ``n`` children per task instance."""
    rng = random.Random(seed)
    out = []
    for ref in refs:
        task = load_task(ref)
        parent = task.baseline()
        objective = task.objective(task.run(parent, 0, 1.0)) if ref.startswith("branin") else None
        for i in range(n):
            child = task.mutate(parent, rng)
            prompt = render_prompt(ref, parent.model_dump(), objective, ["lower x1"] if i % 3 else [])
            out.append((prompt, render_action(child, task.space)))
            parent = child
            if ref.startswith("branin"):
                objective = task.objective(task.run(child, i, 1.0))
    return out


def build_base(path: Path, *, n_layer: int = 2, seed: int = 0) -> Path:
    """Save a tiny GPT-2 (64 wide) and a byte-level BPE tokenizer trained on hive text to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    texts = [t for p in pairs(SPACE_TASKS, 80, seed=1) for t in p]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    eos = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos, bos_token=eos, pad_token=eos)
    tokenizer.save_pretrained(path)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=512,
        n_embd=64,
        n_layer=n_layer,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny base model directory."""
    return build_base(tmp_path_factory.mktemp("hf") / "tiny-gpt2")


@pytest.fixture(scope="module")
def other_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A different tiny base (one layer): another fingerprint."""
    return build_base(tmp_path_factory.mktemp("hf") / "other-gpt2", n_layer=1)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread (as decoding uses): tiny matrices, and cores shared with child processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_base_loads_from_a_local_directory_only(base: Path, other_base: Path, tmp_path: Path) -> None:
    """A missing path, a directory that is not a model and a broken config are clear ValueErrors (no
    hub is tried); a good base loads with peft's default LoRA targets and a stable fingerprint."""
    with pytest.raises(ValueError, match="no such directory"):
        _hf.HFPolicy.create(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"no config\.json"):
        _hf.load_base(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        _hf.base_fingerprint(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="not a causal LM"):
        _hf.load_base(tmp_path)

    policy = _hf.HFPolicy.create(base, _hf.LoraSettings(r=4))
    assert policy.lora.target_modules == ("c_attn",)  # inferred by peft, then recorded
    assert 0 < policy.num_params(trainable=True) < policy.num_params() // 10
    assert _hf.base_fingerprint(base) == policy.fingerprint != _hf.base_fingerprint(other_base)
    assert max(len(b or b"") for b in policy.token_bytes) > 3  # BPE tokens span several bytes


def test_lora_training_lowers_heldout_loss_and_leaves_the_base_alone(base: Path) -> None:
    """Training the adapter on the same (prompt, completion) pairs as the byte policy lowers the
    held-out loss on other task instances; only adapter weights change."""
    train_set = pairs(["branin/0", "branin/1", "branin/2", "branin/3"], 40)
    heldout = pairs(["branin/8", "branin/9"], 16, seed=7)
    policy = _hf.HFPolicy.create(base, _hf.LoraSettings(r=8, target_modules=("c_attn", "c_proj")), seed=0)
    frozen = {k: v.clone() for k, v in policy.model.named_parameters() if not v.requires_grad}
    before = _hf.evaluate(policy, heldout)
    report = _hf.train(policy, train_set, steps=40, batch_size=16, lr=1e-2, seed=0, device="cpu")
    after = _hf.evaluate(policy, heldout)
    assert report.steps == 40 and report.examples == len(train_set) and report.device == "cpu"
    assert report.final_loss < report.first_loss
    assert after["loss"] < before["loss"] - 0.2, (before, after)
    assert all(torch.equal(v, dict(policy.model.named_parameters())[k]) for k, v in frozen.items())


def test_heldout_loss_is_nats_per_completion_byte(base: Path) -> None:
    """evaluate() divides the completion tokens' summed NLL (end token included) by the completion
    bytes plus one per example: the byte policy's unit, whatever the tokenizer."""
    policy = _hf.HFPolicy.create(base)
    examples = pairs(["hartmann6/0"], 3)
    result = _hf.evaluate(policy, examples)
    assert result["bytes"] == sum(len(c.encode()) + 1 for _, c in examples)
    assert result["tokens"] < 0.75 * result["bytes"]  # multi-byte tokens, yet a per-byte loss
    total = 0.0
    tok = policy.tokenizer
    with torch.no_grad():
        for prompt, completion in examples:
            head = _hf.prompt_ids(policy, prompt, 10_000)
            body = [*tok(completion, add_special_tokens=False)["input_ids"], tok.eos_token_id]
            logits = policy.model(input_ids=torch.tensor([head + body])).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
            total -= sum(float(logp[len(head) - 1 + i, t]) for i, t in enumerate(body))
    assert result["loss"] == pytest.approx(total / result["bytes"], rel=1e-4)


def test_a_sentencepiece_style_tokenizer_on_a_llama_base_works_too(tmp_path: Path) -> None:
    """A tokenizer that writes spaces as "▁" and puts one before the text (sentencepiece style), on a
    Llama base: peft picks its attention projections, training examples use tokens the decoder can
    write (no leading space), and decoding stays schema-valid."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    examples = pairs(["branin/0"], 40)
    bpe = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    bpe.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    bpe.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))]
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False)
    bpe.train_from_iterator([t for p in examples for t in p], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(tmp_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)

    policy = _hf.HFPolicy.create(tmp_path)
    assert policy.lora.target_modules == ("q_proj", "v_proj")
    completion = examples[0][1]
    assert tokenizer.convert_ids_to_tokens(tokenizer(completion)["input_ids"])[0].startswith("▁")
    ids = _hf.completion_ids(policy, completion)
    assert b"".join(policy.token_bytes[i] or b"" for i in ids) == completion.encode()
    assert len(ids) < len(completion) / 2
    _hf.train(policy, examples, steps=2, lr=1e-2, device="cpu")
    space = load_task("branin/0").space
    gen = torch.Generator().manual_seed(0)
    assert _hf.valid_action_rate(policy, [examples[5][0]], space, 4, generator=gen) == 1.0


class Pair(BaseModel):
    """A space with a cross-field rule the grammar cannot enforce (resampling is needed)."""

    lo: int = Field(default=1, ge=0, le=9)
    hi: int = Field(default=5, ge=0, le=9)

    @model_validator(mode="after")
    def _ordered(self) -> Pair:
        if self.lo >= self.hi:
            raise ValueError("lo must be below hi")
        return self


def test_constrained_decoding_gives_valid_actions_from_an_untrained_model(base: Path) -> None:
    """Even before training, every sample validates for several spaces (floats, ints, Literals, bools),
    tokens are multi-byte, decoding is reproducible from a seed, and a restricted candidate list
    still finds a valid token (the whole-vocabulary fallback)."""
    policy = _hf.HFPolicy.create(base)
    for ref in SPACE_TASKS:
        space = load_task(ref).space
        prompts = sorted({p for p, _ in pairs([ref], 6)})[:2]
        gen = torch.Generator().manual_seed(0)
        assert _hf.valid_action_rate(policy, prompts, space, 4, generator=gen) == 1.0, ref
    space = load_task("branin/0").space
    prompt = pairs(["branin/0"], 1)[0][0]
    rows = _hf.decode(policy, prompt, space, 4, generator=torch.Generator().manual_seed(1))
    assert rows == _hf.decode(policy, prompt, space, 4, generator=torch.Generator().manual_seed(1))
    assert all(_validate(text, space)[0] is not None and n < len(text) for text, n in rows), rows
    (greedy,) = _hf.decode(policy, prompt, space, 1, temperature=0, top_k=1)
    assert _validate(greedy[0], space)[0] is not None

    # at a float's first digit a two-digit token ("10") breaks the grammar ("1" then "."): when it is
    # the only candidate looked at, the whole vocabulary is searched instead
    walker = _Walker(action_grammar(space))
    assert bytes(walker.forced()) == b'{"x1":'
    table = policy.token_bytes
    two = next(i for i, b in enumerate(table) if b and len(b) == 2 and b.isdigit() and b[:1] != b"0")
    logits = torch.zeros(len(table))
    logits[two] = 50.0
    picked = _hf._decode._choose(policy, walker, logits, 1.0, 0.5, 1, {})
    assert picked is not None and picked != two and _hf._decode._accepts(walker, table[picked] or b"")


def test_propose_resamples_on_a_failed_validation_like_the_byte_policy(base: Path) -> None:
    """propose() always returns a schema-valid recipe with ProposalStats; model-validator failures
    are resampled (and reported), as the default backend does."""
    policy = _hf.HFPolicy.create(base)
    gen = torch.Generator().manual_seed(3)
    results = [_hf.propose(policy, "task: pair/0", Pair, generator=gen) for _ in range(12)]
    assert all(isinstance(r, Pair) and r.lo < r.hi for r, _ in results)
    resampled = [s for _, s in results if not s.first_try_valid]
    assert resampled and all("lo must be below hi" in s.errors[0] for s in resampled)
    assert all(s.text == render_action(r, Pair) or s.fallback is None for r, s in results)


def test_adapter_bytes_round_trip_as_safetensors_and_anything_else_is_refused(
    base: Path, other_base: Path
) -> None:
    """Only the adapter is saved, as safetensors carrying the format, LoRA settings and the base's
    fingerprint; it loads back to identical outputs; pickles, torch.save files, byte policies and a
    different base are refused."""
    policy = _hf.HFPolicy.create(base, _hf.LoraSettings(r=4, alpha=16))
    _hf.train(policy, pairs(["branin/0"], 16), steps=3, lr=1e-2, device="cpu")
    data = policy.to_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    meta = header.pop("__metadata__")
    assert meta["format"] == _hf.FORMAT and meta["base_fingerprint"] == policy.fingerprint
    assert json.loads(meta["lora"]) == {"r": 4, "alpha": 16, "dropout": 0.0, "target_modules": ["c_attn"]}
    assert all("lora_" in name for name in header) and len(data) < 100_000  # no base weights

    loaded = _hf.HFPolicy.from_bytes(base, data, fingerprint=policy.fingerprint)
    ids = torch.tensor([_hf.prompt_ids(policy, "task: branin/0", 64)])
    with torch.no_grad():
        assert torch.allclose(policy.model(input_ids=ids).logits, loaded.model(input_ids=ids).logits)
    again = loaded.to_bytes()  # the same tensors and metadata (the header's key order may differ)
    assert _hf._base._header_metadata(again) == meta and loaded.lora == policy.lora
    assert all(torch.equal(v, st_load(data)[k]) for k, v in st_load(again).items())

    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(policy.model)
    buf = io.BytesIO()
    torch.save(state, buf)
    for bad in (pickle.dumps(state), buf.getvalue(), data[: len(data) // 2]):
        with pytest.raises(ValueError, match=r"not a safetensors file"):
            _hf.HFPolicy.from_bytes(base, bad)
    with pytest.raises(ValueError, match=r"not a hive-hf-lora/1 adapter"):
        _hf.HFPolicy.from_bytes(base, Policy(PolicyConfig(n_layer=1, n_embd=64)).to_bytes())
    with pytest.raises(_hf.BaseModelError, match="different model"):
        _hf.HFPolicy.from_bytes(other_base, data)
    with pytest.raises(_hf.BaseModelError, match="different model"):
        _hf.HFPolicy.from_bytes(base, data, fingerprint="sha256:" + "0" * 64)
    assert _hf.is_adapter(data) and not _hf.is_adapter(pickle.dumps(state))


def test_distiller_trains_hf_candidates_and_judges_them_against_any_champion(
    base: Path, tmp_path: Path
) -> None:
    """With backend hf the distiller trains a fresh and a continued adapter and scores them against an
    hf champion in the same unit; a byte distiller judges its candidate against that hf champion too
    (no continuing across backends); a stored hf champion needs --hf-model to be loaded at all."""
    from distill._data import Dataset
    from distill._service import DistillConfig, Distiller

    priv, _ = streams.generate_keys(tmp_path / "keys")
    space = load_task("branin/0").space
    train_set, heldout = pairs(["branin/0", "branin/1"], 12), pairs(["branin/9"], 4, seed=5)
    ds = Dataset(train=train_set, heldout=heldout, spaces={p: space for p, _ in train_set + heldout})
    champion = _hf.HFPolicy.create(base, _hf.LoraSettings(r=4))
    _hf.train(champion, train_set, steps=3, lr=1e-2, device="cpu")

    common: dict[str, Any] = {"nats_url": "", "key_path": str(priv), "steps": 3, "valid_samples": 1}
    hf = Distiller(DistillConfig(**common, backend="hf", hf_model=str(base), lora=_hf.LoraSettings(r=4)))
    hf.champion = champion
    result = hf._train_and_gate(ds)
    assert set(result["report"]["alternatives"]) == {"base", "continue"}
    assert (
        isinstance(result["model"], _hf.HFPolicy) and result["report"]["champion"]["valid_action_rate"] == 1.0
    )
    assert result["report"]["train"]["steps"] == 3

    byte = Distiller(
        DistillConfig(
            **common, backend="byte", model={"n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 320}
        )
    )
    byte.champion = champion
    result = byte._train_and_gate(ds)
    assert set(result["report"]["alternatives"]) == {"base"} and isinstance(result["model"], Policy)
    assert result["report"]["champion"]["loss"] == pytest.approx(_hf.evaluate(champion, heldout)["loss"])
    with pytest.raises(_hf.BaseModelError, match="--hf-model"):
        byte._model_from_bytes(champion.to_bytes(), 3)
    assert isinstance(hf._model_from_bytes(champion.to_bytes(), 3), _hf.HFPolicy)
    with pytest.raises(ValueError, match="needs its base model"):
        Distiller(DistillConfig(**common, backend="hf"))


def test_without_the_extra_the_backend_says_how_to_install_it(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With transformers/peft not importable, `hive distill --backend hf` exits non-zero naming the
    extra, and an agent refuses an hf model with that reason."""
    from hive._distill_cli import distill

    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    key = tmp_path / "distiller.key"
    key.write_text("unused: the extra is checked first")
    args = ["--once", "--key", str(key), "--backend", "hf", "--hf-model", str(base)]
    out = CliRunner().invoke(distill, args)
    assert out.exit_code != 0 and "pip install 'hive-swarm[hf]'" in out.output, out.output
    meta = orjson.dumps({"backend": "hf", "base_model": base.name, "base_fingerprint": "sha256:x"})
    monkeypatch.setenv("HIVE_HF_MODEL", str(base))  # how an agent names its base (--hf-model sets it)
    with pytest.raises(ValueError, match=r"pip install 'hive-swarm\[hf\]'"):
        load_policy(b"", meta, 1)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh Ed25519 key pair (as ``hive keys`` makes)."""
    priv, pub = streams.generate_keys(tmp_path / "keys")
    return Path(priv), Path(pub)


async def test_distill_hf_publishes_an_adapter_that_agents_with_the_base_use(
    nats_server: Any,
    nc: Any,
    spawn: Any,
    tmp_path: Path,
    keys: tuple[Path, Path],
    base: Path,
    other_base: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`hive distill --once --backend hf` trains and publishes adapter safetensors with an hf
    meta.json; a researcher given the base (HIVE_HF_MODEL) loads it and proposes with it, an agent
    with another base refuses it (fingerprint), and one without a base refuses it saying so."""
    priv, pub = keys
    url = nats_server.url
    fixture = traces(n_per_task=12)
    await streams.Publisher(nc.jetstream()).publish_many(fixture)
    await _materialized(nc, spawn, url, tmp_path / "hf.duckdb", len(fixture))
    # a researcher given the base (HIVE_HF_MODEL) starts first and waits for the model
    researcher = ["agent", "run", "researcher", "--nats", url, "--task", "branin/7", "--pubkey", str(pub)]
    spawn(*researcher, "--id", "hf-1", env={"HIVE_HF_MODEL": str(base)})
    out = await asyncio.to_thread(
        run_hive,
        "distill", "--once", "--nats", url, "--key", str(priv), "--steps", "15", "--modes", "base",
        "--backend", "hf", "--hf-model", str(base), "--lora-r", "4", "--device", "cpu",
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = orjson.loads(out.stdout)
    assert report["decision"] == "published", report
    assert report["candidate"]["valid_action_rate"] == 1.0 and report["heldout"] > 0

    store = await streams.ModelStore(nc).open()
    current = await store.read_pointer("policy")
    assert current is not None
    pointer = current[0].pointer
    weights = await store.fetch(pointer.weights, size=pointer.weights_size, sha256=pointer.weights_sha256)
    meta = orjson.loads(await store.fetch(pointer.meta, size=pointer.meta_size, sha256=pointer.meta_sha256))
    assert meta["backend"] == "hf" and meta["base_model"] == "tiny-gpt2"
    assert meta["base_fingerprint"] == _hf.base_fingerprint(base)
    assert meta["lora"] == {"r": 4, "alpha": None, "dropout": 0.0, "target_modules": ["c_attn"]}
    assert set(meta["eval"]) >= {"heldout_loss", "valid_action_rate"} and _hf.is_adapter(weights)

    # the agent with the base loads the model and proposes (valid recipes: experiments ran) with it
    async def used() -> bool:
        res = await streams.remote_query(
            nc,
            "SELECT count(*) FROM experiments WHERE agent_id = 'hf-1' AND model_version = 1 "
            "AND proposer = 'model-v1'",
        )
        return bool(res.rows[0][0] > 0)

    await wait_for(used, timeout=120, what="agent traces from the hf model")

    # an agent's model watcher (consider) with another base, or none, refuses it and says why
    key = streams.load_public_key(pub)
    for hf_model, reason in [
        (str(other_base), "different model"),
        (None, "HIVE_HF_MODEL"),
    ]:
        if hf_model is None:  # an agent names its base by env (hive agent run --hf-model sets it)
            monkeypatch.delenv("HIVE_HF_MODEL", raising=False)
        else:
            monkeypatch.setenv("HIVE_HF_MODEL", hf_model)
        slot = ModelSlot()
        with capture_logs() as logs:
            assert not await consider(store, current[0], key, slot)
        (refused,) = [e for e in logs if e["event"] == "model_refused"]
        assert reason in refused["reason"], refused
        assert slot.version == 0 and slot.policy is None
    monkeypatch.setenv("HIVE_HF_MODEL", str(base))
    slot = ModelSlot()
    assert await consider(store, current[0], key, slot) and slot.version == 1

    # the loaded adapter is the model-v1 proposer and proposes schema-valid recipes
    adapter = slot.policy
    assert adapter.name == "model-v1" and isinstance(adapter.model, _hf.HFPolicy)
    task = load_task("branin/7")
    rng = random.Random(0)
    for _ in range(10):
        recipe = adapter.propose(History(task), rng)
        assert isinstance(recipe, task.space)
