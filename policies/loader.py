"""Load and validate a policy bundle: manifest, Cedar policy, Cedar schema, action catalogue.

A bundle is a directory (``policies/default/`` ships with the product) holding:

- ``manifest.toml``: policy set id, version, base currency, day time zone, FX max age, default
  SLA, the roles known to the policy, and the names of the other files;
- ``policy.cedar``: the rules, each annotated with ``@id`` and ``@explain``;
- ``schema.cedarschema``: the Cedar schema every rule is validated against;
- ``actions.toml``: the action types and their arguments;
- optionally ``tests.yaml`` (or ``.json``/``.toml``): table-driven cases for ``policy test``.

``load_policy_set`` checks everything it can and raises one ``PolicyLoadError`` listing every
problem found (file, rule id, message), so a reviewer fixes a broken file in one pass. It then
evaluates a sample action of every type against every Cedar action, so that a schema that no
longer matches the entities the evaluator builds is a load error, not a runtime surprise.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import string
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import cedarpy

from policies import combined
from policies import entities as ent
from policies.errors import PolicyLoadError
from policies.integer_money import money_as_long
from policies.model import Reason
from policies.money import ExposureFigures, format_amount, parse_duration

DEFAULT_POLICY_DIR = Path(__file__).resolve().parent / "default"

POLICY_ID_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
KNOWN_ANNOTATIONS = frozenset({"id", "explain", "sla", "min_approvals", "one_of_roles"})
PLACEHOLDERS = frozenset(
    {
        "action",
        "action_type",
        "amount",
        "amount_base",
        "amount_and_base",
        "currency",
        "base_currency",
        "threshold",
        "tier",
        "customer",
        "case",
        "case_action_exposure",
        "case_all_exposure",
        "customer_day_exposure",
        "quantity",
        "approver",
        "approver_roles",
        "approvals",
        "min_approvals",
        "one_of_roles",
    }
)
"""Placeholders an ``@explain`` template may use (see docs/policies.md)."""
STATIC_PLACEHOLDERS = frozenset({"threshold", "base_currency", "min_approvals", "one_of_roles"})
"""Placeholders that depend on the rule and the policy only, never on the action."""

ENGINE_REASONS: Mapping[str, str] = MappingProxyType(
    {
        "request.no_permit": "no rule permits requesting {action}",
        "auto_execute.no_permit": "no rule permits running {action} automatically",
        "authority.no_eligible_approver": (
            "no role or named approver in the authority matrix may approve {action} "
            "{amount_base} (case exposure {case_action_exposure})"
        ),
        "authority.insufficient": (
            "{approver} (roles: {approver_roles}) has no authority to approve {action} with a "
            "case exposure of {case_action_exposure}; eligible: {eligible}"
        ),
        "approval.duplicate": "{approver} has already approved this action",
        "approval.stale": (
            "the approval by {approver} was given for a different version of this action or "
            "policy (hash mismatch) and no longer counts"
        ),
        "approval.action_forbidden": "{action} is forbidden by the policy and cannot be approved",
        "sod.engine_guard": (
            "{approver} requested, proposed, edited or accepted this action; segregation of "
            "duties is enforced by the engine even where a policy omits it"
        ),
        "quorum.no_approval": "no valid approval has been recorded yet",
    }
)
"""Reasons produced by the evaluator itself; policy files may not reuse these ids."""

ArgType = Literal["string", "decimal", "integer", "boolean"]
AmountMode = Literal["required", "optional", "none"]


@dataclass(frozen=True, slots=True)
class ArgumentSpec:
    name: str
    type: ArgType
    required: bool
    choices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """One action type of the catalogue (``actions.toml``)."""

    name: str
    label: str
    material: bool
    amount: AmountMode
    arguments: Mapping[str, ArgumentSpec]
    quantity_argument: str | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """One Cedar policy with what the evaluator needs from its annotations and scope."""

    policy_id: str
    order: int
    """Position in the policy file; reasons are reported in this order."""
    effect: Literal["permit", "forbid"]
    stage: str
    """The Cedar action the rule is scoped to: request, auto_execute, approve or release."""
    explain: str
    sla: timedelta | None = None
    threshold: Decimal | None = None
    min_approvals: int | None = None
    one_of_roles: tuple[str, ...] = ()
    role: str | None = None
    """``principal in Role::"x"`` scope of an authority rule."""
    named_principal: str | None = None
    """``principal == User::"x"`` scope of an authority rule (a named approver)."""
    static_reason: Reason | None = None
    """The rendered reason, when ``explain`` uses only placeholders that do not depend on the
    action (threshold, base currency, quorum annotations): rendered once at load."""


@dataclass(frozen=True, slots=True)
class Manifest:
    id: str
    version: str
    description: str
    base_currency: str
    day_timezone: str
    fx_max_age_days: int
    default_sla: timedelta
    roles: tuple[str, ...]
    policy_file: str
    schema_file: str
    actions_file: str
    tests_file: str | None


@dataclass(frozen=True, eq=False)
class PolicySet:
    """A loaded, validated policy bundle, ready for ``evaluate``. Immutable and thread-safe
    (cedarpy handles are immutable); load once and share."""

    source: str
    manifest: Manifest
    rules: Mapping[str, Rule]
    actions: Mapping[str, ActionSpec]
    digest: str
    """sha256 over the manifest, policy, schema and action catalogue files."""
    policy_text: str
    schema_text: str
    tz: ZoneInfo
    named_approvers: tuple[str, ...]
    named_approvers_by_type: Mapping[str, tuple[str, ...]]
    """Per action type, the named approvers whose authority rules can apply to it (only these
    are probed when deciding who may approve)."""
    tests_path: Path | None
    cedar_policies: cedarpy.PolicySet = field(repr=False)
    """The whole policy set (validation, tooling)."""
    stage_policies: Mapping[str, cedarpy.PolicySet] = field(repr=False)
    """The same rules split by Cedar action. Every rule is scoped to exactly one action, so
    evaluating a request against its stage's subset gives the same answer as against the whole
    set, while Cedar evaluates a quarter of the rules."""
    sliced_policies: Mapping[tuple[str, str, str], cedarpy.PolicySet] = field(repr=False)
    """Each stage further split by action type and customer tier (see ``_slice_by_type``);
    used when present."""
    money_as_long: bool = field(repr=False)
    """True when ``stage_policies`` and ``sliced_policies`` compare money as integer
    ten-thousandths instead of ``decimal`` (policies/integer_money.py: same answers, cheaper
    for Cedar); the evaluator then sends amounts in that form. ``cedar_policies`` is always
    the policy file as written."""
    combined_policies: Mapping[tuple[str, str], cedarpy.PolicySet] = field(repr=False)
    """Per (action type, tier), every stage's rules as one set, so that ``evaluate_many`` asks
    Cedar one question per action (policies/combined.py); empty if the policy does not allow
    it. Used only while ``sliced_policies`` is the mapping they were built from
    (``combined_slices_of``): a copy of the set with other stage rules falls back to asking
    stage by stage."""
    combined_slices_of: Mapping[tuple[str, str, str], cedarpy.PolicySet] = field(repr=False)
    combined_base_handle: cedarpy.Entities = field(repr=False)
    """``base_entities`` with the probe principal of the combined request (no schema: the
    probe carries the approval set's attributes too)."""
    cedar_schema: cedarpy.Schema = field(repr=False)
    base_entities: list[dict[str, Any]] = field(repr=False)
    """Roles, service, probes and named approvers (for decisions)."""
    approver_base_entities: list[dict[str, Any]] = field(repr=False)
    """The same without named approvers (for approval checks, where the approver is added)."""
    base_handle: cedarpy.Entities = field(repr=False)
    approver_base_handle: cedarpy.Entities = field(repr=False)
    """The two entity lists above, parsed once; each decision only parses its own entities."""

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def base_currency(self) -> str:
        return self.manifest.base_currency


def load_default_policy() -> PolicySet:
    """The policy bundle shipped in ``policies/default/``."""
    return load_policy_set(DEFAULT_POLICY_DIR)


def load_policy_set(path: str | Path, *, policy_file: str | Path | None = None) -> PolicySet:
    """Load and validate the bundle in directory ``path`` (or the bundle of its manifest file).

    ``policy_file`` replaces the manifest's policy file (used by ``policy validate FILE.cedar``
    to check a draft against the bundle's schema). Raises ``PolicyLoadError`` with every
    problem found.
    """
    root = Path(path)
    if root.is_file() and root.name.endswith(".toml"):
        root = root.parent
    source = str(root)
    if not root.is_dir():
        raise PolicyLoadError(source, [f"{root}: not a directory"])
    problems: list[str] = []
    manifest_path = root / "manifest.toml"
    try:
        # read once: the digest is over the bytes the manifest was parsed from
        manifest_bytes = manifest_path.read_bytes()
    except OSError as exc:
        raise PolicyLoadError(
            source, [f"{manifest_path.name}: cannot read ({exc.strerror or exc})"]
        ) from None
    manifest = _load_manifest(manifest_path.name, manifest_bytes, problems)
    if manifest is None:
        raise PolicyLoadError(source, problems)

    policy_path = Path(policy_file) if policy_file is not None else root / manifest.policy_file
    texts: dict[str, bytes] = {"manifest": manifest_bytes}
    for label, p in (
        ("policy", policy_path),
        ("schema", root / manifest.schema_file),
        ("actions", root / manifest.actions_file),
    ):
        try:
            texts[label] = p.read_bytes()
        except OSError as exc:
            problems.append(f"{p.name}: cannot read ({exc.strerror or exc})")
    if problems:
        raise PolicyLoadError(source, problems)
    digest = hashlib.sha256()
    for label in ("manifest", "policy", "schema", "actions"):
        digest.update(label.encode() + b"\0" + texts[label] + b"\0")

    pname, sname = policy_path.name, manifest.schema_file
    policy_text = _decode(texts["policy"], pname, problems)
    schema_text = _decode(texts["schema"], sname, problems)
    actions = _load_actions(texts["actions"], manifest.actions_file, problems)

    schema: cedarpy.Schema | None = None
    try:
        schema = cedarpy.Schema.from_str(schema_text)
    except ValueError as exc:
        problems.append(f"{sname}: invalid Cedar schema: {exc}")
    cedar_policies: cedarpy.PolicySet | None = None
    try:
        cedar_policies = cedarpy.PolicySet.from_str(policy_text)
    except ValueError as exc:
        problems.append(f"{pname}: invalid Cedar policy syntax: {exc}")

    rules: dict[str, Rule] = {}
    est: dict[str, Any] = {}
    if cedar_policies is not None:
        est = json.loads(cedarpy.policies_to_json_str(policy_text))
        rules = _extract_rules(est, manifest, pname, problems)
        if schema is not None:
            result = cedarpy.validate_policies(policy_text, schema)
            names = result.id_annotations_by_policy_id
            for err in result.errors:
                where = names.get(err.policy_id) or err.policy_id
                problems.append(f"{pname} [{where}]: {err.error}")
    if problems or schema is None or cedar_policies is None:
        raise PolicyLoadError(source, problems)

    named = tuple(sorted({r.named_principal for r in rules.values() if r.named_principal}))
    # What Cedar evaluates at run time: the validated policies, with money comparisons on
    # integers when every money comparison has the plain form (see integer_money.py).
    long_est = money_as_long(est, ent.MONEY_PATHS)
    run_est = est if long_est is None else long_est
    stage_policies = _split_by_stage(run_est)
    sliced_policies = MappingProxyType(_slice_by_type(run_est, actions))
    combined_policies = _combined_slices(run_est, actions)
    named_by_type = _named_by_type(est, actions)
    base_list = ent.base_entities(manifest.roles, named)
    approver_base_list = ent.base_entities(manifest.roles, ())
    try:
        base_handle = cedarpy.Entities.from_json_str(json.dumps(base_list), schema)
        approver_handle = cedarpy.Entities.from_json_str(json.dumps(approver_base_list), schema)
    except ValueError as exc:
        raise PolicyLoadError(
            source, [f"{sname}: does not accept the role, user and approval-set entities: {exc}"]
        ) from exc
    tests_path = root / manifest.tests_file if manifest.tests_file else None
    policy = PolicySet(
        source=source,
        manifest=manifest,
        rules=MappingProxyType(rules),
        actions=MappingProxyType(actions),
        digest=digest.hexdigest(),
        policy_text=policy_text,
        schema_text=schema_text,
        tz=ZoneInfo(manifest.day_timezone),
        named_approvers=named,
        named_approvers_by_type=MappingProxyType(named_by_type),
        tests_path=tests_path if tests_path and tests_path.is_file() else None,
        cedar_policies=cedar_policies,
        stage_policies=MappingProxyType(stage_policies),
        sliced_policies=sliced_policies,
        money_as_long=long_est is not None,
        combined_policies=MappingProxyType(combined_policies),
        combined_slices_of=sliced_policies,
        combined_base_handle=cedarpy.Entities.from_json_str(
            json.dumps(combined.probe_entities(base_list))
        ),
        cedar_schema=schema,
        base_entities=base_list,
        approver_base_entities=approver_base_list,
        base_handle=base_handle,
        approver_base_handle=approver_handle,
    )
    _smoke_test(policy, pname, sname, problems)
    if problems:
        raise PolicyLoadError(source, problems)
    return policy


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


def _load_manifest(n: str, raw: bytes, problems: list[str]) -> Manifest | None:
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{n}: invalid TOML: {exc}")
        return None
    known = {
        "id", "version", "description", "base_currency", "day_timezone", "fx_max_age_days",
        "default_sla", "roles", "policy_file", "schema_file", "actions_file", "tests_file",
    }  # fmt: skip
    for key in sorted(set(data) - known):
        problems.append(f"{n}: unknown key '{key}'")

    def text(key: str, default: str | None = None) -> str:
        value = data.get(key, default)
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{n}: '{key}' must be a non-empty string")
            return ""
        return value

    set_id, version = text("id"), text("version")
    base = text("base_currency")
    if base and not re.fullmatch(r"[A-Z]{3}", base):
        problems.append(f"{n}: base_currency '{base}' is not an ISO 4217 code")
    tz = text("day_timezone", "UTC")
    if tz:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"{n}: day_timezone '{tz}' is not a known IANA time zone")
    max_age = data.get("fx_max_age_days", 7)
    if not isinstance(max_age, int) or isinstance(max_age, bool) or max_age < 0:
        problems.append(f"{n}: fx_max_age_days must be a non-negative integer")
        max_age = 0
    sla = timedelta(hours=24)
    try:
        sla = parse_duration(text("default_sla", "PT24H"))
    except ValueError as exc:
        problems.append(f"{n}: default_sla: {exc}")
    roles = data.get("roles")
    if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
        problems.append(f"{n}: 'roles' must be a non-empty list of role names")
        roles = []
    tests_file = data.get("tests_file")
    if tests_file is not None and not isinstance(tests_file, str):
        problems.append(f"{n}: 'tests_file' must be a string")
        tests_file = None
    description = data.get("description", "")
    manifest = Manifest(
        id=set_id,
        version=version,
        description=description if isinstance(description, str) else "",
        base_currency=base,
        day_timezone=tz or "UTC",
        fx_max_age_days=max_age,
        default_sla=sla,
        roles=tuple(roles),
        policy_file=text("policy_file", "policy.cedar"),
        schema_file=text("schema_file", "schema.cedarschema"),
        actions_file=text("actions_file", "actions.toml"),
        tests_file=tests_file,
    )
    return None if problems else manifest


