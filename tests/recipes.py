"""Shortened demo recipes for end-to-end tests: fewer epochs, and (``lean``) ONNX only, no
benchmark and no budget, so a pipeline run takes seconds."""

from edgekd.recipe import Recipe, demo_recipe


def short_recipe(epochs: int = 3, qat_epochs: int | None = 1, lean: bool = True) -> Recipe:
    """The demo recipe with ``epochs`` for teacher and students; ``qat_epochs=None`` turns QAT off."""
    recipe = demo_recipe()
    recipe.teacher_training.epochs = recipe.student_training.epochs = epochs
    # the demo's +-2 px student shifts need its 100 epochs; a few epochs on them leave the
    # int8 logits full of near-ties, where one rounding step flips top-1
    recipe.student_training.shift = None
    if qat_epochs is None:
        recipe.qat.enabled = False
    else:
        recipe.qat.epochs, recipe.qat.freeze_observers_epoch = qat_epochs, 1
    if lean:
        recipe.export.formats, recipe.benchmark, recipe.budgets = ["onnx"], False, []
    return recipe
