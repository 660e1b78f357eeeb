"""The pluggable task layer: what agents run experiments on, and the registry that finds tasks.

A task is a family of problems (``branin``), an instance of it (``branin/17``), a recipe schema
(the search space, a frozen pydantic model) and a deterministic ``run``. See :class:`Task`.
"""

from __future__ import annotations

import functools
import importlib
import math
import random
import re
import types
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

ENTRY_POINT_GROUP = "hive.tasks"
"""The ``importlib.metadata`` entry-point group plugins register tasks under (name -> ``module:Class``)."""

BUILTIN_TASKS: Mapping[str, str] = types.MappingProxyType(
    {
        "branin": "agents.tasks.synthetic:Branin",
        "hartmann6": "agents.tasks.synthetic:Hartmann6",
        "rosenbrock": "agents.tasks.synthetic:Rosenbrock",
        "ackley": "agents.tasks.synthetic:Ackley",
        "lmrecipe": "agents.tasks.recipe_surrogate:LMRecipeTask",
        "augreg": "agents.tasks.augreg:AugRegTask",
        "sleep": "agents.tasks.sleep:SleepTask",
        "charlm": "agents.tasks.charlm:CharLM",
    }
)
"""Tasks known without entry points (imported lazily, so ``charlm`` pulls in torch only when used)."""

