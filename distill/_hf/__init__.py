"""Optional backend: a local causal LM (``transformers``) with a LoRA adapter (``peft``).

Installed with the ``hf`` extra (``pip install 'hive-swarm[hf]'``). This module imports
transformers and peft only when a model is loaded, so importing it costs nothing without the extra;
the default byte policy never touches it.

* **Base model**: a local directory (``save_pretrained`` output with safetensors weights), read with
  ``local_files_only=True`` -- never a hub, never a pickle. :func:`base_fingerprint` identifies it
  (its ``config.json`` and tokenizer files), so an agent can tell it holds the base an adapter was
  trained on.
* **Adapter**: :class:`HFPolicy` is the base plus a peft LoRA adapter. Only the adapter is saved:
  safetensors bytes with the format, the LoRA settings and the base's fingerprint in
  ``__metadata__``; loading checks all three before the tensors reach peft.
* **Training**: :func:`train` fits the adapter on the same ``(prompt, completion)`` pairs as the byte
  policy, with the loss on the completion only. :func:`evaluate` reports held-out loss in the byte
  policy's unit -- nats per completion byte, the end of the action counting as one byte -- so the
  distiller's gate compares candidates from either backend.
* **Decoding**: :func:`sample_actions` / :func:`propose` / :func:`valid_action_rate` use the byte
  policy's action grammar (``distill._decode``): a token is allowed when the grammar accepts each of
  its bytes in turn, which works for tokens spanning several bytes (BPE).

A sequence is ``tokens(prompt) tokens(PROMPT_SUFFIX) tokens(completion) EOS``: the prompt
(``render_prompt`` output) is tokenized with the tokenizer's special tokens (a BOS where the model
uses one) and cut at its end when too long for the context, as in the byte policy; the completion
is tokenized on its own, into tokens the decoder can write (:func:`completion_ids`).

Modules: ``_base`` (base model, LoRA settings, :class:`HFPolicy`), ``_train`` (tokens, training,
evaluation), ``_decode`` (constrained decoding).
"""

from __future__ import annotations

from ._base import (
    EXTRA_HINT,
    FORMAT,
    MAX_CONTEXT,
    PROMPT_SUFFIX,
    TOP_K,
    BaseModelError,
    HFPolicy,
    LoraSettings,
    MissingExtra,
    base_dir,
    base_fingerprint,
    is_adapter,
    load_base,
    require_extra,
)
from ._decode import (
    decode,
    propose,
    sample_actions,
    valid_action_rate,
)
from ._train import (
    completion_ids,
    evaluate,
    prompt_ids,
    train,
)

__all__ = [
    "EXTRA_HINT",
    "FORMAT",
    "MAX_CONTEXT",
    "PROMPT_SUFFIX",
    "TOP_K",
    "BaseModelError",
    "HFPolicy",
    "LoraSettings",
    "MissingExtra",
    "base_dir",
    "base_fingerprint",
    "completion_ids",
    "decode",
    "evaluate",
    "is_adapter",
    "load_base",
    "prompt_ids",
    "propose",
    "require_extra",
    "sample_actions",
    "train",
    "valid_action_rate",
]
