"""tally-credits-sdk: a client for Tally's HTTP API, the self-hostable credit ledger.

    from tally_credits import Tally, InsufficientCreditsError

    with Tally() as tally:  # TALLY_API_KEY, TALLY_BASE_URL
        tally.credits.add(user_id="user_abc123", amount=500)

`Tally` is synchronous, `AsyncTally` the same calls awaited. `tally_credits.webhooks.verify`
checks the signed events Tally sends to your endpoints.
"""

# Before the imports: _core reads it for the User-Agent.
__version__ = "0.1.0"

from . import _generated, webhooks
from ._async_client import (
    AsyncBatchHandle,
    AsyncCommandHandle,
    AsyncCommands,
    AsyncCreditAlerts,
    AsyncCreditAutoTopup,
    AsyncCredits,
    AsyncEvents,
    AsyncProducts,
    AsyncTally,
    AsyncWebhookDeliveries,
    AsyncWebhookEndpoints,
    AsyncWebhooks,
)
from ._batch import (
    AddOperation,
    AddResult,
    BatchResult,
    CaptureOperation,
    CaptureResult,
    DeductOperation,
    DeductResult,
    HoldOperation,
    HoldResult,
    Operation,
    OperationResult,
    RefundOperation,
    RefundResult,
    ReleaseOperation,
    ReleaseResult,
)
from ._client import (
    BatchHandle,
    CommandHandle,
    Commands,
    CreditAlerts,
    CreditAutoTopup,
    Credits,
    Events,
    Products,
    Tally,
    WebhookDeliveries,
    WebhookEndpoints,
    Webhooks,
)
from ._generated import *  # noqa: F403 - the API's types, listed in _generated.__all__
from ._model import Model
from .errors import (
    AuthenticationError,
    BadRequestError,
    BatchRejectedError,
    ConflictError,
    ConnectionError,
    IdempotencyConflictError,
    InsufficientCreditsError,
    NotFoundError,
    RateLimitError,
    TallyError,
    UnavailableError,
    WaitTimeoutError,
    WebhookVerificationError,
)

__all__ = [
    "AddOperation",
    "AddResult",
    "AsyncBatchHandle",
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncCreditAlerts",
    "AsyncCreditAutoTopup",
    "AsyncCredits",
    "AsyncEvents",
    "AsyncProducts",
    "AsyncTally",
    "AsyncWebhookDeliveries",
    "AsyncWebhookEndpoints",
    "AsyncWebhooks",
    "AuthenticationError",
    "BadRequestError",
    "BatchHandle",
    "BatchRejectedError",
    "BatchResult",
    "CaptureOperation",
    "CaptureResult",
    "CommandHandle",
    "Commands",
    "ConflictError",
    "ConnectionError",
    "CreditAlerts",
    "CreditAutoTopup",
    "Credits",
    "DeductOperation",
    "DeductResult",
    "Events",
    "HoldOperation",
    "HoldResult",
    "IdempotencyConflictError",
    "InsufficientCreditsError",
    "Model",
    "NotFoundError",
    "Operation",
    "OperationResult",
    "Products",
    "RateLimitError",
    "RefundOperation",
    "RefundResult",
    "ReleaseOperation",
    "ReleaseResult",
    "Tally",
    "TallyError",
    "UnavailableError",
    "WaitTimeoutError",
    "WebhookDeliveries",
    "WebhookEndpoints",
    "WebhookVerificationError",
    "Webhooks",
    "webhooks",
]
__all__ += _generated.__all__
