"""Policy layer: governed actions decided by Cedar policies that live as files in the repo.

Pure: no database, no HTTP, no LLM, and no import of any other package of ours. The caller
(triage/) maps its rows onto these types, calls the functions below, and stores the results.

    policy = load_default_policy()                       # or load_policy_set(path)
    decision = evaluate(action, context, policy)         # auto_execute | needs_approval | forbidden
    check = can_approve(approver, action, context, existing_approvals, policy)
    status = quorum_status(action, context, approvals, policy)
    decisions = evaluate_many([(action, context), ...], policy)
    h = action_hash(action, policy.version)              # bind approvals to this exact action

See docs/policies.md for the default policy, the explanation placeholders and the test format.
"""

from policies.errors import (
    FxRateUnavailable,
    PolicyError,
    PolicyEvaluationError,
    PolicyInputError,
    PolicyLoadError,
)
from policies.evaluator import can_approve, evaluate, evaluate_many, quorum_status
from policies.hashing import action_hash
from policies.loader import (
    DEFAULT_POLICY_DIR,
    ENGINE_REASONS,
    ActionSpec,
    PolicySet,
    Rule,
    load_default_policy,
    load_policy_set,
)
from policies.model import (
    ActionRequest,
    Approval,
    ApprovalCheck,
    ApprovalRequirement,
    CustomerFlags,
    Decision,
    DecisionContext,
    DiscountedApproval,
    Exposure,
    ExposureItem,
    FxRate,
    FxTable,
    Outcome,
    Principal,
    QuorumStatus,
    Reason,
    RoleMix,
)

__all__ = [
    "DEFAULT_POLICY_DIR",
    "ENGINE_REASONS",
    "ActionRequest",
    "ActionSpec",
    "Approval",
    "ApprovalCheck",
    "ApprovalRequirement",
    "CustomerFlags",
    "Decision",
    "DecisionContext",
    "DiscountedApproval",
    "Exposure",
    "ExposureItem",
    "FxRate",
    "FxRateUnavailable",
    "FxTable",
    "Outcome",
    "PolicyError",
    "PolicyEvaluationError",
    "PolicyInputError",
    "PolicyLoadError",
    "PolicySet",
    "Principal",
    "QuorumStatus",
    "Reason",
    "RoleMix",
    "Rule",
    "action_hash",
    "can_approve",
    "evaluate",
    "evaluate_many",
    "load_default_policy",
    "load_policy_set",
    "quorum_status",
]
