"""The shared model: what the distiller trains on the hive's trajectories and agents propose with.

* :mod:`distill.model` -- the default model: :class:`HistoryModel` / :class:`HistoryConfig`, a set
  transformer conditioned on the instance's own history (numeric encoding over the task's knobs),
  its safetensors persistence and :class:`HistoryProposer`;
* hindsight data -- :func:`build_history_dataset` (``distill._history``);
* training -- :func:`train_history`, :func:`evaluate_history` (and :func:`train` for the byte policy);
* the gate on research value -- :func:`research_gate` (``distill._gate``);
* published models as proposers -- :func:`load_published` (also the ``hive.policies`` entry points);
* the first backend, still loadable: the byte-level :class:`Policy` (prompt/action text,
  constrained decoding: :func:`render_prompt`, :func:`render_action`, :func:`propose`).

Pure torch + pydantic + ``agents`` (the task contract); publishing lives in ``distill._service``.
"""

from distill._byte_model import FORMAT, Policy, PolicyConfig
from distill._decode import ProposalStats, action_grammar, propose, sample_actions, valid_action_rate
from distill._gate import GateConfig, GateResult, research_gate
from distill._history import HistoryDataset, build_history_dataset
from distill._prompt import MAX_PROMPT_BYTES, format_float, render_action, render_prompt
from distill._proposers import load_published
from distill._train import (
    HistoryTrainReport,
    TrainReport,
    evaluate,
    evaluate_history,
    peak_flops,
    pick_device,
    train,
    train_history,
)
from distill.model import HistoryConfig, HistoryModel, HistoryProposer

__all__ = [
    "FORMAT",
    "MAX_PROMPT_BYTES",
    "GateConfig",
    "GateResult",
    "HistoryConfig",
    "HistoryDataset",
    "HistoryModel",
    "HistoryProposer",
    "HistoryTrainReport",
    "Policy",
    "PolicyConfig",
    "ProposalStats",
    "TrainReport",
    "action_grammar",
    "build_history_dataset",
    "evaluate",
    "evaluate_history",
    "format_float",
    "load_published",
    "peak_flops",
    "pick_device",
    "propose",
    "render_action",
    "render_prompt",
    "research_gate",
    "sample_actions",
    "train",
    "train_history",
    "valid_action_rate",
]