def _decode(raw: bytes, name: str, problems: list[str]) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(f"{name}: not UTF-8 text ({exc})")
        return ""


# --------------------------------------------------------------------------------------------
# Action catalogue
# --------------------------------------------------------------------------------------------


def _load_actions(raw: bytes, name: str, problems: list[str]) -> dict[str, ActionSpec]:
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{name}: invalid TOML: {exc}")
        return {}
    table = data.get("actions")
    if not isinstance(table, dict) or not table:
        problems.append(f"{name}: expected a non-empty [actions.<type>] table")
        return {}
    out: dict[str, ActionSpec] = {}
    for action_type, spec in table.items():
        where = f"{name} [actions.{action_type}]"
        if not isinstance(spec, dict):
            problems.append(f"{where}: must be a table")
            continue
        for key in sorted(
            set(spec) - {"label", "material", "amount", "arguments", "quantity_argument"}
        ):
            problems.append(f"{where}: unknown key '{key}'")
        label = spec.get("label", action_type.replace("_", " "))
        material = spec.get("material")
        amount = spec.get("amount", "none")
        if not isinstance(material, bool):
            problems.append(f"{where}: 'material' must be true or false")
            material = True
        if amount not in ("required", "optional", "none"):
            problems.append(f"{where}: 'amount' must be required, optional or none")
            amount = "required"
        args: dict[str, ArgumentSpec] = {}
        for arg_name, arg in (spec.get("arguments") or {}).items():
            awhere = f"{where} argument '{arg_name}'"
            if not isinstance(arg, dict):
                problems.append(f"{awhere}: must be a table {{ type = ..., required = ... }}")
                continue
            for key in sorted(set(arg) - {"type", "required", "choices"}):
                problems.append(f"{awhere}: unknown key '{key}'")
            arg_type = arg.get("type")
            if arg_type not in ("string", "decimal", "integer", "boolean"):
                problems.append(f"{awhere}: type must be string, decimal, integer or boolean")
                continue
            required = arg.get("required", False)
            choices = arg.get("choices", [])
            if not isinstance(required, bool) or not isinstance(choices, list):
                problems.append(f"{awhere}: 'required' must be a boolean, 'choices' a list")
                continue
            args[arg_name] = ArgumentSpec(arg_name, arg_type, required, tuple(map(str, choices)))
        qarg = spec.get("quantity_argument")
        if qarg is not None and (qarg not in args or args[qarg].type not in ("decimal", "integer")):
            problems.append(f"{where}: quantity_argument '{qarg}' must name a numeric argument")
            qarg = None
        out[action_type] = ActionSpec(
            action_type, str(label), material, amount, MappingProxyType(args), qarg
        )
    return out


