"""agents: the agent runtime, the registry, tasks, and the built-in agent types.

Imports ``streams`` only: distilled models arrive as proposers through the ``hive.policies``
entry points (``distill`` registers them), so ``agents`` never imports ``distill``.
"""

from ._agent import Agent, on
from ._campaign import (
    CAMPAIGN_BUCKET,
    DEFAULT_INSTANCE_BUDGET,
    MAX_INSTANCES,
    Campaign,
    parse_campaign,
    parse_instances,
)
from ._claims import CLAIMS_BUCKET, Claims, claim_key
from ._guidance import merged_avoid, parse_rule, violates
from ._portfolio import ArmStats, Portfolio
from ._proposer import (
    History,
    MutationProposer,
    PolicyLoader,
    PriorProposer,
    Proposer,
    ProposerUnavailable,
    Trial,
    policy_loaders,
    recipe_key,
)
from ._read_model import KEEP_BEST, KEEP_LATEST, MIN_REPLICATES, NOISE_SIGMAS, SwarmView, TaskView
from ._registry import BUILTIN_AGENTS, available_agent_types, load_agent_type
from ._runtime import AgentContext, AgentRuntime, ModelSlot
from ._study import StudyResult, normalized_regret, run_study, trials_to_target
from ._task import ENTRY_POINT_GROUP, Knob, Task, TaskFailed, available_tasks, knobs, load_task
from ._tpe import TPEProposer

__all__ = [
    "BUILTIN_AGENTS",
    "CAMPAIGN_BUCKET",
    "CLAIMS_BUCKET",
    "DEFAULT_INSTANCE_BUDGET",
    "ENTRY_POINT_GROUP",
    "KEEP_BEST",
    "KEEP_LATEST",
    "MAX_INSTANCES",
    "MIN_REPLICATES",
    "NOISE_SIGMAS",
    "Agent",
    "AgentContext",
    "AgentRuntime",
    "ArmStats",
    "Campaign",
    "Claims",
    "History",
    "Knob",
    "ModelSlot",
    "MutationProposer",
    "PolicyLoader",
    "Portfolio",
    "PriorProposer",
    "Proposer",
    "ProposerUnavailable",
    "StudyResult",
    "SwarmView",
    "TPEProposer",
    "Task",
    "TaskFailed",
    "TaskView",
    "Trial",
    "available_agent_types",
    "available_tasks",
    "claim_key",
    "knobs",
    "load_agent_type",
    "load_task",
    "merged_avoid",
    "normalized_regret",
    "on",
    "parse_campaign",
    "parse_instances",
    "parse_rule",
    "policy_loaders",
    "recipe_key",
    "run_study",
    "trials_to_target",
    "violates",
]
