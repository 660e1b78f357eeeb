"""Finding agent types: built-ins, the ``hive.agents`` entry-point group, or ``module:Class``."""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points

from ._agent import Agent

ENTRY_POINT_GROUP = "hive.agents"
BUILTIN_AGENTS = {
    "researcher": "agents.builtin.researcher:Researcher",
    "random": "agents.builtin.random_search:RandomSearch",
    "deployer": "agents.builtin.deployer:Deployer",
    "analyst": "agents.builtin.analyst:Analyst",
}


@cache
def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_agent_types() -> list[str]:
    """Names of the agent types this installation knows (built-ins and entry points)."""
    return sorted(set(BUILTIN_AGENTS) | set(_entry_points()))


def load_agent_type(name: str) -> type[Agent]:
    """The agent class for a registered name or a ``module:Class`` path."""
    spec = BUILTIN_AGENTS.get(name) or _entry_points().get(name) or (name if ":" in name else None)
    if spec is None:
        raise ValueError(
            f"unknown agent type {name!r}; known: {', '.join(available_agent_types())} (or give module:Class)"
        )
    module_name, _, attr = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load agent type {spec!r}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise ValueError(f"{spec!r} is not an agents.Agent subclass")
    return cls
