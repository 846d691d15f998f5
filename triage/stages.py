"""Build the production pipeline from settings: the stage implementations the deployment has.

Kept apart from :mod:`triage.pipeline` so the flow itself never depends on how a stage is
configured (and tests can build pipelines from fakes).
"""

from __future__ import annotations

from triage.classification import ClassifierProvider
from triage.pipeline import Pipeline
from triage.settings import Settings


def default_pipeline(settings: Settings) -> Pipeline:
    """The active registry model (rules until one is trained); other stages as configured."""
    return Pipeline(classifier=ClassifierProvider(settings))
