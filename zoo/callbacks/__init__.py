"""The zoo's Lightning callbacks."""

from zoo.callbacks.finetuning import STRATEGIES, FineTuning, describe_schedule

__all__ = ["STRATEGIES", "FineTuning", "describe_schedule"]
