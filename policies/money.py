"""What Cedar cannot compute: FX conversion, cumulative exposure, durations and money display.

Contract:
- ``to_base`` converts with the latest rate on or before the as-of date and refuses a rate older
  than ``max_age_days``; the result is rounded *up* to 4 decimal places (Cedar's ``decimal``
  precision) so that rounding can never carry an amount below a threshold.
- ``compute_exposure`` sums, in the base currency, the action itself plus the counted ledger
  rows (status pending, approved or executed) of material action types: same type on the same
  case, all types on the same case, and the same customer on the as-of calendar day in the
  policy's time zone. A ledger row whose type the catalogue does not know is counted as material
  (the safe side) in the case and customer totals.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from policies.errors import FxRateUnavailable, PolicyInputError
from policies.model import COUNTED_STATUSES, DecisionContext, FxTable

CEDAR_DECIMAL_MAX = Decimal("922337203685477.5807")
"""Largest value of Cedar's ``decimal`` extension type (a 64-bit integer with 4 decimals)."""

_FOUR_PLACES = Decimal("0.0001")
_TWO_PLACES = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class ExposureFigures:
    """Cumulative exposure in the base currency, each including the action being decided."""

    amount_base: Decimal
    case_action: Decimal
    case_all: Decimal
    customer_day: Decimal


def to_base(
    amount: Decimal,
    currency: str,
    *,
    base_currency: str,
    fx: FxTable | None,
    as_of: date,
    max_age_days: int,
) -> Decimal:
    """Convert ``amount`` in ``currency`` into ``base_currency`` as of the given date, rounded
    up to 4 places. Raises ``FxRateUnavailable`` as ``fx_rate`` does."""
    rate = fx_rate(
        currency, base_currency=base_currency, fx=fx, as_of=as_of, max_age_days=max_age_days
    )
    return ceil4(amount * rate)


def fx_rate(
    currency: str,
    *,
    base_currency: str,
    fx: FxTable | None,
    as_of: date,
    max_age_days: int,
) -> Decimal:
    """Units of ``base_currency`` per unit of ``currency`` on ``as_of`` (1 for the base itself).

    Raises ``FxRateUnavailable`` when the table is missing, has another base currency, has no
    rate for the currency on or before ``as_of``, or only a rate older than ``max_age_days``.
    """
    if currency == base_currency:
        return Decimal(1)
    if fx is None:
        raise FxRateUnavailable(
            f"amount in {currency} needs an FX table into {base_currency}, but none was given"
        )
    if fx.base_currency != base_currency:
        raise FxRateUnavailable(
            f"the FX table converts into {fx.base_currency}, but the policy's base currency "
            f"is {base_currency}"
        )
    best = None
    for rate in fx.rates:
        usable = rate.currency == currency and rate.valid_from <= as_of
        if usable and (best is None or rate.valid_from > best.valid_from):
            best = rate
    if best is None:
        raise FxRateUnavailable(
            f"no {currency}->{base_currency} rate on or before {as_of.isoformat()}"
        )
    age = (as_of - best.valid_from).days
    if age > max_age_days:
        raise FxRateUnavailable(
            f"the latest {currency}->{base_currency} rate is from {best.valid_from.isoformat()}, "
            f"{age} days before {as_of.isoformat()} (maximum age {max_age_days} days)"
        )
    return best.rate


def ceil4(value: Decimal) -> Decimal:
    """Round up to 4 decimal places (towards +infinity), the precision of Cedar's decimal."""
    return value.quantize(_FOUR_PLACES, rounding=ROUND_CEILING)


def cedar_decimal(value: Decimal, what: str) -> dict[str, dict[str, str]]:
    """The Cedar JSON form of a ``decimal(...)`` value; refuses values out of Cedar's range."""
    q = ceil4(value)
    if abs(q) > CEDAR_DECIMAL_MAX:
        raise PolicyInputError(f"{what} {value} is outside the range of Cedar's decimal type")
    return {"__extn": {"fn": "decimal", "arg": f"{q:.4f}"}}