# --------------------------------------------------------------------------------------------
# Rules (annotations and scopes of the Cedar policies)
# --------------------------------------------------------------------------------------------


def _decimal_literals(node: Any) -> Iterator[str]:
    """Every ``decimal("...")`` literal in a policy's JSON form (EST)."""
    if isinstance(node, dict):
        call = node.get("decimal")
        if isinstance(call, list) and len(call) == 1 and isinstance(call[0], dict):
            value = call[0].get("Value")
            if isinstance(value, str):
                yield value
        for v in node.values():
            yield from _decimal_literals(v)
    elif isinstance(node, list):
        for v in node:
            yield from _decimal_literals(v)


def _extract_rules(
    est: dict[str, Any], manifest: Manifest, pname: str, problems: list[str]
) -> dict[str, Rule]:
    if est.get("templates"):
        problems.append(f"{pname}: policy templates (?principal/?resource) are not supported")
    rules: dict[str, Rule] = {}
    roles = set(manifest.roles)
    for cedar_id, pol in est.get("staticPolicies", {}).items():
        ann: dict[str, str] = pol.get("annotations") or {}
        pid = ann.get("id")
        where = f"{pname} [{pid or cedar_id}]"
        if not pid:
            problems.append(f'{where}: missing @id("...") annotation')
            continue
        if not POLICY_ID_PATTERN.match(pid):
            problems.append(
                f"{where}: @id must be dotted lower-case words such as 'billing.credit_note.tier_b'"
            )
        if pid in rules:
            problems.append(f"{where}: duplicate @id (ids must be unique and stable)")
        if pid in ENGINE_REASONS:
            problems.append(f"{where}: @id is reserved for an evaluator reason")
        for key in sorted(set(ann) - KNOWN_ANNOTATIONS):
            known = ", ".join(sorted(KNOWN_ANNOTATIONS))
            problems.append(f"{where}: unknown annotation @{key} (known: {known})")

        action = pol.get("action", {})
        entity = action.get("entity") or {}
        stage = entity.get("id", "")
        if action.get("op") != "==" or entity.get("type") != "Action":
            problems.append(f'{where}: scope must name exactly one action: action == Action::"..."')
        elif stage not in ent.CEDAR_ACTIONS:
            problems.append(f"{where}: unknown action '{stage}'")

        explain = ann.get("explain", "")
        if not explain:
            problems.append(f'{where}: missing @explain("...") annotation')
        fields = _template_fields(explain, where, problems)
        for f in sorted(fields - PLACEHOLDERS):
            problems.append(f"{where}: @explain uses unknown placeholder {{{f}}}")

        literals = list(_decimal_literals(pol.get("conditions", [])))
        threshold: Decimal | None = None
        if len(literals) == 1:
            try:
                threshold = Decimal(literals[0])
            except InvalidOperation:
                threshold = None
        if "threshold" in fields and threshold is None:
            problems.append(
                f"{where}: @explain uses {{threshold}} but the rule has {len(literals)} decimal "
                "literals (exactly one is needed)"
            )

        sla: timedelta | None = None
        if "sla" in ann:
            try:
                sla = parse_duration(ann["sla"])
            except ValueError as exc:
                problems.append(f"{where}: @sla: {exc}")

        min_approvals: int | None = None
        one_of: tuple[str, ...] = ()
        effect = pol.get("effect")
        if "min_approvals" in ann or "one_of_roles" in ann:
            if stage != "release" or effect != "forbid":
                problems.append(f"{where}: @min_approvals/@one_of_roles belong on release forbids")
            raw = ann.get("min_approvals", "1")
            if raw.isdigit() and int(raw) >= 1:
                min_approvals = int(raw)
            else:
                problems.append(f"{where}: @min_approvals must be a positive integer")
            one_of = tuple(r.strip() for r in ann.get("one_of_roles", "").split(",") if r.strip())
            for r in one_of:
                if r not in roles:
                    problems.append(f"{where}: @one_of_roles names unknown role '{r}'")

        principal = pol.get("principal", {})
        pent = principal.get("entity") or {}
        role = named = None
        if principal.get("op") == "in" and pent.get("type") == "Role":
            role = pent.get("id")
            if role not in roles:
                problems.append(f'{where}: Role::"{role}" is not listed in manifest roles')
        elif principal.get("op") == "==" and pent.get("type") == "User":
            named = pent.get("id")
            if stage == "approve" and str(named).startswith("__"):
                problems.append(f"{where}: user ids starting with '__' are reserved")

        static_reason = None
        if (
            explain
            and fields <= STATIC_PLACEHOLDERS
            and not (threshold is None and "threshold" in fields)
        ):
            text = explain.format(
                threshold=format_amount(threshold) if threshold is not None else "",
                base_currency=manifest.base_currency,
                min_approvals=str(min_approvals or 1),
                one_of_roles=" or ".join(one_of) or "any role",
            )
            static_reason = Reason(
                policy_id=pid, explanation=text, effect="forbid" if effect == "forbid" else "permit"
            )
        rules[pid] = Rule(
            policy_id=pid,
            static_reason=static_reason,
            order=len(rules),
            effect="forbid" if effect == "forbid" else "permit",
            stage=stage,
            explain=explain,
            sla=sla,
            threshold=threshold,
            min_approvals=min_approvals,
            one_of_roles=one_of,
            role=role if stage == "approve" and effect == "permit" else None,
            named_principal=named if stage == "approve" and effect == "permit" else None,
        )
    if not rules and not problems:
        problems.append(f"{pname}: contains no policies")
    return rules


