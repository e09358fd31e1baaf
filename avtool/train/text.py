"""Narrations to CLIP BPE token ids, in the data-loader workers (the tokenizer ships with open_clip)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import default_collate


class Tokenizer:
    """open_clip's CLIP tokenizer, created on first use (so each worker builds its own)."""

    def __init__(self, context_length: int) -> None:
        self.context_length = context_length
        self._tokenizer = None

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), context_length) int64 ids: start token, BPE tokens, end token (the largest id,
        which the text tower pools at), zero padding; longer texts are cut before the end token."""
        if self._tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            self._tokenizer = SimpleTokenizer()
        return self._tokenizer(list(texts), context_length=self.context_length)

    def __getstate__(self) -> dict[str, Any]:
        return {"context_length": self.context_length, "_tokenizer": None}


class TokenizeCollate:
    """Collate dataset items; the ``text`` strings become a (B, context_length) tensor of token ids."""

    def __init__(self, context_length: int) -> None:
        self.tokenize = Tokenizer(context_length)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        texts = [item["text"] for item in items]
        batch = default_collate([{k: v for k, v in item.items() if k != "text"} for item in items])
        batch["text"] = self.tokenize(texts)
        return batch
