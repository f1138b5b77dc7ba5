"""Read intermediate features by module path through forward hooks.

``FeatureTaps(model, ["features.block1", ...])`` registers one forward hook per path and keeps
the latest output of each. Paths may carry DistributedDataParallel's ``module.`` prefix or not.
A path that names no module is a config error (with the nearest valid names); a hook that did not
fire during a forward pass is a training error, never a silent empty loss.

After ``prepare_qat`` the student is a torch.fx GraphModule: containers such as
``features.block1`` still exist as attributes but their ``forward`` is never called (fx inlined
their children). For such a path the tap follows the *last node inside it* in the traced graph
(the block's output, after its activation quantizer), so feature distillation keeps working on
the int8-simulated student.
"""

from __future__ import annotations

from torch import fx, nn

from edgekd.errors import ConfigError, TrainingError, did_you_mean


def strip_ddp(path: str) -> str:
    return path.removeprefix("module.")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module) and type(model).__name__ in (
            "DistributedDataParallel", "DataParallel"):
        model = model.module
    return model


def resolve(model: nn.Module, path: str, role: str = "student") -> tuple[str, nn.Module]:
    """The module whose output is the feature at ``path`` (see the module docstring)."""
    model = unwrap(model)
    path = strip_ddp(path)
    modules = dict(model.named_modules())
    if path not in modules:
        names = [n for n in modules if n]
        raise ConfigError(f"{role} has no module {path!r}{did_you_mean(path, names)}; its modules "
                          f"include: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}")
    if isinstance(model, fx.GraphModule):
        called = [n.target for n in model.graph.nodes if n.op == "call_module"]
        if path not in called:
            inside = [t for t in called if t.startswith(path + ".")]
            if not inside:
                raise ConfigError(f"{role} module {path!r} is not run by the traced (int8) model")
            path = inside[-1]
    return path, modules[path]


class FeatureTaps:
    """Forward hooks on ``paths`` of ``model``; ``collect()`` returns {requested path: output}."""

    def __init__(self, model: nn.Module, paths: list[str], role: str = "student"):
        self.role = role
        self.paths = list(dict.fromkeys(paths))
        self.outputs: dict[str, object] = {}
        self._handles = []
        for path in self.paths:
            _, module = resolve(model, path, role)
            self._handles.append(module.register_forward_hook(self._hook(path)))

    def _hook(self, path: str):
        def hook(module, inputs, output):
            self.outputs[path] = output
        return hook

    def collect(self) -> dict:
        """The outputs of the last forward pass; raises if a hook did not fire."""
        missing = [p for p in self.paths if p not in self.outputs]
        if missing:
            raise TrainingError(f"{self.role} feature hook(s) on {', '.join(map(repr, missing))} never "
                                f"fired during the forward pass: the module is not on the path that "
                                f"computes the output; choose another module path")
        out, self.outputs = self.outputs, {}
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
