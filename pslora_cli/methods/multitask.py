"""Multitask upper bound: stage t trains one adapter and one joint head on the data of tasks 1..t together, for
training.steps x t steps (each task's data seen as often as in the sequential methods); stage t is scored with
that adapter alone and its heads."""

from .registry import MethodSpec, register

register(MethodSpec("multitask", "upper bound: tasks 1..t trained jointly", merge="last", previous="none",
                    init="joint"))
