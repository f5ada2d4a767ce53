"""Shared-prefix packing: the rows of one scene (one system prompt and tool list, many requests) as one sequence.

A router row is ~86% system prompt (demo) to ~97% (published recipe); the rows of a scene share it token for
token. `ScenePackingCollator` lays a scene out as its rows' longest common prefix *of token ids* followed by each
row's remainder, so every request is made of exactly the tokens it has alone, whatever the tokenizer does at the
boundary. `position_ids` restart at the prefix's length in every remainder; a remainder's tokens attend to the prefix
and to their own earlier tokens, never to another remainder; the sliding-window layers limit by *position* distance
(as each row alone has it), not by index. Gemma 3 takes these masks as its documented mapping
`attention_mask={"full_attention": ..., "sliding_attention": ...}` (Qwen3 the same, keyed by its layer types) and
then builds none of its own, and RoPE reads `position_ids`, so a packed scene gives the same hidden states at every
labelled position as its rows one by one. Which families do is sft_router.modeling.families' `scene_packing`.

The prefix stops at least one token before a row's first label, so each row's first target is predicted from a token
of its own remainder, and the token that starts a remainder is never a label: the shifted loss never crosses rows.
The loss covers the same labelled tokens as the padded batch and is normalised by their count (TRL's
`num_items_in_batch`), so it is the mean over completion tokens that separate rows give.

`SceneSampler` keeps a scene's rows adjacent (scenes shuffled per epoch, seeded), so a batch of
`per_device_train_batch_size` rows holds whole scenes when it is a multiple of `scene_size`; a scene cut by a batch
boundary packs as two, still exactly.

Usage: collator = ScenePackingCollator(pad_token_id, layer_types, sliding_window, attn_implementation, dtype)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sft_router.core.router_format import shared_prefix_length

PREFIX, PAD = -1, -2  # segment ids of the shared prefix and of padding; a remainder's id is its row's index


def first_label(labels: list[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != -100), len(labels))


def pack_scene(rows: list[dict]) -> dict[str, list[int]]:
    """One sequence: the rows' shared prefix, then each row's remainder; positions continue from the prefix."""
    ids = [row["input_ids"] for row in rows]
    labels = [row["labels"] for row in rows]
    # A row's first target must be predicted inside its own remainder; a lone row is its own remainder
    prefix = 0 if len(rows) == 1 else min(shared_prefix_length(ids), *(first_label(lab) - 1 for lab in labels))
    prefix = max(prefix, 0)
    packed = {
        "input_ids": ids[0][:prefix],
        "labels": [-100] * prefix,
        "position_ids": list(range(prefix)),
        "segments": [PREFIX] * prefix,
    }
    for index, (row_ids, row_labels) in enumerate(zip(ids, labels)):
        packed["input_ids"] += row_ids[prefix:]
        packed["labels"] += row_labels[prefix:]
        packed["position_ids"] += list(range(prefix, len(row_ids)))
        packed["segments"] += [index] * (len(row_ids) - prefix)
    return packed


def scene_masks(segments: torch.Tensor, positions: torch.Tensor, layer_types, sliding_window) -> dict:
    """Boolean [batch, 1, L, L] masks per layer type: causal, a remainder sees the prefix and itself, pads only
    themselves (a fully masked row would be NaN under SDPA); sliding layers also need position distance < window."""
    q_seg, k_seg = segments[:, :, None], segments[:, None, :]
    index = torch.arange(segments.shape[1])
    causal = index[None, :, None] >= index[None, None, :]
    same_row = (k_seg == PREFIX) | (k_seg == q_seg)
    real = (q_seg != PAD) & (k_seg != PAD)
    diagonal = torch.eye(segments.shape[1], dtype=torch.bool)[None]
    full = (causal & same_row & real) | diagonal
    masks = {}
    for layer_type in dict.fromkeys(layer_types):
        if layer_type == "sliding_attention":
            near = (positions[:, :, None] - positions[:, None, :]) < sliding_window
            masks[layer_type] = ((full & near) | diagonal)[:, None]
        else:
            masks[layer_type] = full[:, None]
    return masks


def additive(mask: torch.Tensor, dtype) -> torch.Tensor:
    """Eager attention adds its mask to the scores: 0 where allowed, the dtype's minimum elsewhere."""
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)


@dataclass
class ScenePackingCollator:
    """Collates tokenized rows (`input_ids`, `labels`, `scene`) into one packed sequence per scene, right padded."""

    pad_token_id: int
    layer_types: tuple[str, ...]
    sliding_window: int | None = None
    attn_implementation: str = "sdpa"
    dtype: torch.dtype = torch.float32

    def __call__(self, examples: list[dict]) -> dict:
        scenes: dict = {}
        for index, example in enumerate(examples):
            scenes.setdefault(example.get("scene", index), []).append(example)
        packed = [pack_scene(rows) for rows in scenes.values()]
        width = max(len(p["input_ids"]) for p in packed)

        def column(key: str, fill: int) -> torch.Tensor:
            return torch.tensor([p[key] + [fill] * (width - len(p[key])) for p in packed])

        segments, positions = column("segments", PAD), column("position_ids", 0)
        masks = scene_masks(segments, positions, self.layer_types, self.sliding_window or width)
        if self.attn_implementation == "eager":
            masks = {name: additive(mask, self.dtype) for name, mask in masks.items()}
        return {
            "input_ids": column("input_ids", self.pad_token_id),
            "labels": column("labels", -100),
            "position_ids": positions,
            "attention_mask": masks,
        }


def packing_collator(model, pad_token_id: int) -> ScenePackingCollator:
    """The collator for `model`'s attention; one line naming the fix for a family that cannot take the masks."""
    from sft_router.core.errors import UsageError
    from sft_router.modeling.families import FAMILIES

    config = model.config.get_text_config()
    packable = [t for family in FAMILIES.values() if family.scene_packing for t in family.model_types]
    if config.model_type not in packable:
        raise UsageError(
            f"scene_packing needs an attention that takes a mask per layer type and position_ids; "
            f"'{config.model_type}' is not known to (known: {', '.join(packable)}): "
            "set `scene_packing: false` in the recipe"
        )
    layer_types = tuple(getattr(config, "layer_types", None) or ("full_attention",))
    return ScenePackingCollator(
        pad_token_id=pad_token_id,
        layer_types=layer_types,
        sliding_window=getattr(config, "sliding_window", None),
        attn_implementation=model.config._attn_implementation,
        dtype=model.dtype,
    )


class SceneSampler(torch.utils.data.Sampler):
    """Row indices with each scene's rows adjacent, in their dataset order; scenes shuffled anew each epoch."""

    def __init__(self, scenes: list[str], seed: int):
        self.groups: dict[str, list[int]] = {}
        for index, scene in enumerate(scenes):
            self.groups.setdefault(scene, []).append(index)
        self.seed, self.epoch, self.length = seed, 0, len(scenes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        groups = list(self.groups.values())
        for order in torch.randperm(len(groups), generator=generator).tolist():
            yield from groups[order]
