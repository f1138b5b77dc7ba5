"""Model registry and factory; user models and edgekd checkpoints.

A model is named by a ``ModelSpec``: ``arch`` is a registered name (``list_models()``) or a user
callable written ``package.module:callable`` (the one explicit way a recipe runs user code), plus
keyword arguments. Checkpoints are plain dicts of tensors and primitives, so they load with
``torch.load(weights_only=True)``; they record the spec (and the QAT config, for int8 students)
so the model can be rebuilt without the recipe.
"""

from __future__ import annotations

import importlib
import inspect
import io
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekd import atomic
from edgekd.config import Config, check_name
from edgekd.errors import ConfigError, ModelLoadError
from edgekd.registry import Registry

MODELS: Registry = Registry("model")
CHECKPOINT_FORMAT = "edgekd-checkpoint"
CHECKPOINT_VERSION = 1


def register_model(name: str):
    """Decorator registering ``fn(**kwargs) -> nn.Module`` as ``name``. The factory passes the
    task's model arguments the function accepts (``in_channels``, ``num_classes`` for images;
    ``vocab_size`` for token inputs: ``Task.model_args``) besides the spec's own ``kwargs``."""
    return MODELS.register(name)


def list_models() -> list[str]:
    return MODELS.names()


@dataclass
class ModelSpec(Config):
    """Which model to build.

    Attributes:
        arch: a registered name (see ``edgekd models``) or ``package.module:callable``.
        kwargs: keyword arguments for the architecture (e.g. ``dropout``).
        checkpoint: an edgekd checkpoint to load instead of training (teacher) or to start from.
    """

    arch: str = "cnn-teacher"
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None

    def __post_init__(self):
        if ":" not in self.arch:
            check_name(MODELS, self.arch, "arch")


def create_model(spec: ModelSpec | str, in_channels: int = 1, num_classes: int = 10,
                 **model_args: Any) -> nn.Module:
    """Build a model from a spec or a name; ``in_channels``, ``num_classes`` and any other
    ``model_args`` (``Task.model_args``) are passed where the architecture accepts them.

    Raises:
        ConfigError: unknown architecture, unimportable user callable, or a callable that does
            not return an ``nn.Module``.
    """
    spec = ModelSpec(arch=spec) if isinstance(spec, str) else spec
    fn = resolve_arch(spec.arch)
    kwargs = dict(spec.kwargs)
    params = inspect.signature(fn).parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key, value in {"in_channels": in_channels, "num_classes": num_classes, **model_args}.items():
        if key in params or accepts_any:
            kwargs.setdefault(key, value)
    try:
        model = fn(**kwargs)
    except TypeError as err:
        raise ConfigError(f"model {spec.arch!r}: bad arguments {kwargs} ({err})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {spec.arch!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def resolve_arch(arch: str):
    """The function that builds ``arch`` (a registered name, or ``package.module:callable``: imported here).

    Raises:
        ConfigError: unknown name, or a user module that cannot be imported or lacks the callable.
    """
    if ":" not in arch:
        return MODELS.get(arch)
    module_name, _, attr = arch.partition(":")
    if not module_name or not attr or module_name.startswith("."):
        raise ConfigError(f"model {arch!r}: expected package.module:callable (absolute module path)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"model {arch!r}: cannot import module {module_name!r} ({err}); "
                          f"is it installed or on PYTHONPATH?") from None
    except Exception as err:  # the user's module itself failed while importing
        raise ConfigError(f"model {arch!r}: importing {module_name!r} failed with "
                          f"{type(err).__name__}: {err}") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"model {arch!r}: module {module_name!r} has no callable {attr!r}")
    return fn


