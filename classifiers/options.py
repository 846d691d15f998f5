"""Training options that callers choose before any model code is needed.

Kept apart from :mod:`classifiers.case_model` (scikit-learn, scipy) so that command-line
option types and API schemas can name them without importing the estimators.
"""

from __future__ import annotations

from enum import StrEnum


class ClassWeight(StrEnum):
    """The label weighting a caller chooses (``triage train --class-weight``, the API's
    ``class_weight``): ``none`` trains unweighted, ``balanced`` weights each label inversely to
    its frequency. :attr:`estimator_value` is what :class:`CaseModel` takes."""

    none = "none"
    balanced = "balanced"

    @property
    def estimator_value(self) -> str | None:
        return None if self is ClassWeight.none else self.value


# What `triage train`, `POST /v1/models/train` and the console's training form use unless told
# otherwise. Measured (docs/classifier.md): +0.25 to +0.36 macro-F1 on the Bitext wording-shift
# proxies, neutral on BANKING77 (accuracy -0.03 to -0.04, balanced accuracy +0.05 points); an
# operator's labels are rarely balanced and the rare ones (fraud, write-offs) matter most.
# CaseModel itself keeps scikit-learn's unweighted default.
DEFAULT_CLASS_WEIGHT = ClassWeight.balanced
