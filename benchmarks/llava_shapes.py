"""A randomly initialised LLaVA-1.5 and a locally made tokenizer/processor, at any shape, with nothing downloaded.

The captioner's tests use the tiny shape (the model writes garbage; they check structure) and the captioner
benchmark uses LLaVA-1.5-7B's exact shapes (the same compute as the real model, garbage text). The tokenizer is a
word-level one trained on the two caption prompts, padded with filler tokens up to the model's vocabulary so that
every id a random model picks decodes to a word.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fba.data.captions import BG_PROMPT, FG_PROMPT

if TYPE_CHECKING:
    import torch

RESERVED_TOKENS = ("<unk>", "<pad>", "<s>", "</s>", "<image>")
EXTRA_WORDS = "USER: ASSISTANT: a man woman red blue black coat bag car tree wall street bicycle pole"


@dataclass(frozen=True)
class LlavaShape:
    """The sizes of a LLaVA-1.5: a CLIP vision tower, its projector and a Llama; ``vocab_size=None``: the words'."""

    name: str
    image_size: int
    patch_size: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    projection_dim: int
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    max_positions: int
    rms_norm_eps: float = 1e-6
    vocab_size: int | None = None

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


TINY = LlavaShape("tiny", image_size=28, patch_size=14, vision_hidden=32, vision_intermediate=64, vision_layers=2,
                  vision_heads=2, projection_dim=32, text_hidden=32, text_intermediate=64, text_layers=2,
                  text_heads=2, text_kv_heads=2, max_positions=256)
# llava-hf/llava-1.5-7b-hf config.json: CLIP ViT-L/14-336 and Vicuna-7B.
LLAVA15_7B = LlavaShape("llava-1.5-7b", image_size=336, patch_size=14, vision_hidden=1024, vision_intermediate=4096,
                        vision_layers=24, vision_heads=16, projection_dim=768, text_hidden=4096,
                        text_intermediate=11008, text_layers=32, text_heads=32, text_kv_heads=32, max_positions=4096,
                        rms_norm_eps=1e-5, vocab_size=32064)


def llava_processor(shape: LlavaShape, chat_template: str | None = None) -> Any:
    """A ``LlavaProcessor``: the word-level tokenizer and a CLIP image processor at the shape's image size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    trained = Tokenizer(models.WordLevel(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Whitespace()
    trained.train_from_iterator([FG_PROMPT, BG_PROMPT, EXTRA_WORDS],
                                trainers.WordLevelTrainer(special_tokens=list(RESERVED_TOKENS)))
    vocab = trained.get_vocab()
    vocab.update({f"tok{i}": i for i in range(len(vocab), shape.vocab_size or 0)})
    words = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    side = shape.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=shape.patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=chat_template,
    )


def llava_config(shape: LlavaShape, tokenizer: Any) -> Any:
    """The ``LlavaConfig`` of ``shape``, its special token ids taken from ``tokenizer``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in RESERVED_TOKENS}
    return LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=shape.vision_hidden, intermediate_size=shape.vision_intermediate,
            num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
            image_size=shape.image_size, patch_size=shape.patch_size, projection_dim=shape.projection_dim,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=shape.text_hidden, intermediate_size=shape.text_intermediate,
            num_hidden_layers=shape.text_layers, num_attention_heads=shape.text_heads,
            num_key_value_heads=shape.text_kv_heads, max_position_embeddings=shape.max_positions,
            rms_norm_eps=shape.rms_norm_eps, pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"],
            eos_token_id=ids["</s>"],
        ),
        image_token_index=ids["<image>"], image_seq_length=shape.image_tokens, vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def random_llava(
    shape: LlavaShape, processor: Any, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
    seed: int = 0,
) -> Any:
    """A ``LlavaForConditionalGeneration`` with seeded random weights, built directly on ``device`` in ``dtype``.

    Built in place (default dtype and device switched while the modules are made): a 7B model is never
    materialised in fp32 on the host first.
    """
    import torch
    from transformers import LlavaForConditionalGeneration

    config = llava_config(shape, processor.tokenizer)
    previous = torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(dtype or previous)
    try:
        with torch.device(device):
            return LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
