"""Memorable two-word board names (ENM's "holy-sunset"), unique within one gateway."""

from __future__ import annotations

import hashlib
from collections.abc import Container

ADJECTIVES = (
    "amber autumn bold brave brisk calm clever cosmic crimson crisp curious dapper dawn eager "
    "early fancy fierce flying frosty gentle glad golden grand green happy hidden holy humble "
    "icy jolly keen kind lively lucky lunar mellow merry misty modest noble odd olive plain "
    "polished proud purple quiet rapid red rising royal rustic shy silent silver sleek snowy "
    "solar spare steady still stormy sunny swift tidy tiny twilight velvet vivid wandering "
    "warm wild windy wise young "
).split()
NOUNS = (
    "anchor arrow aurora badger bay beacon bird bloom breeze brook canyon cedar cloud comet "
    "coral creek crystal dawn delta dune eagle ember falcon fern field firefly forest fox "
    "frost glade grove harbor hawk heron hill island lake leaf lion lotus maple meadow mesa "
    "moon moss night oak ocean orchid otter owl paper pebble pine planet pond rain raven reef "
    "river rose sea shadow shore sky smoke snow sound spark star stone storm sun sunset "
    "thunder tree valley wave "
).split()


def board_name(seed: str, taken: Container[str] = ()) -> str:
    """Return a stable adjective-noun name for ``seed`` that is not in ``taken``.

    The first candidate depends only on the seed (a board's ResinUUID), later ones step through
    the list, so names are stable and never repeat on one gateway.
    """
    digest = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big")
    total = len(ADJECTIVES) * len(NOUNS)
    for step in range(total):
        index = (digest + step * 7919) % total
        name = f"{ADJECTIVES[index // len(NOUNS)]}-{NOUNS[index % len(NOUNS)]}"
        if name not in taken:
            return name
    return f"board-{seed[:8]}"