_INSTANCE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class TaskFailed(Exception):
    """A run could not produce a result for its recipe (it diverged, or the recipe is unusable).

    ``reason`` is a short human-readable explanation, recorded as the experiment's failure reason.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Knob:
    """One field of a task's recipe space, as search code needs it.

    ``kind`` is ``"float"``, ``"int"``, ``"choice"`` (a ``Literal`` of strings) or ``"bool"``;
    ``low``/``high`` bound numbers, ``choices`` lists a categorical's values, ``log`` marks a
    log-scale number (sampled and mutated in log space).
    """

    name: str
    kind: Literal["float", "int", "choice", "bool"]
    default: Any
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()
    log: bool = False


def _knob(name: str, field: FieldInfo) -> Knob:
    """Describe one pydantic field, or raise ``TypeError`` if it breaks the recipe-space rules."""
    if field.is_required():
        raise TypeError(f"recipe field {name!r} has no default")
    annotation = field.annotation
    extra = field.json_schema_extra
    log = bool(isinstance(extra, dict) and extra.get("log"))
    if get_origin(annotation) is Literal:
        choices = get_args(annotation)
        if not choices or not all(isinstance(c, str) for c in choices):
            raise TypeError(f"recipe field {name!r}: Literal choices must be strings")
        return Knob(name, "choice", field.default, choices=tuple(choices))
    if annotation is bool:
        return Knob(name, "bool", field.default)
    if annotation in (int, float):
        low = next((m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)), None)
        high = next((m.le for m in field.metadata if isinstance(m, annotated_types.Le)), None)
        if low is None or high is None:
            raise TypeError(f"recipe field {name!r} needs Field(ge=..., le=...)")
        lo, hi = float(low), float(high)  # type: ignore[arg-type]
        if not lo <= hi or (log and lo <= 0):
            raise TypeError(f"recipe field {name!r}: bad bounds [{lo}, {hi}] (log={log})")
        return Knob(name, "int" if annotation is int else "float", field.default, lo, hi, log=log)
    raise TypeError(f"recipe field {name!r}: type {annotation!r} is not float, int, bool or Literal[str]")


@functools.cache
def knobs(space: type[BaseModel]) -> tuple[Knob, ...]:
    """The knobs of a recipe space, checked against the rules in :class:`Task` (``TypeError`` if not)."""
    config = space.model_config
    if not config.get("frozen") or config.get("extra") != "forbid":
        raise TypeError(f"{space.__name__}: recipe spaces need model_config frozen=True, extra='forbid'")
    return tuple(_knob(name, field) for name, field in space.model_fields.items())


def _sample_number(knob: Knob, rng: random.Random) -> float:
    if knob.log:
        return math.exp(rng.uniform(math.log(knob.low), math.log(knob.high)))
    return rng.uniform(knob.low, knob.high)


def _sample_value(knob: Knob, rng: random.Random) -> Any:
    if knob.kind == "choice":
        return rng.choice(knob.choices)
    if knob.kind == "bool":
        return rng.random() < 0.5
    if knob.kind == "int":
        if knob.log:
            return min(int(knob.high), max(int(knob.low), round(_sample_number(knob, rng))))
        return rng.randint(int(knob.low), int(knob.high))
    return _sample_number(knob, rng)


def _mutate_value(knob: Knob, value: Any, rng: random.Random, scale: float) -> Any:
    """A value near ``value``: a Gaussian step of ``scale`` x the range (log range for log knobs)."""
    if knob.kind == "choice":
        others = [c for c in knob.choices if c != value]
        return rng.choice(others) if others else value
    if knob.kind == "bool":
        return not value
    if knob.log:
        lo, hi, x = math.log(knob.low), math.log(knob.high), math.log(max(float(value), knob.low))
    else:
        lo, hi, x = knob.low, knob.high, float(value)
    step = rng.gauss(0.0, scale * (hi - lo))
    if knob.kind == "int" and not knob.log and abs(step) < 1:
        step = math.copysign(1.0, step)
    y = min(hi, max(lo, x + step))
    if knob.log:
        y = math.exp(y)
    if knob.kind == "int":
        return min(int(knob.high), max(int(knob.low), round(y)))
    return min(knob.high, max(knob.low, y))


class Task(ABC):
    """A family of experiments an agent can run; one object is one instance of the family.

    The contract (other packages code against exactly this)::

        name: ClassVar[str]                       # family name: "branin", "hartmann6", "charlm", ...
        space: ClassVar[type[pydantic.BaseModel]] # the recipe schema (rules below)
        metric: ClassVar[str]                     # headline metric in run()'s result: "val_bpb", "value"
        direction: ClassVar[Literal["min", "max"]]
        default_budget: ClassVar[float]           # task-defined units (tokens for charlm, evaluations
                                                  # averaged for the synthetic families, ms for sleep)
        deadline_s: ClassVar[float]               # a run taking longer than this counts as abandoned
        single_instance: ClassVar[bool]           # True: the only instance is "0" and ref is just name

        def __init__(self, instance: str = "0")   # instance id (1-64 of A-Za-z0-9_.:-), self.instance
        ref -> str                                # "branin/17"; "charlm" for a single-instance task
        baseline() -> BaseModel                   # the baseline recipe (default: space())
        run(recipe, seed, budget) -> dict[str, float]
            # deterministic given (instance, recipe, seed, budget); finite floats including `metric`;
            # raises TaskFailed("reason") when the recipe diverges or is unusable, never returns NaN
        objective(metrics) -> float               # lower-is-better form of metrics[metric]
        optimum() -> float | None                 # noise-free best objective (None: unknown)
        true_objective(recipe) -> float | None    # noise-free objective of a recipe (None: unknown)
        sample(rng) -> BaseModel                  # uniformly random valid recipe (log-uniform on log knobs)
        mutate(recipe, rng, scale=0.2) -> BaseModel  # a valid neighbour (at least one knob changed)
        validate_recipe(recipe: dict) -> BaseModel   # space.model_validate(recipe): pydantic errors

    Recipe-space rules: ``model_config`` has ``frozen=True`` and ``extra="forbid"``; every field has
    a default (the default instance is the baseline unless ``baseline()`` overrides it) and is one of
    ``float`` or ``int`` with ``Field(ge=..., le=...)``, a ``Literal`` of strings, or ``bool``. Mark
    a log-scale number with ``Field(json_schema_extra={"log": True})``. :func:`knobs` describes and
    checks a space; a task whose space breaks the rules fails at construction with ``TypeError``.

    ``load_task(task.ref)`` gives back an equal task: a class not in the registry gets a
    ``module:Class[/instance]`` ref.
    """

    name: ClassVar[str]
    space: ClassVar[type[BaseModel]]
    metric: ClassVar[str]
    direction: ClassVar[Literal["min", "max"]]
    default_budget: ClassVar[float]
    deadline_s: ClassVar[float]
    single_instance: ClassVar[bool] = False

    def __init__(self, instance: str = "0") -> None:
        instance = str(instance) or "0"
        if self.single_instance and instance != "0":
            raise ValueError(f"task {self.name!r} has a single instance ('0'), not {instance!r}")
        if not _INSTANCE.fullmatch(instance):
            raise ValueError(f"bad task instance {instance!r}: use 1-64 of A-Z a-z 0-9 _ . : -")
        knobs(self.space)
        self.instance = instance

    @property
    def ref(self) -> str:
        """The loadable reference of this instance: ``family/index``, or the bare name if single."""
        cls = type(self)
        spec = f"{cls.__module__}:{cls.__qualname__}"
        base = self.name if _registered_class(self.name) == spec else spec
        return base if self.single_instance else f"{base}/{self.instance}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.ref}>"

    def baseline(self) -> BaseModel:
        """The baseline recipe (by default the space's default instance)."""
        return self.space()

    @abstractmethod
    def run(self, recipe: BaseModel, seed: int, budget: float) -> dict[str, float]:
        """Run one experiment; finite metrics including :attr:`metric`, or raise :class:`TaskFailed`."""

    def optimum(self) -> float | None:
        """The noise-free optimal objective of this instance, in lower-is-better form (None: unknown).

        Exactly what :meth:`objective` would report for the best recipe without noise; no recipe's
        :meth:`true_objective` is below it. Benchmarks measure regret against it."""
        return None

    def true_objective(self, recipe: BaseModel) -> float | None:
        """The noise-free objective of ``recipe`` on this instance, lower-is-better (None: unknown)."""
        return None

    def objective(self, metrics: Mapping[str, float]) -> float:
        """The headline metric in lower-is-better form."""
        value = float(metrics[self.metric])
        return value if self.direction == "min" else -value

    def sample(self, rng: random.Random) -> BaseModel:
        """A uniformly random valid recipe (log-uniform on log-scale knobs)."""
        return self.space.model_validate({k.name: _sample_value(k, rng) for k in knobs(self.space)})

    def mutate(self, recipe: BaseModel, rng: random.Random, scale: float = 0.2) -> BaseModel:
        """A valid neighbour of ``recipe``: each knob moves with probability 1/n (at least one moves)."""
        recipe = self.validate_recipe(recipe)
        space_knobs = knobs(self.space)
        if not space_knobs:
            return recipe
        values = recipe.model_dump()
        for _ in range(8):
            chosen = [k for k in space_knobs if rng.random() < 1 / len(space_knobs)]
            chosen = chosen or [rng.choice(space_knobs)]
            update = {k.name: _mutate_value(k, values[k.name], rng, scale) for k in chosen}
            if any(update[name] != values[name] for name in update):
                break
        return self.space.model_validate({**values, **update})

    def validate_recipe(self, recipe: Mapping[str, Any] | BaseModel) -> BaseModel:
        """``space.model_validate(recipe)``: a recipe of this space, or a pydantic ``ValidationError``."""
        if isinstance(recipe, self.space):
            return recipe
        if isinstance(recipe, BaseModel):
            recipe = recipe.model_dump()
        return self.space.model_validate(recipe)


@functools.cache
def _entry_point_tasks() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _registered_class(name: str) -> str | None:
    """The ``module:Class`` registered under ``name`` (built-ins win over entry points)."""
    return BUILTIN_TASKS.get(name) or _entry_point_tasks().get(name)


def available_tasks() -> list[str]:
    """Names of the registered task families: the built-ins and the ``hive.tasks`` entry points."""
    return sorted({*BUILTIN_TASKS, *_entry_point_tasks()})


def _import_task_class(spec: str) -> type[Task]:
    module_name, _, qualname = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load task class {spec!r}: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, Task)):
        raise ValueError(f"{spec!r} is not a Task subclass")
    return obj


def load_task(ref: str) -> Task:
    """The task instance named by ``ref``.

    ``ref`` is ``name[/instance]`` for a registered family (``hartmann6/17``, ``charlm``,
    ``charlm/0``) or ``package.module:Class[/instance]``. The instance defaults to ``"0"``.
    Raises ``ValueError`` for an unknown name (listing the available tasks) or a bad instance.
    """
    name, _, instance = ref.partition("/")
    if ":" in name:
        cls = _import_task_class(name)
    else:
        spec = _registered_class(name)
        if spec is None:
            raise ValueError(
                f"unknown task {name!r}; available: {', '.join(available_tasks())} "
                "(or 'package.module:Class[/instance]')"
            )
        cls = _import_task_class(spec)
    return cls(instance or "0")
