"""Built-in tasks: synthetic families (branin, hartmann6, rosenbrock, ackley), the surrogate
families (lmrecipe, augreg), sleep and charlm.

Modules are imported lazily by :func:`agents._task.load_task`; importing this package does not
import torch.
"""
