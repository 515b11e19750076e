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

/**
 * 422 `batch_rejected`: an operation of an atomic batch was refused, so none was applied.
 * `failed` is the error that operation alone would have thrown (e.g. InsufficientCreditsError).
 */
export class BatchRejectedError extends TallyError {
    /** The refused operation's place in the batch (from 0). */
    readonly failedIndex: number;
    readonly failed: TallyError;

    constructor(message: string, init: TallyErrorInit) {
        super(message, init);
        const body = (init.body ?? {}) as { failed_index?: unknown; failed?: unknown };
        this.failedIndex = typeof body.failed_index === "number" ? body.failed_index : -1;
        const failedCode = isErrorBody(body.failed) ? body.failed.error : "";
        this.failed = errorFromResponse(statusOfCode(failedCode), body.failed, init.idempotencyKey, undefined);
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
        case 422:
            return code === "batch_rejected"
                ? new BatchRejectedError(message, init)
                : new BadRequestError(message, init);
        case 400:
        case 413:
        case 415:
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

/** The status the API answers with an `error` code (the contract's table), for an error body
 * that arrives without its own: the refused operation of an atomic batch. */
function statusOfCode(code: string): number {
    switch (code) {
        case "invalid_request":
            return 400;
        case "unauthorized":
            return 401;
        case "insufficient_credits":
            return 402;
        case "not_found":
            return 404;
        case "idempotency_conflict":
        case "idempotency_in_progress":
        case "already_refunded":
        case "hold_not_active":
            return 409;
        case "payload_too_large":
            return 413;
        case "unsupported_media_type":
            return 415;
        case "rate_limited":
            return 429;
        case "unavailable":
            return 503;
        default:
            // balance_overflow, not_refundable, and any code this client does not know yet.
            return 422;
    }
}

function isErrorBody(body: unknown): body is ErrorBody {
    return (
        typeof body === "object" &&
        body !== null &&
        typeof (body as { error?: unknown }).error === "string"
    );
}
