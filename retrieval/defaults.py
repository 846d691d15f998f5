"""Defaults that option types and settings name before any encoder code is needed.

Kept apart from :mod:`retrieval.embeddings` (numpy, scipy) so that the command line can show
them in ``--help`` without importing the encoders.
"""

from __future__ import annotations

DEFAULT_ENCODER = "builtin:minilm-static-v2"
"""The encoder a deployment, ``triage train`` and the knowledge index use unless told otherwise."""