def _split_by_stage(est: dict[str, Any]) -> dict[str, cedarpy.PolicySet]:
    by_stage: dict[str, dict[str, Any]] = {stage: {} for stage in ent.CEDAR_ACTIONS}
    for cedar_id, pol in est.get("staticPolicies", {}).items():
        by_stage[pol["action"]["entity"]["id"]][cedar_id] = pol
    return {stage: _policy_set(subset) for stage, subset in by_stage.items()}


TIERS = ("A", "B", "C")
"""The customer tiers (``policies.model.Tier``)."""


def _slice_by_type(
    est: dict[str, Any], action_types: Iterable[str]
) -> dict[tuple[str, str, str], cedarpy.PolicySet]:
    """Per (Cedar action, action type, customer tier) subsets: a rule whose ``when`` clause
    requires ``resource.type == "x"`` (or ``[...].contains(resource.type)``), or likewise
    ``resource.customer.tier``, as a top-level conjunct can only match actions of those types
    and tiers, so leaving it out of other subsets changes no decision while sparing Cedar its
    evaluation. Rules without such a conjunct go everywhere."""
    return {key: _policy_set(subset) for key, subset in _slices(est, action_types).items()}


def _slices(
    est: dict[str, Any], action_types: Iterable[str]
) -> dict[tuple[str, str, str], dict[str, Any]]:
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    policies = est.get("staticPolicies", {})
    types = {cedar_id: _pinned_types(pol) for cedar_id, pol in policies.items()}
    tiers = {cedar_id: _pinned(pol, _RESOURCE_TIER) for cedar_id, pol in policies.items()}
    for stage, action_type, tier in itertools.product(ent.CEDAR_ACTIONS, action_types, TIERS):
        subset = {}
        for cedar_id, pol in policies.items():
            pinned_types, pinned_tiers = types[cedar_id], tiers[cedar_id]
            if (
                pol["action"]["entity"]["id"] == stage
                and (pinned_types is None or action_type in pinned_types)
                and (pinned_tiers is None or tier in pinned_tiers)
            ):
                subset[cedar_id] = pol
        out[(stage, action_type, tier)] = subset
    return out


def _combined_slices(
    est: dict[str, Any], action_types: Iterable[str]
) -> dict[tuple[str, str], cedarpy.PolicySet]:
    """Per (action type, tier), the four stages' slices as one set (see policies/combined.py);
    empty when the policy does not allow combining."""
    if not combined.combinable(est):
        return {}
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for (_stage, action_type, tier), subset in _slices(est, action_types).items():
        merged.setdefault((action_type, tier), {}).update(subset)
    return {key: _policy_set(combined.combine(subset)) for key, subset in merged.items()}


def _named_by_type(est: dict[str, Any], action_types: Iterable[str]) -> dict[str, tuple[str, ...]]:
    named: list[tuple[str, frozenset[str] | None]] = []
    for pol in est.get("staticPolicies", {}).values():
        principal = pol.get("principal", {})
        entity = principal.get("entity") or {}
        is_approve = (pol.get("action", {}).get("entity") or {}).get("id") == "approve"
        if is_approve and principal.get("op") == "==" and entity.get("type") == "User":
            named.append((entity.get("id", ""), _pinned_types(pol)))
    return {
        t: tuple(sorted({n for n, types in named if types is None or t in types}))
        for t in action_types
    }


def _policy_set(static: dict[str, Any]) -> cedarpy.PolicySet:
    doc = {"staticPolicies": static, "templates": {}, "templateLinks": []}
    return cedarpy.PolicySet.from_json_str(json.dumps(doc))


_RESOURCE_TYPE = {".": {"left": {"Var": "resource"}, "attr": "type"}}
_RESOURCE_TIER = {
    ".": {"left": {".": {"left": {"Var": "resource"}, "attr": "customer"}}, "attr": "tier"}
}


def _conjuncts(node: Any) -> Iterator[Any]:
    if isinstance(node, dict) and set(node) == {"&&"}:
        yield from _conjuncts(node["&&"]["left"])
        yield from _conjuncts(node["&&"]["right"])
    else:
        yield node


def _pinned_types(pol: dict[str, Any]) -> frozenset[str] | None:
    """The action types a rule can match, or None if the rule does not restrict the type."""
    return _pinned(pol, _RESOURCE_TYPE)


def _pinned(pol: dict[str, Any], attr: dict[str, Any]) -> frozenset[str] | None:
    """The values of the string attribute ``attr`` (an EST path such as ``resource.type``) a
    rule can match, or None if no top-level ``when`` conjunct restricts it to literals."""
    allowed: frozenset[str] | None = None
    for cond in pol.get("conditions", []):
        if cond.get("kind") != "when":
            continue
        for c in _conjuncts(cond.get("body")):
            types: frozenset[str] | None = None
            eq = c.get("==") if isinstance(c, dict) else None
            has = c.get("contains") if isinstance(c, dict) else None
            if isinstance(eq, dict):
                for a, b in ((eq.get("left"), eq.get("right")), (eq.get("right"), eq.get("left"))):
                    if a == attr and isinstance(b, dict) and isinstance(b.get("Value"), str):
                        types = frozenset({b["Value"]})
            elif isinstance(has, dict) and has.get("right") == attr:
                items = (has.get("left") or {}).get("Set")
                if isinstance(items, list) and all(
                    isinstance(i, dict) and isinstance(i.get("Value"), str) for i in items
                ):
                    types = frozenset(i["Value"] for i in items)
            if types is not None:
                allowed = types if allowed is None else allowed & types
    return allowed


