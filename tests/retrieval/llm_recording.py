"""Whether this test run re-records LLM cassettes (``TRIAGE_RECORD_LLM=1``; see
docs/retrieval.md). Off by default: cassettes replay and the network stays blocked."""

from __future__ import annotations

import os

RECORDING = os.environ.get("TRIAGE_RECORD_LLM") == "1"
