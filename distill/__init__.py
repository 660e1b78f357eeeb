"""The shared policy: a small byte-level transformer that proposes experiment recipes.

* :mod:`distill.model` -- :class:`Policy` / :class:`PolicyConfig`, safetensors persistence;
* prompt and action text -- :func:`render_prompt`, :func:`render_action` (agents and trainer share them);
* constrained decoding -- :func:`propose`, :func:`valid_action_rate`, :func:`sample_actions`;
* training -- :func:`train`, :func:`evaluate`, :func:`pick_device`.

Pure torch + pydantic: data selection, the promotion gate and publishing live elsewhere.
"""

from distill._decode import ProposalStats, action_grammar, propose, sample_actions, valid_action_rate
from distill._prompt import MAX_PROMPT_BYTES, format_float, render_action, render_prompt
from distill._train import TrainReport, evaluate, peak_flops, pick_device, train
from distill.model import FORMAT, Policy, PolicyConfig

__all__ = [
    "FORMAT",
    "MAX_PROMPT_BYTES",
    "Policy",
    "PolicyConfig",
    "ProposalStats",
    "TrainReport",
    "action_grammar",
    "evaluate",
    "format_float",
    "peak_flops",
    "pick_device",
    "propose",
    "render_action",
    "render_prompt",
    "sample_actions",
    "train",
    "valid_action_rate",
]
