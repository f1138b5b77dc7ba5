"""What every text task shares: token inputs, text data, length-grouped and trimmed batches.

Inputs are ``(input_ids, attention_mask)`` int64 (N, L) from ``edgekd.data.text`` (``data.source``:
``stdlib-docs`` or a ``.txt``/``.jsonl``/``.csv`` file; ``data.text`` sets the tokenizer, the
length and the batching). Training batches are formed of texts of similar length
(``group_by_length``) and cut to their longest text (or bucket): padding changes no real token's
output, so only the time changes, about 3x on the built-in corpus at 64 tokens. Evaluation and
the exported models take the full ``max_length``.
"""

from __future__ import annotations

from typing import Any

import torch

from edgekd.tasks.base import Task
from edgekd.tasks.spec import TensorSpec


class TextTask(Task):
    """Base of the tasks whose model reads token ids and an attention mask."""

    augments = False

    def load_data(self, config) -> Any:
        from edgekd.data.text import load_text_data
        from edgekd.errors import DataError

        if config.source == "digits":
            raise DataError(f"{self.name} reads text: set data.source to 'stdlib-docs' (built in) or a "
                            f".txt, .jsonl or .csv file")
        return load_text_data(config.source, config.text, config.split, config.seed)

    def input_spec(self, data) -> list[TensorSpec]:
        length = data.input_shape[0]
        vocab = data.vocab_size or int(data.x_train[0].max()) + 1
        return [TensorSpec("input_ids", "int64", ("batch", length), 0, vocab - 1),
                TensorSpec("attention_mask", "int64", ("batch", length), 0, 1)]

    def model_args(self, data) -> dict[str, Any]:
        return {"vocab_size": data.vocab_size}

    def token_positions(self, x) -> torch.Tensor | None:
        return x[1].bool()  # the attention mask

    def batch_order(self, order: torch.Tensor, data, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        if not data.group_by_length:
            return order
        from edgekd.data.text import length_grouped_order

        return length_grouped_order(order, data.x_train[1].sum(1), batch_size, generator)

    def trim(self, x, data):
        if data.length_buckets is None:
            return x
        from edgekd.data.text import trim_to_bucket

        return trim_to_bucket(x[0], x[1], data.length_buckets)
