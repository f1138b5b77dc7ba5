"""Feature losses: compare student and teacher activations taken at module paths.

``FeatureLoss`` is the base: it names one student path and one teacher path (recipe:
``student: features.block1``, ``teacher: features.block2``), reads both from the ``Batch``, and
owns the small adapter that maps student features onto the teacher's when shapes differ. The
adapter is built by ``prepare`` from the first batch's shapes (before the optimizer exists, so it
is trained with the student), and it belongs to the loss, never to the student: it is not
exported and not saved with the model.

Registered losses (s: student feature, t: teacher feature, r: the adapter):

- ``fitnets``: Romero et al. 2015, "FitNets: Hints for Thin Deep Nets".
      L = mean((r(s) - t)^2)
- ``at``: Zagoruyko & Komodakis 2017, "Paying More Attention to Attention".
      Q = normalize(flatten(mean_c |A|^p)),   L = mean((Q_s - Q_t)^2)
- ``rkd_distance``, ``rkd_angle``: Park, Kim, Lu & Cho 2019, "Relational Knowledge Distillation".
      L_D = mean_ij huber(d_s(i, j) / mu_s, d_t(i, j) / mu_t)
      L_A = mean_ijk huber(cos_s(i, j, k), cos_t(i, j, k))
- ``cosine``: Sanh, Debut, Chaumond & Wolf 2019, "DistilBERT" (cosine loss on hidden states).
      L = mean over vectors of (1 - cos(r(s), t))

Layouts: a 4-D feature is a (N, C, H, W) map, a 3-D feature a (N, L, D) token sequence
(transformer hidden states), a 2-D feature a (N, D) vector per sample. A feature is whatever the
forward hook captured; when a module returns a tuple, list or dict (a transformer block's
``(hidden, attention)``, an LSTM's ``(output, (h, c))``, a ``ModelOutput``), the loss uses its
first tensor, searched depth-first in order.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill.losses import LOSSES, Batch
from edgekd.errors import ConfigError, TrainingError


class FeatureLoss(nn.Module, abc.ABC):
    """Base of the losses between a student feature and a teacher feature; subclasses implement
    ``compare`` (and ``check``/``build_adapter`` when shapes need them)."""

    needs, kind = "features", "feature"
    name = "feature"  # the registered name, for messages

    def __init__(self, student: str, teacher: str, temperature: float = 1.0):
        super().__init__()
        self.student_path, self.teacher_path = student, teacher
        self.adapter: nn.Module | None = None
        self.prepared = False

    def prepare(self, student_feature, teacher_feature) -> None:
        """Check the two shapes and build the adapter (if any) from one batch of features.

        Called once, before the optimizer is built, so the adapter is trained with the student.
        A second call checks the shapes again but keeps the adapter already built.

        Args:
            student_feature: the student hook's output at ``student_path`` (tensor or tuple).
            teacher_feature: the teacher hook's output at ``teacher_path`` (tensor or tuple).

        Raises:
            ConfigError: the two features cannot be compared (the message names both paths and
                shapes), or a hook output holds no tensor.
        """
        s, t = self._tensors(student_feature, teacher_feature)
        if s.dim() == 0 or t.dim() == 0 or s.shape[0] != t.shape[0]:
            raise self.shape_error(s, t, "the batch sizes differ (or a feature has no batch dimension)")
        self.check(s, t)
        if self.adapter is None:
            adapter = self.build_adapter(s, t)
            self.adapter = adapter.to(s.device) if adapter is not None else None
        self.prepared = True

    @classmethod
    def taps(cls, path: str) -> list[str]:
        """The module paths hooked to read the feature named ``path`` (the module itself here;
        a loss built from several module outputs, such as MiniLM's attention from the query and
        key projections, names them all)."""
        return [path]

    def gather(self, features: Mapping, side: str):
        """The ``side`` ("student" or "teacher") feature out of the hooked outputs ``features``
        (by path): what ``prepare`` and ``compare`` receive."""
        return features[self.student_path if side == "student" else self.teacher_path]

    def forward(self, batch: Batch) -> torch.Tensor:
        s, t = self._tensors(self.gather(batch.features, "student"),
                             self.gather(batch.teacher_features, "teacher"))
        t = t.detach()
        if not self.prepared:
            self._prepare_late(s, t)
        return self.compare(*self.select(self.adapt(s, t), t, batch.positions))

    def select(self, student: torch.Tensor, teacher: torch.Tensor, positions: torch.Tensor | None):
        """The parts of the two features the loss compares (all of them here)."""
        return student, teacher

    def check(self, student: torch.Tensor, teacher: torch.Tensor) -> None:
        """Raise ``shape_error`` when the two features cannot be compared; batch sizes already match."""

    def build_adapter(self, student: torch.Tensor, teacher: torch.Tensor) -> nn.Module | None:
        """The module mapping student features onto the teacher's, or None when none is needed."""
        return None

    def adapt(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The student feature mapped onto the teacher's shape (the adapter, if any)."""
        return self.adapter(student) if self.adapter is not None else student

    @abc.abstractmethod
    def compare(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The loss between the adapted student feature and the teacher feature (a scalar)."""

    def shape_error(self, student: torch.Tensor, teacher: torch.Tensor, why: str) -> ConfigError:
        return ConfigError(
            f"feature loss {self.name!r} cannot compare student {self.student_path!r} "
            f"{tuple(student.shape)} with teacher {self.teacher_path!r} {tuple(teacher.shape)}: {why}")

    def _tensors(self, student_feature, teacher_feature) -> tuple[torch.Tensor, torch.Tensor]:
        return (_first_tensor(student_feature, "student", self.student_path),
                _first_tensor(teacher_feature, "teacher", self.teacher_path))

    def _prepare_late(self, s: torch.Tensor, t: torch.Tensor) -> None:
        """Forward before ``prepare``: fine for losses without an adapter, an error otherwise."""
        with torch.no_grad():
            self.prepare(s.detach(), t)
        if self.adapter is not None:
            self.adapter, self.prepared = None, False
            raise TrainingError(
                f"feature loss {self.name!r} ({self.student_path!r} -> {self.teacher_path!r}) needs an "
                f"adapter: call loss.prepare(student_feature, teacher_feature) before building the "
                f"optimizer, so the adapter is trained with the student")


def _first_tensor(value, role: str, path: str) -> torch.Tensor:
    found = _search_tensor(value)
    if found is None:
        raise ConfigError(f"the {role} output at {path!r} is a {type(value).__name__} holding no "
                          f"tensor; choose a module path whose output is a tensor")
    return found


def _search_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        value = value.values()
    elif not isinstance(value, (tuple, list)):
        return None
    for item in value:
        found = _search_tensor(item)
        if found is not None:
            return found
    return None


def resize_map(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a (N, C, H, W) map to ``size``: adaptive average pooling when no side grows,
    bilinear interpolation (align_corners=False) otherwise."""
    size = tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class AlignedFeatureLoss(FeatureLoss):
    """A loss on the student mapped onto the teacher's exact shape.

    Both features must have the same layout: 4-D maps, 3-D token sequences with the same number of
    tokens (compared at the real tokens only when the task marks them: ``Batch.positions``), or 2-D
    vectors. Channels (4-D) or the last dimension (3-D, 2-D) may differ: the adapter
    is then a 1x1 convolution or a linear layer (torch's default init under the global seed),
    built by ``prepare`` only when they differ. A 4-D student map whose spatial size differs is
    first resized to the teacher's grid (``resize_map``: average pooling down, bilinear up),
    *before* the adapter, so the 1x1 convolution runs on the smaller grid when shrinking (both
    operations are linear per position, so the order does not change the result).
    """

    def check(self, s: torch.Tensor, t: torch.Tensor) -> None:
        if s.dim() != t.dim():
            raise self.shape_error(s, t, f"a {s.dim()}-D feature cannot be mapped onto a {t.dim()}-D "
                                         f"one; choose module paths with the same layout (e.g. two "
                                         f"conv blocks), or use rkd_distance / rkd_angle, which "
                                         f"compare pooled embeddings of any dimensions")
        if s.dim() not in (2, 3, 4):
            raise self.shape_error(s, t, "expected (N, D) vectors, (N, L, D) tokens or "
                                         "(N, C, H, W) maps")
        if s.dim() == 3 and s.shape[1] != t.shape[1]:
            raise self.shape_error(s, t, "the token sequences have different lengths")

    def build_adapter(self, s: torch.Tensor, t: torch.Tensor) -> nn.Module | None:
        if s.dim() == 4 and s.shape[1] != t.shape[1]:
            return nn.Conv2d(s.shape[1], t.shape[1], kernel_size=1)
        if s.dim() in (2, 3) and s.shape[-1] != t.shape[-1]:
            return nn.Linear(s.shape[-1], t.shape[-1])
        return None

    def adapt(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if s.dim() == 4:
            s = resize_map(s, t.shape[-2:])  # (N, C_s, H_t, W_t)
        return super().adapt(s, t)

    def select(self, student: torch.Tensor, teacher: torch.Tensor, positions: torch.Tensor | None):
        """Token states (N, L, D) of a text batch: the real tokens only, (M, D); padding is not
        compared (its states depend on nothing the model is asked about)."""
        if positions is not None and student.dim() == 3 and tuple(student.shape[:2]) == tuple(positions.shape):
            return student[positions], teacher[positions]
        return student, teacher


@LOSSES.register("fitnets")
class FitNetsLoss(AlignedFeatureLoss):
    """FitNets hint loss (Romero, Ballas, Kahou, Chassang, Gatta & Bengio 2015).

        L = mean((r(s) - t)^2)   over batch, channels and positions

    r is the adapter of ``AlignedFeatureLoss`` (1x1 conv / linear, identity when the shapes
    agree; spatial sizes reconciled by pooling or bilinear resizing). The paper's regressor is a
    convolution whose kernel matches the spatial sizes, trained in a separate hint stage with
    (1/2) * sum; here the hint is one term of the objective, averaged. A common weight next to
    CE/KD is about 100 (CRD's benchmark, Tian et al. 2020).
    """

    name = "fitnets"

    def compare(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(student, teacher)


@LOSSES.register("at")
class AttentionTransferLoss(FeatureLoss):
    """Activation-based attention transfer (Zagoruyko & Komodakis 2017).

    For a (N, C, H, W) map A the attention map is the channel mean of |A|^p, flattened and
    L2-normalized per sample:
        Q = normalize(flatten(mean_c |A|^p))                 # (N, H*W)
        L = mean((Q_s - Q_t)^2)   over batch and positions
    The paper's Eq. 2 uses the (unsquared) p-norm of Q_s - Q_t per sample; this is the authors'
    code (``(at(x) - at(y)).pow(2).mean()``), also used by torchdistill and CRD. Because the
    mean divides by N*H*W the values are small: use a weight around 1000 (the authors' beta = 1e3,
    applied as beta/2 per attention pair; CRD uses 1000).

    Channel counts may differ (no adapter). When the spatial sizes differ, the attention map of
    the larger feature (before normalization) is adaptive-average-pooled to the smaller grid, per
    side, i.e. the energy of each coarse cell is the mean energy of the fine cells it covers.
    """

    name = "at"

    def __init__(self, student: str, teacher: str, temperature: float = 1.0, p: float = 2.0):
        super().__init__(student, teacher)
        self.p = p

    def check(self, s: torch.Tensor, t: torch.Tensor) -> None:
        if s.dim() != 4 or t.dim() != 4:
            raise self.shape_error(s, t, "attention transfer needs two (N, C, H, W) feature maps")

    def compare(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        size = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))
        q_s, q_t = self._attention(student, size), self._attention(teacher, size)  # (N, h*w)
        return (q_s - q_t).pow(2).mean()

    def _attention(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        energy = x.abs().pow(self.p).mean(1, keepdim=True)      # (N, 1, H, W)
        if tuple(energy.shape[-2:]) != size:
            energy = F.adaptive_avg_pool2d(energy, size)        # (N, 1, h, w)
        return F.normalize(energy.flatten(1), dim=1)            # (N, h*w)


def _embedding(x: torch.Tensor) -> torch.Tensor:
    """One vector per sample: global average pooling of a (N, C, H, W) map, else flatten.  # (N, D)"""
    return x.mean((2, 3)) if x.dim() == 4 else x.flatten(1)


class RelationalLoss(FeatureLoss):
    """Base of the RKD losses: relations among the batch's embeddings, so dimensions may differ.

    Embeddings: 4-D maps are global-average-pooled to (N, C); other features are flattened to
    (N, D). (The paper distils final embeddings; CRD flattens maps without pooling.)
    """

    def check(self, s: torch.Tensor, t: torch.Tensor) -> None:
        if s.dim() < 2 or t.dim() < 2:
            raise self.shape_error(s, t, "expected one feature vector or map per sample, (N, ...)")


def pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of ``e``; zero diagonal.  # (N, D) -> (N, N)"""
    sq = e.pow(2).sum(1)                                                 # (N,)
    d2 = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp_min(1e-12)  # (N, N)
    off_diagonal = 1 - torch.eye(len(e), dtype=e.dtype, device=e.device)
    return d2.sqrt() * off_diagonal


@LOSSES.register("rkd_distance")
class RKDDistanceLoss(RelationalLoss):
    """Distance-wise relational KD, RKD-D (Park, Kim, Lu & Cho 2019).

    With d(i, j) = ||e_i - e_j||_2 between the batch's embeddings and mu the mean distance over
    the pairs i != j,
        L_D = mean_ij huber(d_s(i, j) / mu_s, d_t(i, j) / mu_t)
    where huber is smooth L1 with delta = 1 and the mean runs over the whole N x N matrix (zero
    diagonal included), as in the authors' code. Needs a batch of 2 or more to carry signal.
    A common weight is 25 (the paper's classification setting; CRD's w_d).
    """

    name = "rkd_distance"

    def compare(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        d_s, d_t = self._normalized(_embedding(student)), self._normalized(_embedding(teacher))
        return F.smooth_l1_loss(d_s, d_t)

    @staticmethod
    def _normalized(e: torch.Tensor) -> torch.Tensor:
        d = pairwise_distances(e)                    # (N, N)
        pairs = max(len(e) * (len(e) - 1), 1)
        return d / (d.sum() / pairs).clamp_min(1e-12)


@LOSSES.register("rkd_angle")
class RKDAngleLoss(RelationalLoss):
    """Angle-wise relational KD, RKD-A (Park, Kim, Lu & Cho 2019).

    For every triplet of the batch's embeddings, the cosine of the angle at vertex i,
        cos(i, j, k) = <u_ij, u_ik>,   u_ij = (e_j - e_i) / ||e_j - e_i||_2
        L_A = mean_ijk huber(cos_s(i, j, k), cos_t(i, j, k))
    with smooth L1 (delta = 1) over all N^3 triplets; degenerate ones (j = i or k = i) have
    u = 0 and cosine 0 on both sides, as in the authors' code. Memory is N^2 * D for the
    differences and N^3 for the cosines. Needs a batch of 3 or more to carry signal.
    A common weight is 50 (the paper's classification setting; CRD's w_a).
    """

    name = "rkd_angle"

    def compare(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.smooth_l1_loss(self._angles(_embedding(student)), self._angles(_embedding(teacher)))

    @staticmethod
    def _angles(e: torch.Tensor) -> torch.Tensor:
        u = F.normalize(e[None, :, :] - e[:, None, :], dim=2)  # (N, N, D): u[i, j] = unit(e_j - e_i)
        return torch.bmm(u, u.transpose(1, 2))                 # (N, N, N): cos(i, j, k)


def _vectors(x: torch.Tensor) -> torch.Tensor:
    """The vectors compared by ``cosine``.  # (N, C, H, W) -> (N*H*W, C); (N, L, D) -> (N*L, D)"""
    return x.permute(0, 2, 3, 1).flatten(0, 2) if x.dim() == 4 else x.flatten(0, -2)


@LOSSES.register("cosine")
class CosineLoss(AlignedFeatureLoss):
    """Cosine embedding loss on hidden states (Sanh, Debut, Chaumond & Wolf 2019, DistilBERT).

        L = mean over vectors v of (1 - cos(r(s)_v, t_v))
    The vectors are aligned positions, like DistilBERT's per-token hidden states: one per token
    of a (N, L, D) sequence, one per spatial position (over channels) of a (N, C, H, W) map (after
    resizing the student to the teacher's grid), one per sample of a (N, D) feature. r is the
    adapter of ``AlignedFeatureLoss`` (1x1 conv / linear when channel counts differ; DistilBERT
    needs none as it keeps the teacher's width). A zero vector on either side has cosine 0, so it
    adds 1 to the sum and no gradient. DistilBERT weights this term 1.0 (alpha_cos).
    """

    name = "cosine"

    def compare(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return (1 - F.cosine_similarity(_vectors(student), _vectors(teacher), dim=1)).mean()
