"""Models: a registry of built-in architectures, user ``module:callable`` models, checkpoints."""

from edgekd.models.factory import (
    ModelSpec,
    count_parameters,
    create_model,
    list_models,
    load_checkpoint,
    register_model,
    save_checkpoint,
)
from edgekd.models import bert, cnn, detector, mobilenet  # noqa: F401,E402  (register the built-in architectures)

__all__ = ["ModelSpec", "count_parameters", "create_model", "list_models", "load_checkpoint",
           "register_model", "save_checkpoint"]
