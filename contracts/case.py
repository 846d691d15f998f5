"""Canonical exception case: the contract between the orchestration layer and every stage.

This module is the lingua franca of the product. It is pure pydantic (no database, no HTTP) so
that the intake service, the classifier feature builder, the advisor and the console can all
read the same shape without importing each other.

Contract:
- ``schema_version`` is ``"1.0"``; a breaking change bumps the major number and adds a new model.
- Money is ``Decimal`` with an ISO 4217 currency code; amounts are never floats.
- Quantities are non-negative decimals (fractional units such as kg are allowed).
- ``occurred_at`` must carry a timezone; naive datetimes are refused.
- Unknown top-level fields are refused (``extra="forbid"``) so typos surface as 422s; anything
  else the source system wants to carry goes into ``attributes``.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    StringConstraints,
    model_validator,
)

from contracts.currencies import ISO_4217_CODES

SCHEMA_VERSION = "1.0"


class ExceptionType(enum.StrEnum):
    """Kinds of exception the orchestration layer raises."""

    shortage = "shortage"
    partial_shipment = "partial_shipment"
    pricing_mismatch = "pricing_mismatch"
    damaged_goods = "damaged_goods"
    return_request = "return_request"
    duplicate_invoice = "duplicate_invoice"
    failed_integration = "failed_integration"
    carrier_delay = "carrier_delay"
    address_issue = "address_issue"
    other = "other"


class CustomerTier(enum.StrEnum):
    """Commercial tier of the customer; drives SLA and materiality thresholds."""

    A = "A"
    B = "B"
    C = "C"


class SourceSystem(enum.StrEnum):
    """Kind of system that raised the event."""

    erp = "erp"
    wms = "wms"
    tms = "tms"
    finance = "finance"
    crm = "crm"
    orchestrator = "orchestrator"
    other = "other"


def _currency(value: str) -> str:
    code = value.upper()
    if code not in ISO_4217_CODES:
        raise ValueError(f"'{value}' is not an ISO 4217 currency code")
    return code


CurrencyCode = Annotated[
    str, StringConstraints(min_length=3, max_length=3), AfterValidator(_currency)
]
Identifier = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=128, strip_whitespace=True, pattern=r"^[^\x00-\x1f\x7f]+$"
    ),
]
"""A business id: 1-128 characters, no control characters (they break logs, CSV and policies)."""
ShortText = Annotated[str, StringConstraints(max_length=256)]
LongText = Annotated[str, StringConstraints(max_length=20_000)]
NonNegativeQty = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=6)]
MoneyAmount = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=4)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Money(_Strict):
    """An amount in a currency. The amount is a non-negative Decimal."""

    amount: MoneyAmount
    currency: CurrencyCode


class SourceRef(_Strict):
    """Which system raised the case and under which id; (system, case_id) is unique."""

    system: Identifier = Field(description="Name of the source system, e.g. 'sap-erp-eu'.")
    kind: SourceSystem = SourceSystem.orchestrator
    case_id: Identifier = Field(description="The source system's own case or event id.")
    event_id: Identifier | None = None


class CustomerRef(_Strict):
    id: Identifier
    name: ShortText | None = None
    tier: CustomerTier = CustomerTier.C
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = None


class References(_Strict):
    """Business document references; every field optional, none invented."""

    customer: CustomerRef
    order_id: Identifier | None = None
    shipment_id: Identifier | None = None
    invoice_id: Identifier | None = None
    warehouse_id: Identifier | None = None
    carrier_id: Identifier | None = None
    tracking_number: Identifier | None = None
    purchase_order: Identifier | None = None


class LineItem(_Strict):
    """One order line with its quantities along the order-to-cash flow."""

    sku: Identifier
    description: ShortText | None = None
    uom: Annotated[str, StringConstraints(max_length=16)] = "EA"
    ordered_qty: NonNegativeQty
    picked_qty: NonNegativeQty | None = None
    shipped_qty: NonNegativeQty | None = None
    delivered_qty: NonNegativeQty | None = None
    invoiced_qty: NonNegativeQty | None = None
    unit_price: Money | None = Field(default=None, description="Agreed (order) unit price.")
    invoiced_unit_price: Money | None = Field(
        default=None, description="Unit price on the invoice."
    )


class FreeText(_Strict):
    """Untrusted human or machine text attached to the case. Never treated as instructions."""

    customer_message: LongText | None = None
    operator_notes: LongText | None = None
    integration_error: LongText | None = None


class Milestones(_Strict):
    """Optional process timestamps, used for dwell-time analytics."""

    ordered_at: AwareDatetime | None = None
    shipped_at: AwareDatetime | None = None
    delivered_at: AwareDatetime | None = None
    invoiced_at: AwareDatetime | None = None


class CaseIn(_Strict):
    """An exception case as submitted by the orchestration layer (schema version 1.0)."""

    schema_version: Annotated[str, StringConstraints(pattern=r"^1\.\d+$")] = SCHEMA_VERSION
    source: SourceRef
    exception_type: ExceptionType
    title: ShortText | None = Field(
        default=None, description="One-line headline, if the source has one."
    )
    references: References
    lines: list[LineItem] = Field(default_factory=list, max_length=500)
    amount_in_dispute: Money | None = Field(
        default=None, description="Money at stake as stated by the source system."
    )
    text: FreeText = Field(default_factory=FreeText)
    occurred_at: AwareDatetime
    milestones: Milestones = Field(default_factory=Milestones)
    callback_url: HttpUrl | None = Field(
        default=None, description="Called (signed, retried) when triage completes."
    )
    attributes: dict[str, Any] = Field(
        default_factory=dict, description="Anything else, kept as is."
    )

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "schema_version": "1.0",
                    "source": {
                        "system": "wms-rotterdam",
                        "kind": "wms",
                        "case_id": "EX-2026-000123",
                    },
                    "exception_type": "shortage",
                    "references": {
                        "customer": {"id": "CUST-0042", "name": "Nordhaven Retail", "tier": "A"},
                        "order_id": "SO-778812",
                        "shipment_id": "SH-55120",
                        "invoice_id": "INV-90211",
                        "warehouse_id": "WH-RTM-1",
                        "carrier_id": "DHL",
                    },
                    "lines": [
                        {
                            "sku": "SKU-100-BLK",
                            "ordered_qty": "40",
                            "picked_qty": "32",
                            "shipped_qty": "32",
                            "invoiced_qty": "40",
                            "unit_price": {"amount": "12.50", "currency": "EUR"},
                        }
                    ],
                    "amount_in_dispute": {"amount": "100.00", "currency": "EUR"},
                    "text": {
                        "customer_message": (
                            "We received 32 units instead of 40 but were billed for 40."
                        ),
                        "operator_notes": "Pick short at location A-12-3.",
                    },
                    "occurred_at": "2026-11-20T09:15:00+01:00",
                }
            ]
        },
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> CaseIn:
        currencies = {
            m.currency
            for line in self.lines
            for m in (line.unit_price, line.invoiced_unit_price)
            if m is not None
        }
        if self.amount_in_dispute is not None:
            currencies.add(self.amount_in_dispute.currency)
        if len(currencies) > 1:
            raise ValueError(
                "all money on a case must share one currency; found "
                + ", ".join(sorted(currencies))
            )
        return self

    @property
    def currency(self) -> str | None:
        """The case's currency, if any money is stated."""
        if self.amount_in_dispute is not None:
            return self.amount_in_dispute.currency
        for line in self.lines:
            for m in (line.unit_price, line.invoiced_unit_price):
                if m is not None:
                    return m.currency
        return None

    def occurred_at_utc(self) -> datetime:
        return self.occurred_at.astimezone(UTC)
