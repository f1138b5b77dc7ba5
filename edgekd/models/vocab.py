"""Vocabulary pruning: keep the embedding rows of the tokens a corpus uses.

Half of all-MiniLM-L6-v2's 22.7M parameters are its 30,522 x 384 token embeddings, and a
student for one domain reads a fraction of those tokens. ``prune_vocabulary`` keeps the rows of
the tokens that occur in the given token ids (a training split) plus the special tokens, and
puts a lookup table in front of them (``PrunedEmbedding``): the model still takes the original
tokenizer's ids, so nothing changes for whoever feeds it, and a token the corpus never used
reads the ``[UNK]`` row. The table is one int32 per original token (122 KB for BERT's
vocabulary) against 1,536 bytes per dropped float32 row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

BERT_SPECIALS = (0, 100, 101, 102, 103)  # [PAD] [UNK] [CLS] [SEP] [MASK] in BERT's uncased vocabulary


class PrunedEmbedding(nn.Embedding):
    """An ``nn.Embedding`` over the kept rows, read through ``id_map`` (original id -> row)."""

    def __init__(self, id_map: torch.Tensor, weight: torch.Tensor):
        super().__init__(weight.shape[0], weight.shape[1], _weight=weight.detach().clone())
        self.register_buffer("id_map", id_map.to(torch.int32))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(self.id_map[ids].long(), self.weight)


@dataclass
class PruneReport:
    """What pruning kept and saved."""

    vocab_before: int
    vocab_after: int
    parameters_before: int
    parameters_after: int

    @property
    def parameters_saved(self) -> int:
        return self.parameters_before - self.parameters_after

    def summary(self) -> str:
        return (f"vocabulary pruned to the corpus: {self.vocab_after:,} of {self.vocab_before:,} tokens kept, "
                f"{self.parameters_saved / 1e6:.1f}M of {self.parameters_before / 1e6:.1f}M parameters removed")


def used_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, specials=BERT_SPECIALS) -> np.ndarray:
    """The sorted ids that occur in the real (unpadded) positions, and the special tokens."""
    ids = input_ids[attention_mask.bool()].unique().cpu().numpy()
    return np.union1d(ids, np.asarray(specials, np.int64))


def prune_vocabulary(model: nn.Module, keep: np.ndarray, unknown: int = 100,
                     path: str = "embeddings.word_embeddings") -> PruneReport:
    """Replace the embedding at ``path`` of ``model`` (in place) by the rows of ``keep``; other
    ids read the row of ``unknown`` (which must be kept)."""
    old = model.get_submodule(path)
    if not isinstance(old, nn.Embedding) or isinstance(old, PrunedEmbedding):
        raise ValueError(f"{path} is not an unpruned nn.Embedding")
    keep = np.unique(np.asarray(keep, np.int64))
    if unknown not in keep:
        raise ValueError(f"the unknown token {unknown} must be kept")
    if keep.min() < 0 or keep.max() >= old.num_embeddings:
        raise ValueError(f"token ids must lie in 0..{old.num_embeddings - 1}")
    before = sum(p.numel() for p in model.parameters())
    id_map = torch.full((old.num_embeddings,), int(np.searchsorted(keep, unknown)), dtype=torch.int64)
    id_map[torch.from_numpy(keep)] = torch.arange(len(keep))
    model.set_submodule(path, PrunedEmbedding(id_map, old.weight[torch.from_numpy(keep)]))
    return PruneReport(old.num_embeddings, len(keep), before, sum(p.numel() for p in model.parameters()))


__all__ = ["BERT_SPECIALS", "PruneReport", "PrunedEmbedding", "prune_vocabulary", "used_tokens"]
