// Typed errors: one class per kind of answer a caller handles differently. Every error the
// server sends carries its `error` code in `.code`, its HTTP status in `.status` and its whole
// JSON body in `.body`; the SDK itself validates nothing.

import type { components } from "./schema.js";

/** The error body every Tally error response has (`{ success: false, error, message, ... }`). */
export type ErrorBody = components["schemas"]["ErrorResponse"];

/** What `.body` of an error holds: the server's error body, or null when there was no answer. */
export type ErrorBodyOrNull = ErrorBody | null;

export interface TallyErrorInit {
    /** HTTP status, or 0 when no HTTP answer arrived (network failure, timeout). */
    status: number;
    /** The body's `error` code (`insufficient_credits`, `rate_limited`, ...), or an SDK code. */
    code: string;
    body: ErrorBodyOrNull;
    /** The `Idempotency-Key` the request carried, if it was a write. */
    idempotencyKey?: string | undefined;
    cause?: unknown;
}

/** Base class of every error this SDK throws. */
export class TallyError extends Error {
    readonly status: number;
    readonly code: string;
    readonly body: ErrorBodyOrNull;
    readonly idempotencyKey: string | undefined;

    constructor(message: string, init: TallyErrorInit) {
        super(message, init.cause === undefined ? undefined : { cause: init.cause });
        this.name = new.target.name;
        this.status = init.status;
        this.code = init.code;
        this.body = init.body;
        this.idempotencyKey = init.idempotencyKey;
    }
}

/** 402 `insufficient_credits`: the user cannot spend that much. Nothing was written. */
export class InsufficientCreditsError extends TallyError {
    /** What the user owns. */
    readonly balance: number | undefined;
    /** What the user may spend (balance minus active holds). */
    readonly available: number | undefined;

    constructor(message: string, init: TallyErrorInit) {
        super(message, init);
        this.balance = init.body?.balance ?? undefined;
        this.available = init.body?.available ?? init.body?.balance ?? undefined;
    }
}

/** 409: `already_refunded`, `hold_not_active`, `idempotency_in_progress`, ... */
export class ConflictError extends TallyError {}

/** 409 `idempotency_conflict`: the key was used before with another body or path. */
export class IdempotencyConflictError extends ConflictError {}

/** 404 `not_found`: an unknown id, or another app's. */
export class NotFoundError extends TallyError {}

/** 401 `unauthorized`: a missing, malformed, unknown or revoked API key. */
export class AuthenticationError extends TallyError {}

/** 400, 413, 415 or 422: the server refused the request as it is (`.body.field` names the field). */
export class BadRequestError extends TallyError {}

/** 429 `rate_limited`: the app's request budget is spent; nothing changed. */
export class RateLimitError extends TallyError {
    /** Seconds the server asked to wait (`Retry-After`), if it said. */
    readonly retryAfterSeconds: number | undefined;

    constructor(message: string, init: TallyErrorInit & { retryAfterSeconds?: number | undefined }) {
        super(message, init);
        this.retryAfterSeconds = init.retryAfterSeconds;
    }
}

/** 503 `unavailable`: the broker or database is unreachable; the command was not accepted. */
export class UnavailableError extends TallyError {}

/** No HTTP answer: the connection failed, was dropped, or the call timed out. */
export class ConnectionError extends TallyError {}

/**
 * `wait()` on an async handle gave up before the command was applied or rejected. The command
 * is durable and will still be applied; read it later with `tally.commands.get(commandId)`.
 */
export class WaitTimeoutError extends TallyError {
    readonly commandId: string;

    constructor(message: string, commandId: string) {
        super(message, { status: 0, code: "wait_timeout", body: null });
        this.commandId = commandId;
    }
}

/** Builds the typed error for an HTTP error answer. */
export function errorFromResponse(
    status: number,
    body: unknown,
    idempotencyKey: string | undefined,
    retryAfterSeconds: number | undefined,
): TallyError {
    const errorBody = isErrorBody(body) ? body : null;
    const code = errorBody?.error ?? `http_${status}`;
    const message = errorBody?.message ?? `HTTP ${status}`;
    const init: TallyErrorInit = { status, code, body: errorBody, idempotencyKey };
    switch (status) {
        case 400:
        case 413:
        case 415:
        case 422:
            return new BadRequestError(message, init);
        case 401:
            return new AuthenticationError(message, init);
        case 402:
            return new InsufficientCreditsError(message, init);
        case 404:
            return new NotFoundError(message, init);
        case 409:
            return code === "idempotency_conflict"
                ? new IdempotencyConflictError(message, init)
                : new ConflictError(message, init);
        case 429:
            return new RateLimitError(message, { ...init, retryAfterSeconds });
        case 503:
            return new UnavailableError(message, init);
        default:
            return new TallyError(message, init);
    }
}

function isErrorBody(body: unknown): body is ErrorBody {
    return (
        typeof body === "object" &&
        body !== null &&
        typeof (body as { error?: unknown }).error === "string"
    );
}
