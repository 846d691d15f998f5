"""Near-duplicate groups for honest validation on templated text.

Support data is often generated from templates ("cancel order 123" / "cancel order 456"): a
random split puts near-copies on both sides and scores near 100%. :func:`near_duplicate_groups`
gives every text a group id such that texts with the same multiset of tokens, after masking
numbers, ids, amounts and capitalised names, share a group; folds split by group keep each
family of copies on one side.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_PLACEHOLDER = re.compile(r"\{\{[^}]*\}\}")
_TITLED_NAME = re.compile(r"\b(?:mr|mrs|ms|miss|dr)\.?\s+[A-Z][\w'-]*", re.IGNORECASE)
_NUMBERISH = re.compile(r"[$€£]?\d[\w.,/-]*")
_TOKEN = re.compile(r"[a-z]+")


def group_key(text: str) -> str:
    """The masked, order-free token multiset of ``text`` as a string."""
    text = _PLACEHOLDER.sub(" ", text)
    text = _TITLED_NAME.sub(" ", text)
    text = _NUMBERISH.sub(" ", text)
    words = text.split()
    # capitalised words after the first are mostly names and places ("in Toronto")
    kept = [w for i, w in enumerate(words) if i == 0 or not w[:1].isupper() or w == "I"]
    return " ".join(sorted(_TOKEN.findall(" ".join(kept).lower())))


def near_duplicate_groups(texts: Sequence[str]) -> list[int]:
    """One group id per text (ids are dense, in order of first appearance)."""
    ids: dict[str, int] = {}
    return [ids.setdefault(group_key(t), len(ids)) for t in texts]
