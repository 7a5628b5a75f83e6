"""How the velocity network follows the image: levels from the image size, widths from a named model size, attention
only where its token count stays small.

A UNet level halves every side, so the number of levels sets what the deepest level (the bottleneck) sees: with
three levels at 256 px it sees 64 x 64 px patches and never the whole image. `sized_network` picks the fewest levels
(at least three, today's network) that bring the largest side down to BOTTLENECK_SIDE or less (8-16 px in 2D, 4-8
voxels in 3D), as far as every side stays divisible. Attention goes at the bottleneck only, and only when its token
count is at most the limit: an attention map grows with the square of the tokens (4096 tokens: 64 MiB per head and
image in float32). At 48 px this is the network the project always had: 32/64/64 channels, attention at 12 x 12.
"""

from __future__ import annotations

import math

from motfm_core.errors import BadInput

__all__ = ["ATTENTION_TOKENS", "BOTTLENECK_SIDE", "LEVEL_WIDTHS", "MIN_LEVELS", "WIDTHS", "attention_tokens",
           "check_attention", "level_sides", "sized_network"]

WIDTHS: dict[str, int] = {"small": 32, "medium": 64, "large": 128}  # channels of the first level per model size
LEVEL_WIDTHS = (1, 2, 2, 4, 4, 4, 4, 4)  # each level's channels as a multiple of the first level's
BOTTLENECK_SIDE = {2: 16, 3: 8}  # the largest side the deepest level should see, per spatial_dims
ATTENTION_TOKENS = {2: 1024, 3: 512}  # default limit of an attention level's tokens (model.max_attention_tokens)
MIN_LEVELS = 3


def level_sides(shape: tuple[int, ...], levels: int) -> list[tuple[int, ...]]:
    """The spatial shape each of `levels` levels works at (the first is `shape`)."""
    return [tuple(s // 2 ** i for s in shape) for i in range(levels)]


def attention_tokens(shape: tuple[int, ...], level: int) -> int:
    """Tokens an attention block at `level` attends over: the voxels of that level's feature map."""
    return math.prod(level_sides(shape, level + 1)[level])


def _levels(shape: tuple[int, ...]) -> int:
    dims = len(shape)
    most = 1 + min((s & -s).bit_length() - 1 for s in shape)  # every side must halve evenly at each level
    want = MIN_LEVELS
    while max(shape) / 2 ** (want - 1) > BOTTLENECK_SIDE[dims] and want < most:
        want += 1
    return max(min(want, most), 1)


def sized_network(size: str, shape: tuple[int, ...], channels: tuple[int, ...] = (),
                  attention_levels: tuple[bool, ...] = (), token_limit: int = 0
                  ) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """(channels, attention_levels) for model size `size` on images of spatial `shape` ((H, W) or (H, W, D)).

    Given `channels` win (their length is the number of levels); given `attention_levels` win and, without
    channels, set the number of levels. Otherwise attention sits at the deepest level when its tokens are at most
    `token_limit` (0: ATTENTION_TOKENS for the dims)."""
    if size not in WIDTHS:
        raise BadInput(f"model.size must be one of {sorted(WIDTHS)}, got {size!r}")
    levels = len(channels) or len(attention_levels) or _levels(shape)
    if levels > len(LEVEL_WIDTHS):
        raise BadInput(f"model.channels: at most {len(LEVEL_WIDTHS)} levels are sized, got {levels}; give "
                       "model.channels explicitly")
    if not channels:
        channels = tuple(WIDTHS[size] * m for m in LEVEL_WIDTHS[:levels])
    if not attention_levels:
        limit = token_limit or ATTENTION_TOKENS[len(shape)]
        deepest = attention_tokens(shape, levels - 1) <= limit
        attention_levels = (False,) * (levels - 1) + (deepest,)
    return tuple(channels), tuple(attention_levels)


def check_attention(shape: tuple[int, ...], attention_levels: tuple[bool, ...], token_limit: int = 0) -> None:
    """Refuse an attention level whose token count is over `token_limit` (0: ATTENTION_TOKENS), naming the level,
    its tokens and the fix."""
    limit = token_limit or ATTENTION_TOKENS[len(shape)]
    for level, on in enumerate(attention_levels):
        tokens = attention_tokens(shape, level)
        if on and tokens > limit:
            side = " x ".join(map(str, level_sides(shape, level + 1)[level]))
            raise BadInput(
                f"model.attention_levels: level {level} attends over {side} = {tokens} tokens, over the limit of "
                f"{limit} for {len(shape)}D (its attention map alone is {tokens ** 2 * 4 / 2 ** 20:.0f} MiB per head "
                "and image); put attention at a deeper level, add levels (model.channels), or raise "
                "model.max_attention_tokens")
