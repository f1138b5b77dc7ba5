"""QAT fine-tuning: the distilled student trained on in the target's integer arithmetic, with
the full-precision teacher still guiding it (Jacob et al. 2018 fake-quant training; the teacher's
soft targets as in Hinton et al. 2015 during quantization-aware training, as in Polino et al.
2018, "Model compression via distillation and quantization").

The recipe: ``prepare_qat`` (BatchNorm folded or kept live until ``freeze_bn_epoch``,
fake-quantization inserted), activation ranges calibrated on a few un-augmented batches with the
config's observer, then ``config.epochs`` epochs of distillation at ``config.lr`` (no weight
decay) in which the ranges follow the data until ``freeze_observers_epoch`` and BatchNorm
statistics freeze at ``freeze_bn_epoch``; ``freeze`` makes every scale a constant for export.
"""

from __future__ import annotations

import copy

from torch import nn

from edgekd.distill.api import DistillConfig, distill
from edgekd.distill.trainer import TrainConfig, TrainResult
from edgekd.progress import progress
from edgekd.quant.conv_bn import freeze_bn_stats
from edgekd.quant.qat import QATConfig, calibrate, freeze, observer_options, prepare_qat, set_range_tracking


def qat_finetune(student: nn.Module, teacher, data, distill_config: DistillConfig, config: QATConfig, *,
                 seed: int = 0, batch_size: int = 64, desc: str = "student (int8 QAT)",
                 **train_kwargs) -> tuple[nn.Module, TrainResult]:
    """A frozen int8 copy of ``student`` fine-tuned with ``teacher`` guiding it.

    Args:
        student: the float (distilled) model; not changed.
        teacher: a teacher provider or PyTorch model (as ``edgekd.distill.distill`` takes it).
        data: the ``DataSplits`` to train on.
        distill_config: the objective (the same one the student was distilled with).
        config: the resolved QATConfig (``QATConfig.resolved``): scheme, epochs, lr, observers.
        seed: seed of shuffling and augmentation.
        batch_size: training and calibration batch size.
        train_kwargs: passed to the trainer (``task``, ``augment_shift``, ``checkpoint``, ...).

    Raises:
        QuantizationError: the student cannot be prepared or calibrated.
        TrainingError: as ``edgekd.distill.trainer.train``.
    """
    batches = data.calibration_batches(batch_size, config.calibration_batches)
    model = prepare_qat(copy.deepcopy(student), config, batches[0] if batches else None)
    calibrate(model, progress(batches, desc="calibrate", unit="batch", leave=False), config.observer,
              **observer_options(config))
    train_config = TrainConfig(epochs=config.epochs, lr=config.lr, weight_decay=0.0, seed=seed)

    def on_epoch_start(epoch: int) -> None:
        set_range_tracking(model, epoch < config.freeze_observers_epoch)
        if epoch >= config.freeze_bn_epoch:
            freeze_bn_stats(model)

    result = distill(model, teacher, data, distill_config, train_config, desc=desc,
                     on_epoch_start=on_epoch_start, batch_size=batch_size, **train_kwargs)
    return freeze(model), result
