"""Per-split text inputs of the model, prepared once and gathered per batch by its ``index``.

Without a text cache the captions are tokenised once (token ids [n, 77] on the device) and the frozen tower
runs inside each step. With ``model.text_cache`` every caption's tower output is computed once through the
model's ``TextFeatureCache`` and a step only gathers rows: no text tower in the step at all.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fba.data.captions import CaptionBank
from fba.model.text import Text, TextFeatures


def text_inputs(model, captions: Sequence[str], progress: bool = False) -> Text:
    """What ``model`` takes for these captions: the cached tower features when it has a ``text_cache``, else
    token ids (the frozen tower then runs in the forward). The one place that choice is made."""
    if model.text_cache is not None:
        return model.encode_captions(list(captions), progress=progress)
    return model.text_encoder.tokenize(list(captions))


def _gather(text: Text, index: torch.Tensor, dtype: torch.dtype) -> Text:
    if isinstance(text, TextFeatures):
        picked = text.select(index)
        return TextFeatures(picked.states.to(dtype), picked.valid, picked.eot)
    return text[index]


@dataclass
class TextBank:
    fg: Text
    bg: Text

    @classmethod
    def build(
        cls, model, fg: Sequence[str], bg: Sequence[str], device: torch.device, progress: bool = False
    ) -> TextBank:
        """:func:`text_inputs` of the fg and bg captions (in item order), on ``device``."""
        return cls(*(text_inputs(model, captions, progress).to(device) for captions in (fg, bg)))

    @classmethod
    def for_split(cls, model, dataset, split: str, store, device: torch.device, progress: bool = False) -> TextBank:
        """The text inputs of one split of ``dataset``, from its captions ``store`` (a CaptionStore)."""
        captions = CaptionBank.for_split(dataset, split, store)
        return cls.build(model, captions.fg, captions.bg, device, progress)

    def __len__(self) -> int:
        return len(self.fg.eot if isinstance(self.fg, TextFeatures) else self.fg)

    def select(self, index: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[Text, Text]:
        """The (fg, bg) inputs of a batch; cached features come in ``dtype`` (the compute dtype)."""
        device = self.fg.eot.device if isinstance(self.fg, TextFeatures) else self.fg.device
        index = index.to(device, non_blocking=True)  # the loaders pin their batches: no host sync per step
        return _gather(self.fg, index, dtype), _gather(self.bg, index, dtype)
