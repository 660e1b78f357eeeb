"""The conformance suite (``agents.testing``) run on every built-in agent type and on a
user-defined one loaded as ``module:Class``."""

from __future__ import annotations

from agents.testing import AgentConformance


class TestResearcherConformance(AgentConformance):
    """The researcher passes the agent conformance suite."""

    agent_type = "researcher"


class TestRandomConformance(AgentConformance):
    """The random-search baseline passes the agent conformance suite."""

    agent_type = "random"


class TestDeployerConformance(AgentConformance):
    """The deployer passes the agent conformance suite."""

    agent_type = "deployer"


class TestAnalystConformance(AgentConformance):
    """The (reactive) analyst passes the agent conformance suite."""

    agent_type = "analyst"
    task = None


class TestUserDefinedConformance(AgentConformance):
    """A reactive type defined in a test module passes too."""

    agent_type = "tests.custom_agents:Echo"
    task = None


class TestReadmeEchoConformance(AgentConformance):
    """The README's example type (default ``new_event`` ids) passes, restarts included."""

    agent_type = "tests.custom_agents:ReadmeEcho"
    task = None