def _example_inputs(payload: dict):
    """Zeros of the inputs a checkpoint records (two samples; dynamic axes at length 8), to trace
    its model as QAT traced it; None when it records no inputs."""
    import numpy as np

    from edgekd.tasks.spec import TensorSpec

    specs = [TensorSpec.from_dict(s) for s in (payload.get("task") or {}).get("inputs") or []]
    try:
        if specs:
            axes = {d: 8 for spec in specs for d in spec.shape[1:] if isinstance(d, str)}
            return tuple(torch.zeros(spec.bind(axes, batch=2), dtype=torch.from_numpy(np.zeros(0, spec.dtype)).dtype)
                         for spec in specs)
    except ConfigError:
        return None
    shape = payload.get("input_shape")
    return torch.zeros(2, *shape) if shape else None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(path: str | Path, model: nn.Module, spec: ModelSpec, *, in_channels: int | None = None,
                    num_classes: int | None = None, input_shape: tuple[int, ...] | None = None,
                    model_args: dict | None = None, task: dict | None = None, qat: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write an edgekd checkpoint atomically; ``qat`` is the QATConfig dict of an int8 model.

    ``model_args`` (``Task.model_args``; ``in_channels``/``num_classes`` are two of them) rebuild
    the architecture; ``task`` (``Task.to_dict(data)``) records the input and output specs the
    exporter uses, ``input_shape`` the (C, H, W) of an image model.
    """
    args = dict(model_args or {})
    for key, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if value is not None:
            args[key] = value
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": spec.to_dict() | args,
        "input_shape": list(input_shape) if input_shape is not None else None,
        "task": task,
        "qat": qat,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic.write_bytes(path, buffer.getvalue())


def read_checkpoint(path: str | Path) -> dict:
    """Load and check an edgekd checkpoint dict (``weights_only=True``: no code runs).

    Raises:
        ModelLoadError: missing, truncated/corrupt, or not an edgekd checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: checkpoint not found")
    foreign = _foreign_format(path)
    if foreign:
        raise ModelLoadError(f"{path}: this is {foreign}, not an edgekd checkpoint (.pt)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
            OSError) as err:
        # torch < 2.6: "Unsupported global: GLOBAL x"; 2.6+: "unsupported GLOBAL x whose module ..."
        unsafe = re.search(r"unsupported global:? GLOBAL ([\w.]+)", str(err), re.IGNORECASE)
        name = unsafe.group(1) if unsafe else _code_in_pickle(path) if isinstance(err, pickle.UnpicklingError) else None
        if name:
            raise ModelLoadError(f"{path}: refused to load: the file contains a Python object "
                                 f"({name}) that would run code when loaded, not only tensors and plain "
                                 f"data; edgekd loads checkpoints with weights_only=True and never runs code "
                                 f"from them") from None
        # torch's own text for unpickling errors advises weights_only=False: never relay it
        detail = "" if isinstance(err, pickle.UnpicklingError) else f" ({str(err).splitlines()[0][:120]})"
        raise ModelLoadError(f"{path}: not a readable checkpoint, the file is truncated or "
                             f"corrupt{detail}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelLoadError(f"{path}: not an edgekd checkpoint (no format={CHECKPOINT_FORMAT!r}); "
                             f"save models with edgekd.models.save_checkpoint")
    version = payload.get("version")
    if isinstance(version, int) and version > CHECKPOINT_VERSION:
        raise ModelLoadError(f"{path}: checkpoint version {version} is newer than this "
                             f"edgekd supports ({CHECKPOINT_VERSION}); upgrade edgekd")
    if not isinstance(version, int) or not isinstance(payload.get("model"), dict) \
            or not isinstance(payload.get("state_dict"), dict):
        raise ModelLoadError(f"{path}: malformed edgekd checkpoint (needs integer 'version', "
                             f"'model' and 'state_dict')")
    return payload


FOREIGN_SUFFIXES = {
    ".onnx": "an ONNX model; `edgekd export` converts it directly (edgekd export MODEL.onnx -f tflite), and "
             "`edgekd ptq` quantizes edgekd float checkpoints only (a float ONNX file has no training graph)",
    ".tflite": "a TFLite model, already exported; benchmark it with `edgekd bench`, or export from the "
               "checkpoint or .onnx file it came from",
    ".xml": "an OpenVINO IR, already exported; benchmark it with `edgekd bench`, or export from the "
            "checkpoint or .onnx file it came from",
    ".bin": "OpenVINO IR weights; give the .xml beside it to `edgekd bench`",
}


def _foreign_format(path: Path) -> str | None:
    """What another known model format ``path`` holds (by suffix, or a TFLite/XML header)."""
    with open(path, "rb") as f:
        head = f.read(16)
    suffix = path.suffix.lower()
    if head[4:8] == b"TFL3":
        suffix = ".tflite"
    elif head.lstrip().startswith(b"<?xml"):
        suffix = ".xml"
    return FOREIGN_SUFFIXES.get(suffix)


def _code_in_pickle(path: Path) -> str | None:
    """The first global a pickle (plain, or a torch zip's data.pkl) would import, other than
    torch's and collections', or None: what a weights-only load refused."""
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = next((archive.read(n) for n in archive.namelist() if n.endswith("data.pkl")), b"")
        else:
            data = path.read_bytes()
        strings: list[str] = []
        for opcode, arg, _ in pickletools.genops(data):
            if isinstance(arg, str):
                strings.append(arg)
            name = (arg.replace(" ", ".") if opcode.name in ("GLOBAL", "INST") and isinstance(arg, str)
                    else ".".join(strings[-2:]) if opcode.name == "STACK_GLOBAL" and len(strings) >= 2 else None)
            if name and not name.startswith(("torch.", "collections.", "_codecs.", "numpy.core.multiarray._reconstruct")):
                return name
    except Exception:  # a broken pickle: the caller reports the file as corrupt
        return None
    return None


def checkpoint_spec(payload: dict) -> tuple[ModelSpec, dict[str, Any]]:
    """(ModelSpec, model arguments) recorded in a checkpoint dict.

    Raises:
        KeyError, ConfigError: the record is incomplete or invalid.
    """
    info = dict(payload["model"])
    fields = set(ModelSpec.__dataclass_fields__)
    args = {k: info.pop(k) for k in list(info) if k not in fields}
    return ModelSpec.from_dict(info), args


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model saved in an edgekd checkpoint (QAT models come back frozen, in eval mode).

    Returns:
        The model and the checkpoint dict (without the state dict).

    Raises:
        ModelLoadError: unreadable file, or weights that do not fit the recorded architecture.
    """
    payload = read_checkpoint(path)
    try:
        spec, args = checkpoint_spec(payload)
        model = create_model(spec, **args)
    except (KeyError, ConfigError) as err:
        raise ModelLoadError(f"{path}: the checkpoint's model cannot be rebuilt ({err})") from None
    if hasattr(model, "fit_state_dict"):  # e.g. a pruned vocabulary: the model takes its shape first
        model.fit_state_dict(payload["state_dict"])
    if payload.get("qat"):
        from edgekd.quant.qat import QATConfig, rebuild_frozen

        model = rebuild_frozen(model, QATConfig.from_dict(payload["qat"]), _example_inputs(payload))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise ModelLoadError(f"{path}: weights do not fit architecture {spec.arch!r}: "
                             f"{str(err).splitlines()[0][:300]}") from None
    model.eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta
