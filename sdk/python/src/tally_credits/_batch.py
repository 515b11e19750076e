"""A batch's operations and results, typed by operation (`POST /credits/batch`).

An operation is its endpoint's body (the generated request `TypedDict`) with `op` naming the
endpoint and, optionally, an `idempotency_key` of its own. A result is a frozen dataclass per
operation (`AddResult`, ...) whose `op` narrows the union `OperationResult`: `answer` is that
call's typed answer when it was applied, `error` the typed error it would have raised alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Literal, NotRequired, TypeAlias, TypeVar

from ._generated import (
    AddRequest,
    CaptureRequest,
    CaptureResponse,
    DeductRequest,
    HoldRequest,
    HoldResponse,
    RefundRequest,
    RefundResponse,
    ReleaseRequest,
    ReleaseResponse,
    WriteResponse,
)
from ._model import Model
from .errors import TallyError

__all__ = [
    "AddOperation",
    "AddResult",
    "BatchResult",
    "CaptureOperation",
    "CaptureResult",
    "DeductOperation",
    "DeductResult",
    "HoldOperation",
    "HoldResult",
    "Operation",
    "OperationResult",
    "RefundOperation",
    "RefundResult",
    "ReleaseOperation",
    "ReleaseResult",
]

M = TypeVar("M", bound=Model)


class AddOperation(AddRequest):
    """`POST /credits/add` in a batch."""

    op: Literal["add"]
    idempotency_key: NotRequired[str]
    """Works like that request's `Idempotency-Key` sent alone (not taken in an atomic batch)."""


class DeductOperation(DeductRequest):
    """`POST /credits/deduct` in a batch."""

    op: Literal["deduct"]
    idempotency_key: NotRequired[str]


class RefundOperation(RefundRequest):
    """`POST /credits/refund` in a batch (not atomic)."""

    op: Literal["refund"]
    idempotency_key: NotRequired[str]


class HoldOperation(HoldRequest):
    """`POST /credits/hold` in a batch."""

    op: Literal["hold"]
    idempotency_key: NotRequired[str]


class CaptureOperation(CaptureRequest):
    """`POST /credits/capture` in a batch (not atomic)."""

    op: Literal["capture"]
    idempotency_key: NotRequired[str]


class ReleaseOperation(ReleaseRequest):
    """`POST /credits/release` in a batch (not atomic)."""

    op: Literal["release"]
    idempotency_key: NotRequired[str]


Operation: TypeAlias = (
    AddOperation | DeductOperation | RefundOperation | HoldOperation | CaptureOperation | ReleaseOperation
)


@dataclass(frozen=True, kw_only=True)
class _Result(Generic[M]):
    index: int
    """The operation's place in the batch (from 0)."""
    status: int
    """What that request alone would have answered: 200, or the refusal's 402, 404, 409 ..."""
    answer: M | None = None
    """The typed answer when the operation was applied."""
    error: TallyError | None = None
    """The typed error that request alone would have raised (e.g. InsufficientCreditsError)."""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, kw_only=True)
class AddResult(_Result[WriteResponse]):
    op: Literal["add"] = "add"


@dataclass(frozen=True, kw_only=True)
class DeductResult(_Result[WriteResponse]):
    op: Literal["deduct"] = "deduct"


@dataclass(frozen=True, kw_only=True)
class RefundResult(_Result[RefundResponse]):
    op: Literal["refund"] = "refund"


@dataclass(frozen=True, kw_only=True)
class HoldResult(_Result[HoldResponse]):
    op: Literal["hold"] = "hold"


@dataclass(frozen=True, kw_only=True)
class CaptureResult(_Result[CaptureResponse]):
    op: Literal["capture"] = "capture"


@dataclass(frozen=True, kw_only=True)
class ReleaseResult(_Result[ReleaseResponse]):
    op: Literal["release"] = "release"


OperationResult: TypeAlias = AddResult | DeductResult | RefundResult | HoldResult | CaptureResult | ReleaseResult

# Each operation's result class.
RESULTS: dict[str, type[OperationResult]] = {
    "add": AddResult,
    "deduct": DeductResult,
    "refund": RefundResult,
    "hold": HoldResult,
    "capture": CaptureResult,
    "release": ReleaseResult,
}


@dataclass(frozen=True)
class BatchResult:
    """The answer to a batch: one result per operation, in request order."""

    results: list[OperationResult]
