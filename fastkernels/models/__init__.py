from fastkernels.models.catalog import ModelEntry, known_models, resolve
from fastkernels.models.loading import LoadedModel, load_model

__all__ = ["ModelEntry", "LoadedModel", "known_models", "load_model", "resolve"]