def cedar_long(value: Decimal, what: str) -> int:
    """The same value as ``cedar_decimal``, as the integer count of ten-thousandths that a
    Cedar ``decimal`` holds (see policies/integer_money.py); same range check."""
    q = ceil4(value)
    if abs(q) > CEDAR_DECIMAL_MAX:
        raise PolicyInputError(f"{what} {value} is outside the range of Cedar's decimal type")
    return int(q.scaleb(4))


def compute_exposure(
    *,
    action_type: str,
    action_id: str | None,
    case_id: str,
    customer_id: str,
    amount_base: Decimal,
    material: bool,
    context: DecisionContext,
    convert: Callable[[Decimal, str], Decimal],
    is_material: Callable[[str], bool],
    tz: ZoneInfo,
) -> ExposureFigures:
    """Sum the exposure ledger; see the module docstring for what counts.

    ``convert(amount, currency)`` converts into the base currency; ``is_material(type)`` says
    whether a ledger row's action type counts (unknown types count).
    """
    own = amount_base if material else Decimal(0)
    case_action = own
    case_all = own
    customer_day = own
    day = context.as_of.astimezone(tz).date()
    for item in context.prior_actions:
        if item.status not in COUNTED_STATUSES:
            continue
        if action_id is not None and item.action_id == action_id:
            continue  # the action being decided: already counted as `own`
        if not is_material(item.action_type):
            continue
        same_case = item.case_id == case_id
        same_day = item.customer_id == customer_id and item.at.astimezone(tz).date() == day
        if not (same_case or same_day):
            continue
        value = convert(item.amount, item.currency)
        if same_case:
            case_all += value
            if item.action_type == action_type:
                case_action += value
        if same_day:
            customer_day += value
    return ExposureFigures(amount_base, case_action, case_all, customer_day)


def format_amount(value: Decimal, currency: str = "") -> str:
    """``12400`` -> ``"12,400 EUR"``, ``1234.5`` -> ``"1,234.50 EUR"`` (no float on the way)."""
    text = f"{value.quantize(_TWO_PLACES):,.2f}"
    if text.endswith(".00"):  # a whole amount: no decimals
        text = text[:-3]
    return f"{text} {currency}" if currency else text


def format_quantity(value: Decimal) -> str:
    """A quantity without trailing zeros: ``Decimal("600.000")`` -> ``"600"``."""
    if value == value.to_integral_value():
        return f"{value:,.0f}"
    return f"{value.normalize():,f}"


_DURATION = re.compile(r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?)?$")


def parse_duration(text: str) -> timedelta:
    """Parse the ISO 8601 durations used for SLAs: ``P2D``, ``PT24H``, ``P1DT4H30M``.

    Raises ``ValueError`` for anything else (weeks, months, years and seconds are refused:
    a month is not a fixed duration, and SLAs finer than minutes are not meaningful).
    """
    m = _DURATION.match(text)
    if not m or text in {"P", "PT"} or text.endswith("T"):
        raise ValueError(f"'{text}' is not an ISO 8601 duration of the form P#DT#H#M")
    days, hours, minutes = (int(m.group(g) or 0) for g in ("d", "h", "m"))
    result = timedelta(days=days, hours=hours, minutes=minutes)
    if result <= timedelta(0):
        raise ValueError(f"duration '{text}' must be positive")
    return result


def parse_decimal(value: object, what: str) -> Decimal:
    """Convert an int, Decimal or numeric string to Decimal; floats are refused (money)."""
    if isinstance(value, bool | float):
        raise PolicyInputError(f"{what} must be a decimal number or numeric string, not {value!r}")
    if isinstance(value, Decimal | int):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise PolicyInputError(f"{what} must be a number, got {value!r}") from None
    else:
        raise PolicyInputError(f"{what} must be a number, got {value!r}")
    if not result.is_finite():
        raise PolicyInputError(f"{what} must be a finite number, got {value!r}")
    return result


def days_between(earlier: datetime, later: datetime) -> int:
    """Whole days from ``earlier`` to ``later`` (0 if ``earlier`` is in the future)."""
    return max(0, (later - earlier).days)
