"""The zoo's Lightning callbacks."""

from zoo.callbacks.feature_cache import FeatureCache
from zoo.callbacks.finetuning import STRATEGIES, FineTuning, describe_schedule
from zoo.callbacks.pictures import RunPictures

__all__ = ["STRATEGIES", "FeatureCache", "FineTuning", "RunPictures", "describe_schedule"]