def _template_fields(template: str, where: str, problems: list[str]) -> set[str]:
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        problems.append(f"{where}: @explain is not a valid template: {exc}")
        return set()


# --------------------------------------------------------------------------------------------
# Smoke test: the schema must accept what the evaluator builds, and no rule may error.
# --------------------------------------------------------------------------------------------


def _smoke_test(policy: PolicySet, pname: str, sname: str, problems: list[str]) -> None:
    figures = ExposureFigures(*(Decimal("1234.5"),) * 4)
    samples: list[tuple[str, dict[str, Any]]] = []
    requests = []
    # Each action type twice: with every optional attribute set, and with none of them.
    for (name, spec), full in itertools.product(sorted(policy.actions.items()), (True, False)):
        rid = f"sample-{name}-{'full' if full else 'minimal'}"
        samples.append(
            (
                rid,
                {
                    "action_type": name,
                    "material": spec.material,
                    "amount_base": figures.amount_base,
                    "currency": policy.base_currency,
                    "quantity": Decimal(3) if full else None,
                    "case_id": "CASE-SMOKE",
                    "origin": "suggestion" if full else "agent",
                    "customer_id": "CUST-SMOKE",
                    "tier": "B",
                    "blocked": False,
                    "bank_details_age_days": 90 if full else None,
                    "exposure": figures,
                    "requested_by": "u-smoke-requester",
                    "proposed_by": "u-smoke-proposer" if full else None,
                    "last_edited_by": "u-smoke-editor" if full else None,
                    "accepted_by": "u-smoke-accepter" if full else None,
                },
            )
        )
        service = ent.uid("Service", ent.SERVICE_ID)
        requests += [
            ent.cedar_request(service, "request", rid),
            ent.cedar_request(service, "auto_execute", rid),
            ent.cedar_request(ent.uid("User", ent.PROBE_USER_ID), "approve", rid),
            ent.cedar_request(ent.uid("ApprovalSet", ent.EMPTY_APPROVALS_ID), "release", rid),
        ]
    entities = list(policy.base_entities)
    entities += [ent.action_entity(rid, **kw) for rid, kw in samples]
    try:
        handle = cedarpy.Entities.from_json_str(json.dumps(entities), policy.cedar_schema)
        results = cedarpy.is_authorized_batch(
            requests, policy.cedar_policies, handle, schema=policy.cedar_schema
        )
    except ValueError as exc:
        problems.append(
            f"{sname}: does not accept the entities the evaluator builds "
            f"(see policies/entities.py): {exc}"
        )
        return
    for req, res in zip(requests, results, strict=True):
        for err in res.diagnostics.errors:
            problems.append(
                f"{pname}: evaluation error for the {req['action']['id']} request on "
                f"{req['resource']['id']}: {err}"
            )
    if not problems and policy.money_as_long:
        _check_integer_money(policy, pname, problems)


