"""Architectures and backbones. Importing this package registers every builder."""

# Importing a family registers its builders.
from . import backbones, zoo  # noqa: F401
from .base import ClassifierHead, StriateModel
from .registry import create_model, list_models, model_entry, register_model

__all__ = ["ClassifierHead", "StriateModel", "create_model", "list_models", "model_entry", "register_model"]
