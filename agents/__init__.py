"""agents: the agent runtime, the registry, tasks, and the built-in agent types.

Imports ``streams`` and (for proposing with the shared model) ``distill``'s model code only.
"""

from ._agent import Agent, on
from ._claims import CLAIMS_BUCKET, Claims, claim_key
from ._guidance import merged_avoid, parse_rule, violates
from ._read_model import MIN_REPLICATES, NOISE_SIGMAS, SwarmView, TaskView
from ._registry import BUILTIN_AGENTS, available_agent_types, load_agent_type
from ._runtime import AgentContext, AgentRuntime, ModelSlot
from ._study import StudyResult, normalized_regret, run_study, trials_to_target
from ._task import ENTRY_POINT_GROUP, Knob, Task, TaskFailed, available_tasks, knobs, load_task

__all__ = [
    "BUILTIN_AGENTS",
    "CLAIMS_BUCKET",
    "ENTRY_POINT_GROUP",
    "MIN_REPLICATES",
    "NOISE_SIGMAS",
    "Agent",
    "AgentContext",
    "AgentRuntime",
    "Claims",
    "Knob",
    "ModelSlot",
    "StudyResult",
    "SwarmView",
    "Task",
    "TaskFailed",
    "TaskView",
    "available_agent_types",
    "available_tasks",
    "claim_key",
    "knobs",
    "load_agent_type",
    "load_task",
    "merged_avoid",
    "normalized_regret",
    "on",
    "parse_rule",
    "run_study",
    "trials_to_target",
    "violates",
]