def _check_integer_money(policy: PolicySet, pname: str, problems: list[str]) -> None:
    """The run-time form (integer money, split by stage) must answer exactly like the policy
    file, in particular on both sides of every threshold of the file."""
    points = {Decimal(0)}
    for rule in policy.rules.values():
        if rule.threshold is not None:
            points |= {
                rule.threshold + d for d in (Decimal("-0.0001"), Decimal(0), Decimal("0.0001"))
            }
    samples: list[tuple[str, dict[str, Any]]] = []
    for name, spec in sorted(policy.actions.items()):
        for k, v in enumerate(sorted(p for p in points if p >= 0)):
            samples.append(
                (
                    f"money-{name}-{k}",
                    {
                        "action_type": name,
                        "material": spec.material,
                        "amount_base": v,
                        "currency": policy.base_currency,
                        "quantity": v,
                        "case_id": "CASE-SMOKE",
                        "origin": "agent",
                        "customer_id": "CUST-SMOKE",
                        "tier": "ABC"[k % 3],
                        "blocked": False,
                        "bank_details_age_days": None,
                        "exposure": ExposureFigures(v, v, v, v),
                        "requested_by": "u-smoke-requester",
                        "proposed_by": None,
                        "last_edited_by": None,
                        "accepted_by": None,
                    },
                )
            )
    probes = [
        ent.uid("Service", ent.SERVICE_ID),
        ent.uid("Service", ent.SERVICE_ID),
        ent.uid("User", ent.PROBE_USER_ID),
        ent.uid("ApprovalSet", ent.EMPTY_APPROVALS_ID),
    ]
    by_stage = {
        stage: [ent.cedar_request(p, stage, rid) for rid, _ in samples]
        for stage, p in zip(ent.CEDAR_ACTIONS, probes, strict=True)
    }
    as_written = cedarpy.Entities.from_json_str(
        json.dumps([*policy.base_entities, *(ent.action_entity(r, **kw) for r, kw in samples)])
    )
    as_run = cedarpy.Entities.from_json_str(
        json.dumps(
            [
                *policy.base_entities,
                *(ent.action_entity(r, **kw, money_as_long=True) for r, kw in samples),
            ]
        )
    )
    for stage, requests in by_stage.items():
        expected = cedarpy.is_authorized_batch(requests, policy.cedar_policies, as_written)
        got = cedarpy.is_authorized_batch(requests, policy.stage_policies[stage], as_run)
        for req, want, res in zip(requests, expected, got, strict=True):
            same = want.allowed == res.allowed and sorted(
                want.diagnostics.id_annotations_by_reason.values()
            ) == sorted(res.diagnostics.id_annotations_by_reason.values())
            if not same or res.diagnostics.errors != want.diagnostics.errors:
                problems.append(
                    f"{pname}: internal error: the integer money form of the policies "
                    f"disagrees with the file for the {stage} request on {req['resource']['id']}"
                )
                return
