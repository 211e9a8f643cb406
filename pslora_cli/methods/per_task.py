"""Per-task adapters: each task trained from the base model and scored with its own adapter: an oracle that is
told the task (an upper bound for task-incremental sequences, not a competitor)."""

from .registry import MethodSpec, register

register(MethodSpec("per-task", "oracle: each task's own adapter on its own task", previous="none", own_adapters=True))
