// tally-credits-sdk: a client for Tally's HTTP API. No dependencies: the platform's `fetch`.

import {
    ConnectionError,
    errorFromResponse,
    TallyError,
    WaitTimeoutError,
} from "./errors.js";
import type { ErrorBody } from "./errors.js";
import type { components, paths } from "./schema.js";
import { verify, type VerifyOptions, type WebhookEvent, type WebhookHeaders } from "./webhooks.js";

export * from "./errors.js";
export type { components, paths } from "./schema.js";
export {
    DEFAULT_TOLERANCE_SECONDS,
    verify as verifyWebhook,
    webhooks,
    WebhookVerificationError,
} from "./webhooks.js";
export type {
    VerifyOptions,
    WebhookEvent,
    WebhookHeaders,
    WebhookVerificationCode,
} from "./webhooks.js";

// ---------------------------------------------------------------------------------------------
// Types, taken from the generated OpenAPI types so they follow the server's document.

type JsonBody<T> = T extends { content: { "application/json": infer B } } ? B : never;
type RequestBodyOf<P extends keyof paths> = paths[P] extends {
    post: { requestBody?: infer R };
}
    ? JsonBody<NonNullable<R>>
    : never;
type PostOk<P extends keyof paths> = paths[P] extends { post: { responses: { 200: infer R } } }
    ? JsonBody<R>
    : never;
type GetOk<P extends keyof paths> = paths[P] extends { get: { responses: { 200: infer R } } }
    ? JsonBody<R>
    : never;
type QueryOf<P extends keyof paths> = paths[P] extends { get: { parameters: { query?: infer Q } } }
    ? NonNullable<Q>
    : never;

export type AddParams = RequestBodyOf<"/credits/add">;
export type AddResult = PostOk<"/credits/add">;
export type DeductParams = RequestBodyOf<"/credits/deduct">;
export type DeductResult = PostOk<"/credits/deduct">;
export type RefundParams = RequestBodyOf<"/credits/refund">;
export type RefundResult = PostOk<"/credits/refund">;
export type HoldParams = RequestBodyOf<"/credits/hold">;
export type HoldResult = PostOk<"/credits/hold">;
export type CaptureParams = RequestBodyOf<"/credits/capture">;
export type CaptureResult = PostOk<"/credits/capture">;
export type ReleaseParams = RequestBodyOf<"/credits/release">;
export type ReleaseResult = PostOk<"/credits/release">;
export type BalanceResult = GetOk<"/credits/balance">;
export type BalanceParams = QueryOf<"/credits/balance">;
export type BalancesResult = GetOk<"/credits/balances">;
export type TypeBalance = BalancesResult["balances"][number];
export type HistoryParams = QueryOf<"/credits/history">;
export type HistoryResult = GetOk<"/credits/history">;
export type HistoryEntry = HistoryResult["entries"][number];
export type HoldsParams = QueryOf<"/credits/holds">;
export type HoldsResult = GetOk<"/credits/holds">;
export type CommandStatus = GetOk<"/commands/{command_id}">;
export type WebhookEventsParams = QueryOf<"/webhooks/events">;
export type WebhookEventsResult = GetOk<"/webhooks/events">;
type Schemas = components["schemas"];
/** A webhook endpoint; `secret` only in the answer to `create`. */
export type WebhookEndpoint = Schemas["Endpoint"];
export type CreateWebhookEndpointParams = Schemas["CreateEndpointRequest"];
export type UpdateWebhookEndpointParams = Schemas["UpdateEndpointRequest"];
export type WebhookEndpointsResult = Schemas["EndpointsResponse"];
export type RotateSecretResult = Schemas["SecretResponse"];
export type TestWebhookEndpointResult = Schemas["TestResponse"];
export type WebhookDelivery = Schemas["Delivery"];
export type WebhookDeliveriesParams = QueryOf<"/webhook_endpoints/{id}/deliveries">;
export type WebhookDeliveriesResult = Schemas["DeliveriesResponse"];
export type EventsParams = QueryOf<"/events">;
export type EventsResult = Schemas["EventsResponse"];
export type AlertsParams = Schemas["AlertsRequest"];
export type AlertsResult = Schemas["Alerts"];
/** Whose thresholds (`user_id`; none: the app's default) of which `credit_type`. */
export type AlertsQuery = QueryOf<"/credits/alerts">;
export type EffectiveAlertsResult = Schemas["EffectiveAlerts"];
/** What one provider product buys: a Stripe Price (`price_...`) or a Polar Product. */
export type Product = Schemas["Product"];
export type ProductParams = Schemas["ProductRequest"];
export type ProductsResult = Schemas["ProductsResponse"];
/** `stripe` or `polar`. */
export type ProductProvider = Product["provider"];
/** A user's auto top-up of one credit type, with its last attempt. */
export type AutoTopup = Schemas["AutoTopup"];
export type AutoTopupAttempt = Schemas["AutoTopupAttempt"];
export type AutoTopupParams = Schemas["AutoTopupRequest"];
/** Whose auto top-up (`user_id`) of which `credit_type` (default `credits`). */
export type AutoTopupQuery = QueryOf<"/credits/auto_topup">;
/** The 202 answer to a write sent with `respondAsync: true`. */
export type AcceptedResult = {
    success: boolean;
    status: string;
    command_id: string;
    status_url: string;
};

/** What each operation of a batch takes (that endpoint's body) and answers. */
export interface BatchOperations {
    add: { params: AddParams; result: AddResult };
    deduct: { params: DeductParams; result: DeductResult };
    refund: { params: RefundParams; result: RefundResult };
    hold: { params: HoldParams; result: HoldResult };
    capture: { params: CaptureParams; result: CaptureResult };
    release: { params: ReleaseParams; result: ReleaseResult };
}

export type BatchOp = keyof BatchOperations;

/** One operation of a batch: `op`, that endpoint's body, and optionally a key of its own that
 * works like that request's `Idempotency-Key` (not taken in an atomic batch). */
export type BatchOperation = {
    [K in BatchOp]: { op: K; idempotency_key?: string | undefined } & BatchOperations[K]["params"];
}[BatchOp];

/** One operation's result, in request order: what that request alone would have answered.
 * Narrow on `op`, then `ok`, for the typed body. */
export type BatchOperationResult = {
    [K in BatchOp]:
        | { index: number; op: K; ok: true; status: number; body: BatchOperations[K]["result"] }
        | { index: number; op: K; ok: false; status: number; body: ErrorBody | null; error: TallyError };
}[BatchOp];

/** The answer to a batch: one result per operation, in request order. */
export interface BatchResult {
    results: BatchOperationResult[];
}

export interface BatchOptions {
    /** All or none: only add, deduct and hold of one user; a refusal throws BatchRejectedError. */
    atomic?: boolean | undefined;
    /** The batch's own `Idempotency-Key` (default a fresh UUID, kept across its retries): a
     * repeat replays the whole answer. */
    idempotencyKey?: string | undefined;
    /** `true`: resolve as soon as the batch is durable, to a handle whose `wait()` gives the
     * results. */
    respondAsync?: boolean | undefined;
}

/** The subset of `fetch` the SDK uses; the platform's `fetch` fits. */
export type FetchLike = (
    url: string,
    init: {
        method: string;
        headers: Record<string, string>;
        body?: string;
        signal: AbortSignal;
    },
) => Promise<FetchResponseLike>;

export interface FetchResponseLike {
    readonly status: number;
    readonly headers: { get(name: string): string | null };
    text(): Promise<string>;
}

export interface TallyOptions {
    /** The app's API key (`tk_...`). Default: the `TALLY_API_KEY` environment variable. */
    apiKey?: string | undefined;
    /** Where the ingress listens, e.g. `http://127.0.0.1:8080`. Default: `TALLY_BASE_URL`. */
    baseUrl?: string | undefined;
    /** Per attempt: how long to wait for an answer before giving up on it. Default 30,000. */
    timeoutMs?: number | undefined;
    /** Retries after the first attempt (network errors, timeouts, 429, 503,
     * 409 idempotency_in_progress). Default 2, so at most 3 attempts. */
    maxRetries?: number | undefined;
    /** A `fetch` to use instead of the global one. */
    fetch?: FetchLike | undefined;
}

export interface RequestOptions {
    /** Sent as `Idempotency-Key`; default a fresh UUID per call, kept across its retries. */
    idempotencyKey?: string | undefined;
    /** `true`: answer as soon as the command is durable, with a handle to wait on. */
    respondAsync?: boolean | undefined;
}

export interface WaitOptions {
    /** Give up (WaitTimeoutError) after this long. Default 60,000. */
    timeoutMs?: number | undefined;
    /** First pause between polls; doubles up to 1,000 ms. Default 50. */
    pollIntervalMs?: number | undefined;
}

/**
 * A write accepted with `respondAsync: true`: the command is durable; `wait()` for its result.
 * `command_id` and `status_url` are null when the server answered with the command's final
 * result at once (a retry, or a repeated idempotency key, after the command had finished);
 * `wait()` then resolves with that result.
 */
export interface CommandHandle<T> {
    readonly command_id: string | null;
    readonly status_url: string | null;
    /** Polls `/commands/{id}` until the command is applied (resolves with the result the
     * synchronous call would have returned) or rejected (throws its typed error). */
    wait(options?: WaitOptions): Promise<T>;
}

type AsyncOptions = RequestOptions & { respondAsync: true };
type SyncOptions = RequestOptions & { respondAsync?: false | undefined };

// ---------------------------------------------------------------------------------------------
// Limits (each one named, so nothing waits or retries forever).

const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_MAX_RETRIES = 2;
/** First retry pause; doubled per retry, capped, then jittered down by up to half. */
const RETRY_BASE_DELAY_MS = 250;
const RETRY_MAX_DELAY_MS = 8_000;
/** A Retry-After longer than this is not waited out: the error is thrown instead. */
const RETRY_AFTER_MAX_MS = 60_000;
const WAIT_DEFAULT_TIMEOUT_MS = 60_000;
const WAIT_DEFAULT_POLL_MS = 50;
const WAIT_MAX_POLL_MS = 1_000;
/** Page size `historyAll`, `deliveriesAll` and `listAll` ask for (the API's maximum). */
const HISTORY_ALL_PAGE_SIZE = 200;

// ---------------------------------------------------------------------------------------------

/** The Tally client: `tally.credits`, `tally.commands`, `tally.webhooks`,
 * `tally.webhookEndpoints`, `tally.webhookDeliveries`, `tally.events`, `tally.products`. */
export class Tally {
    readonly credits: Credits;
    readonly commands: Commands;
    readonly webhooks: Webhooks;
    readonly webhookEndpoints: WebhookEndpoints;
    readonly webhookDeliveries: WebhookDeliveries;
    readonly events: Events;
    readonly products: Products;
    /** @internal */
    readonly transport: Transport;

    constructor(options: TallyOptions = {}) {
        const env = readEnv();
        const baseUrl = options.baseUrl ?? env["TALLY_BASE_URL"];
        if (baseUrl === undefined || baseUrl === "") {
            throw new TypeError(
                "tally-credits-sdk: no baseUrl; pass { baseUrl } or set TALLY_BASE_URL",
            );
        }
        const fetchImpl = options.fetch ?? (globalThis.fetch as FetchLike | undefined);
        if (fetchImpl === undefined) {
            throw new TypeError(
                "tally-credits-sdk: this platform has no global fetch (Node >= 18 has); pass { fetch }",
            );
        }
        this.transport = new Transport({
            baseUrl: baseUrl.replace(/\/+$/, ""),
            apiKey: options.apiKey ?? env["TALLY_API_KEY"],
            timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
            maxRetries: options.maxRetries ?? DEFAULT_MAX_RETRIES,
            fetch: fetchImpl,
        });
        this.credits = new Credits(this.transport);
        this.commands = new Commands(this.transport);
        this.webhooks = new Webhooks(this.transport);
        this.webhookEndpoints = new WebhookEndpoints(this.transport);
        this.webhookDeliveries = new WebhookDeliveries(this.transport);
        this.events = new Events(this.transport);
        this.products = new Products(this.transport);
    }
}

export default Tally;

export class Credits {
    /** Balance alert thresholds: `set`, `get`, `delete`. */
    readonly alerts: Alerts;
    /** Users' auto top-up settings: `set`, `get`, `delete`. */
    readonly autoTopup: AutoTopups;

    /** @internal */
    constructor(private readonly transport: Transport) {
        this.alerts = new Alerts(transport);
        this.autoTopup = new AutoTopups(transport);
    }

    add(params: AddParams, options: AsyncOptions): Promise<CommandHandle<AddResult>>;
    add(params: AddParams, options?: SyncOptions): Promise<AddResult>;
    add(params: AddParams, options?: RequestOptions): Promise<AddResult | CommandHandle<AddResult>> {
        return this.transport.write<AddResult>("/credits/add", params, options);
    }

    deduct(params: DeductParams, options: AsyncOptions): Promise<CommandHandle<DeductResult>>;
    deduct(params: DeductParams, options?: SyncOptions): Promise<DeductResult>;
    deduct(
        params: DeductParams,
        options?: RequestOptions,
    ): Promise<DeductResult | CommandHandle<DeductResult>> {
        return this.transport.write<DeductResult>("/credits/deduct", params, options);
    }

    refund(params: RefundParams, options: AsyncOptions): Promise<CommandHandle<RefundResult>>;
    refund(params: RefundParams, options?: SyncOptions): Promise<RefundResult>;
    refund(
        params: RefundParams,
        options?: RequestOptions,
    ): Promise<RefundResult | CommandHandle<RefundResult>> {
        return this.transport.write<RefundResult>("/credits/refund", params, options);
    }

    hold(params: HoldParams, options: AsyncOptions): Promise<CommandHandle<HoldResult>>;
    hold(params: HoldParams, options?: SyncOptions): Promise<HoldResult>;
    hold(params: HoldParams, options?: RequestOptions): Promise<HoldResult | CommandHandle<HoldResult>> {
        return this.transport.write<HoldResult>("/credits/hold", params, options);
    }

    capture(params: CaptureParams, options: AsyncOptions): Promise<CommandHandle<CaptureResult>>;
    capture(params: CaptureParams, options?: SyncOptions): Promise<CaptureResult>;
    capture(
        params: CaptureParams,
        options?: RequestOptions,
    ): Promise<CaptureResult | CommandHandle<CaptureResult>> {
        return this.transport.write<CaptureResult>("/credits/capture", params, options);
    }

    release(params: ReleaseParams, options: AsyncOptions): Promise<CommandHandle<ReleaseResult>>;
    release(params: ReleaseParams, options?: SyncOptions): Promise<ReleaseResult>;
    release(
        params: ReleaseParams,
        options?: RequestOptions,
    ): Promise<ReleaseResult | CommandHandle<ReleaseResult>> {
        return this.transport.write<ReleaseResult>("/credits/release", params, options);
    }

    /** `GET /credits/balance`: `{ user_id, credit_type, balance, held, available, next_expiry }`
     * of one credit type (`{ credit_type }`, default `credits`). */
    balance(user_id: string, options?: { credit_type?: string | undefined }): Promise<BalanceResult> {
        return this.transport.get<BalanceResult>("/credits/balance", {
            user_id,
            credit_type: options?.credit_type,
        });
    }

    /** `GET /credits/balances`: every credit type the user has, ordered by type. */
    balances(user_id: string): Promise<BalancesResult> {
        return this.transport.get<BalancesResult>("/credits/balances", { user_id });
    }

    /**
     * `POST /credits/batch`: 1 to 1,000 operations in one call, each applied as if sent alone,
     * or (`atomic: true`) one user's adds, deducts and holds all or none. Resolves to a result
     * per operation; an operation the server answered 202 is waited for, like a write.
     */
    batch(
        operations: readonly BatchOperation[],
        options: BatchOptions & { respondAsync: true },
    ): Promise<CommandHandle<BatchResult>>;
    batch(
        operations: readonly BatchOperation[],
        options?: BatchOptions & { respondAsync?: false | undefined },
    ): Promise<BatchResult>;
    async batch(
        operations: readonly BatchOperation[],
        options?: BatchOptions,
    ): Promise<BatchResult | CommandHandle<BatchResult>> {
        const body = { atomic: options?.atomic === true, operations };
        const writeOptions = { idempotencyKey: options?.idempotencyKey };
        if (options?.respondAsync === true) {
            const handle = await this.transport.write<RawBatch>("/credits/batch", body, {
                ...writeOptions,
                respondAsync: true,
            });
            return {
                command_id: handle.command_id,
                status_url: handle.status_url,
                wait: async (wait?: WaitOptions) =>
                    this.transport.typedBatch(operations, await handle.wait(wait), wait),
            };
        }
        const raw = await this.transport.write<RawBatch>("/credits/batch", body, writeOptions);
        return this.transport.typedBatch(operations, raw, undefined);
    }

    /** One page of `GET /credits/history`, newest first; pass `next_cursor` on for the next. */
    history(params: HistoryParams): Promise<HistoryResult> {
        return this.transport.get<HistoryResult>("/credits/history", params);
    }

    /** Every history entry of a user, newest first, following `next_cursor` page by page
     * (`limit` per page, default 200). */
    historyAll(
        user_id: string,
        options?: { limit?: number | undefined },
    ): AsyncGenerator<HistoryEntry, void, undefined> {
        return pages(
            (cursor) => this.history({ user_id, limit: options?.limit ?? HISTORY_ALL_PAGE_SIZE, ...cursor }),
            (page) => page.entries,
        );
    }

    /** `GET /credits/holds`: a user's holds, optionally by status. */
    holds(params: HoldsParams): Promise<HoldsResult> {
        return this.transport.get<HoldsResult>("/credits/holds", params);
    }
}

export class Commands {
    /** @internal */
    constructor(private readonly transport: Transport) {}

    /** `GET /commands/{command_id}`: pending, applied or rejected, with the sync call's answer. */
    get(command_id: string): Promise<CommandStatus> {
        return this.transport.get<CommandStatus>(`/commands/${encodeURIComponent(command_id)}`, {});
    }
}

export class Webhooks {
    /** @internal */
    constructor(private readonly transport: Transport) {}

    /** `GET /webhooks/events`: received payment webhooks, newest first, with their outcome. */
    events(params: WebhookEventsParams = {}): Promise<WebhookEventsResult> {
        return this.transport.get<WebhookEventsResult>("/webhooks/events", params);
    }

    /** Verifies an event Tally sent to your endpoint; the same as the `webhooks.verify`
     * export (no API key needed). */
    verify(
        body: string | Uint8Array,
        headers: WebhookHeaders,
        secret: string,
        options?: VerifyOptions,
    ): WebhookEvent {
        return verify(body, headers, secret, options);
    }
}

/** `tally.webhookEndpoints`: the URLs Tally sends the app's events to. */
export class WebhookEndpoints {
    /** @internal */
    constructor(private readonly transport: Transport) {}

    /** `POST /webhook_endpoints`: the endpoint with its `secret` (`whsec_...`), shown only now. */
    create(params: CreateWebhookEndpointParams): Promise<WebhookEndpoint> {
        return this.transport.request<WebhookEndpoint>("POST", "/webhook_endpoints", { body: params });
    }

    /** `GET /webhook_endpoints`: every endpoint of the app, oldest first, without secrets. */
    list(): Promise<WebhookEndpointsResult> {
        return this.transport.get<WebhookEndpointsResult>("/webhook_endpoints", {});
    }

    /** `GET /webhook_endpoints/{id}`. */
    get(id: string): Promise<WebhookEndpoint> {
        return this.transport.get<WebhookEndpoint>(endpointPath(id), {});
    }

    /** `PATCH /webhook_endpoints/{id}`: changes what is given (`description: null` clears it;
     * `enabled: true` re-enables an endpoint disabled after failing). */
    update(id: string, params: UpdateWebhookEndpointParams): Promise<WebhookEndpoint> {
        return this.transport.request<WebhookEndpoint>("PATCH", endpointPath(id), { body: params });
    }

    /** `DELETE /webhook_endpoints/{id}`: its pending deliveries are cancelled. */
    async delete(id: string): Promise<void> {
        await this.transport.request<null>("DELETE", endpointPath(id), {});
    }

    /** `POST /webhook_endpoints/{id}/rotate_secret`: the new secret (shown only now); for 24 h
     * deliveries are signed with both. */
    rotateSecret(id: string): Promise<RotateSecretResult> {
        return this.transport.request<RotateSecretResult>("POST", `${endpointPath(id)}/rotate_secret`, {});
    }

    /** `POST /webhook_endpoints/{id}/test`: a `ping` event to this endpoint only. */
    test(id: string): Promise<TestWebhookEndpointResult> {
        return this.transport.request<TestWebhookEndpointResult>("POST", `${endpointPath(id)}/test`, {});
    }

    /** `GET /webhook_endpoints/{id}/deliveries`: one page, newest first, optionally by `status`. */
    deliveries(id: string, params: WebhookDeliveriesParams = {}): Promise<WebhookDeliveriesResult> {
        return this.transport.get<WebhookDeliveriesResult>(`${endpointPath(id)}/deliveries`, params);
    }

    /** Every delivery of an endpoint, newest first, following `next_cursor` page by page. */
    deliveriesAll(
        id: string,
        params: Omit<WebhookDeliveriesParams, "cursor"> = {},
    ): AsyncGenerator<WebhookDelivery, void, undefined> {
        return pages(
            (cursor) => this.deliveries(id, { limit: HISTORY_ALL_PAGE_SIZE, ...params, ...cursor }),
            (page) => page.deliveries,
        );
    }
}

/** `tally.webhookDeliveries`: one event sent to one endpoint. */
export class WebhookDeliveries {
    /** @internal */
    constructor(private readonly transport: Transport) {}

    /** `POST /webhook_deliveries/{id}/redeliver`: the same event (same `webhook-id`) is sent
     * again now, as a new attempt of this delivery; the delivery, `pending` again. */
    redeliver(id: string): Promise<WebhookDelivery> {
        return this.transport.request<WebhookDelivery>(
            "POST",
            `/webhook_deliveries/${encodeURIComponent(id)}/redeliver`,
            {},
        );
    }
}

/** `tally.events`: the app's events as its endpoints receive them (kept at least 30 days). */
export class Events {
    /** @internal */
    constructor(private readonly transport: Transport) {}

    /** `GET /events`: one page, newest first, optionally by `type` and `user_id`. */
    list(params: EventsParams = {}): Promise<EventsResult> {
        return this.transport.get<EventsResult>("/events", params);
    }

    /** Every event, newest first, following `next_cursor` page by page. */
    listAll(params: Omit<EventsParams, "cursor"> = {}): AsyncGenerator<WebhookEvent, void, undefined> {
        return pages(
            (cursor) => this.list({ limit: HISTORY_ALL_PAGE_SIZE, ...params, ...cursor }),
            (page) => page.events,
        );
    }

    /** `GET /events/{id}`. */
    get(id: string): Promise<WebhookEvent> {
        return this.transport.get<WebhookEvent>(`/events/${encodeURIComponent(id)}`, {});
    }
}

/** `tally.credits.alerts`: the thresholds below which `balance.low` fires. */
export class Alerts {
    /** @internal */
    constructor(private readonly transport: Transport) {}

    /** `PUT /credits/alerts`: without `user_id` the app's default list of `credit_type`, with
     * it that user's own (`[]`: no alerts for that user). */
    set(params: AlertsParams): Promise<AlertsResult> {
        return this.transport.request<AlertsResult>("PUT", "/credits/alerts", { body: params });
    }

    /** `GET /credits/alerts`: the list that applies, and its `source` (`user`, `app`, `none`). */
    get(params: AlertsQuery = {}): Promise<EffectiveAlertsResult> {
        return this.transport.get<EffectiveAlertsResult>("/credits/alerts", params);
    }

    /** `DELETE /credits/alerts`: drops a user's own list (the app's default applies again);
     * without `user_id`, the app's default. */
    async delete(params: AlertsQuery = {}): Promise<void> {
        await this.transport.request<null>("DELETE", "/credits/alerts", { query: params });
    }
}

/** `tally.credits.autoTopup`: a user's saved card charged when `available` falls below a
 * threshold, for more credits. */
export class AutoTopups {
    /** @internal */
    constructor(private readonly transport: Transport) {}

    /** `PUT /credits/auto_topup`: creates or replaces `user_id`'s settings for `credit_type`
     * (default `credits`); the charge is `amount` minor units of `currency`, for `credits`. */
    set(params: AutoTopupParams): Promise<AutoTopup> {
        return this.transport.request<AutoTopup>("PUT", "/credits/auto_topup", { body: params });
    }

    /** `GET /credits/auto_topup`: the settings with `consecutive_failures` and `last_attempt`;
     * NotFoundError when the user has none for that type. */
    get(params: AutoTopupQuery): Promise<AutoTopup> {
        return this.transport.get<AutoTopup>("/credits/auto_topup", params);
    }

    /** `DELETE /credits/auto_topup`: no more top-ups; NotFoundError when there were none. */
    async delete(params: AutoTopupQuery): Promise<void> {
        await this.transport.request<null>("DELETE", "/credits/auto_topup", { query: params });
    }
}

/** `tally.products`: what each provider product (a Stripe Price, a Polar Product) buys. */
export class Products {
    /** @internal */
    constructor(private readonly transport: Transport) {}

    /** `PUT /products/{provider}/{product_id}`: creates or replaces what the product buys:
     * `credits` of `credit_type` (default `credits`), `mode` `one_time` (`expires_in_days`
     * optional) or `subscription`. */
    put(provider: ProductProvider, productId: string, params: ProductParams): Promise<Product> {
        return this.transport.request<Product>("PUT", productPath(provider, productId), { body: params });
    }

    /** `GET /products`: every product of the app, by provider then product id. */
    async list(): Promise<Product[]> {
        const listed = await this.transport.get<ProductsResult>("/products", {});
        return listed.products;
    }

    /** `DELETE /products/{provider}/{product_id}`: NotFoundError for an unknown one. */
    async delete(provider: ProductProvider, productId: string): Promise<void> {
        await this.transport.request<null>("DELETE", productPath(provider, productId), {});
    }
}

function productPath(provider: string, productId: string): string {
    return `/products/${encodeURIComponent(provider)}/${encodeURIComponent(productId)}`;
}

function endpointPath(id: string): string {
    return `/webhook_endpoints/${encodeURIComponent(id)}`;
}

/** Every item of a cursor-paged list: `fetch` gets a page from a cursor (none for the
 * first), `items` takes its items. */
async function* pages<P extends { next_cursor?: string | null | undefined }, T>(
    fetch: (cursor: { cursor?: string }) => Promise<P>,
    items: (page: P) => readonly T[],
): AsyncGenerator<T, void, undefined> {
    let cursor: { cursor?: string } = {};
    for (;;) {
        const page = await fetch(cursor);
        yield* items(page);
        if (page.next_cursor === null || page.next_cursor === undefined) return;
        cursor = { cursor: page.next_cursor };
    }
}

// ---------------------------------------------------------------------------------------------
// Transport: one request with retries.

interface TransportConfig {
    baseUrl: string;
    apiKey: string | undefined;
    timeoutMs: number;
    maxRetries: number;
    fetch: FetchLike;
}

interface Answer {
    status: number;
    body: unknown;
}

/** A batch's answer as the server sends it, before each body is typed. */
interface RawBatch {
    results: { index: number; status: number; body: unknown }[];
}

/** @internal */
export class Transport {
    constructor(private readonly config: TransportConfig) {}

    get<T>(path: string, query: object): Promise<T> {
        return this.request<T>("GET", path, { query });
    }

    /** Any call: `query` parameters (those left undefined or null are not sent) and a JSON
     * `body`. A POST carries an `Idempotency-Key`, the same on each of its retries. A 204
     * resolves with null. */
    async request<T>(method: string, path: string, options: { query?: object; body?: unknown }): Promise<T> {
        const search = new URLSearchParams();
        for (const [name, value] of Object.entries(options.query ?? {})) {
            if (value !== undefined && value !== null) search.append(name, String(value));
        }
        const qs = search.toString();
        const headers: Record<string, string> = method === "POST" ? { "Idempotency-Key": newIdempotencyKey() } : {};
        const body = options.body === undefined ? undefined : JSON.stringify(options.body);
        const answer = await this.send(method, qs === "" ? path : `${path}?${qs}`, body, headers);
        return answer.body as T;
    }

    write<T>(path: string, params: unknown, options: AsyncOptions): Promise<CommandHandle<T>>;
    write<T>(path: string, params: unknown, options: SyncOptions | undefined): Promise<T>;
    write<T>(path: string, params: unknown, options: RequestOptions | undefined): Promise<T | CommandHandle<T>>;
    async write<T>(
        path: string,
        params: unknown,
        options: RequestOptions | undefined,
    ): Promise<T | CommandHandle<T>> {
        const idempotencyKey = options?.idempotencyKey ?? newIdempotencyKey();
        const headers: Record<string, string> = { "Idempotency-Key": idempotencyKey };
        if (options?.respondAsync === true) headers["Prefer"] = "respond-async";
        const answer = await this.send("POST", path, JSON.stringify(params), headers);
        if (answer.status === 202) {
            const handle = this.handle<T>(answer.body as AcceptedResult, idempotencyKey);
            // A synchronous call the server answered 202 (its result took longer than the sync
            // timeout): the command is durable, so wait for what it became.
            return options?.respondAsync === true ? handle : handle.wait();
        }
        if (options?.respondAsync === true) {
            const result = answer.body as T;
            return { command_id: null, status_url: null, wait: () => Promise.resolve(result) };
        }
        return answer.body as T;
    }

    private handle<T>(accepted: AcceptedResult, idempotencyKey: string): CommandHandle<T> {
        return {
            command_id: accepted.command_id,
            status_url: accepted.status_url,
            wait: async (options?: WaitOptions): Promise<T> => {
                const status = await this.settle(accepted.command_id, options);
                if (status.status === "applied") return status.result as T;
                throw errorFromResponse(status.http_status ?? 0, status.result, idempotencyKey, undefined);
            },
        };
    }

    /** Polls a command until it is applied or rejected; WaitTimeoutError after the timeout. */
    private async settle(commandId: string, options: WaitOptions | undefined): Promise<CommandStatus> {
        const commandPath = `/commands/${encodeURIComponent(commandId)}`;
        const timeoutMs = options?.timeoutMs ?? WAIT_DEFAULT_TIMEOUT_MS;
        let pollMs = options?.pollIntervalMs ?? WAIT_DEFAULT_POLL_MS;
        const deadline = Date.now() + timeoutMs;
        for (;;) {
            const status = await this.get<CommandStatus>(commandPath, {});
            if (status.status === "applied" || status.status === "rejected") return status;
            const left = deadline - Date.now();
            if (left <= 0) {
                throw new WaitTimeoutError(
                    `command ${commandId} is still ${status.status} after ${timeoutMs} ms; it will still be applied`,
                    commandId,
                );
            }
            await sleep(Math.min(pollMs, left));
            pollMs = Math.min(pollMs * 2, WAIT_MAX_POLL_MS);
        }
    }

    /** Each result of a batch typed by its operation, once those answered 202 have settled. */
    async typedBatch(
        operations: readonly BatchOperation[],
        raw: RawBatch,
        wait: WaitOptions | undefined,
    ): Promise<BatchResult> {
        const results: BatchOperationResult[] = [];
        for (const { index, status: first, body: firstBody } of raw.results) {
            let status = first;
            let body = firstBody;
            if (status === 202) {
                const settled = await this.settle((body as AcceptedResult).command_id, wait);
                status = settled.http_status ?? 0;
                body = settled.result;
            }
            const operation = operations[index];
            if (operation === undefined) {
                throw new TallyError(`the answer has a result ${index} for no operation`, {
                    status: 0,
                    code: "invalid_response",
                    body: null,
                });
            }
            const op = operation.op;
            if (status >= 200 && status < 300) {
                // The body is what `op` answers: the server's contract, not checked here.
                results.push({ index, op, ok: true, status, body } as BatchOperationResult);
            } else {
                const error = errorFromResponse(status, body, operation.idempotency_key, undefined);
                results.push({ index, op, ok: false, status, body: error.body, error });
            }
        }
        return { results };
    }

    /** Sends one request, retrying what is safe to retry; resolves with a 2xx answer or throws. */
    private async send(
        method: string,
        path: string,
        body: string | undefined,
        extraHeaders: Record<string, string>,
    ): Promise<Answer> {
        const headers: Record<string, string> = { Accept: "application/json", ...extraHeaders };
        if (this.config.apiKey !== undefined && this.config.apiKey !== "") {
            headers["Authorization"] = `Bearer ${this.config.apiKey}`;
        }
        if (body !== undefined) headers["Content-Type"] = "application/json";
        const idempotencyKey = extraHeaders["Idempotency-Key"];
        const url = this.config.baseUrl + path;

        for (let attempt = 0; ; attempt++) {
            const retriesLeft = attempt < this.config.maxRetries;
            let failure: TallyError;
            let retryAfterMs: number | undefined;
            try {
                const answer = await this.attempt(method, url, body, headers);
                if (answer.status >= 200 && answer.status < 300) {
                    return { status: answer.status, body: answer.body };
                }
                const retryAfterSeconds = parseRetryAfter(answer.retryAfter);
                failure = errorFromResponse(answer.status, answer.body, idempotencyKey, retryAfterSeconds);
                if (!isRetryable(failure)) throw failure;
                retryAfterMs = retryAfterSeconds === undefined ? undefined : retryAfterSeconds * 1000;
            } catch (error) {
                if (error instanceof TallyError && !(error instanceof ConnectionError)) throw error;
                failure = error instanceof ConnectionError ? error : connectionError(error, idempotencyKey);
            }
            if (!retriesLeft) throw failure;
            if (retryAfterMs !== undefined && retryAfterMs > RETRY_AFTER_MAX_MS) throw failure;
            await sleep(Math.max(backoffMs(attempt), retryAfterMs ?? 0));
        }
    }

    private async attempt(
        method: string,
        url: string,
        body: string | undefined,
        headers: Record<string, string>,
    ): Promise<{ status: number; body: unknown; retryAfter: string | null }> {
        const controller = new AbortController();
        const timer = setTimeout(() => controller.abort(), this.config.timeoutMs);
        try {
            const init: Parameters<FetchLike>[1] = { method, headers, signal: controller.signal };
            if (body !== undefined) init.body = body;
            let response: FetchResponseLike;
            let text: string;
            try {
                response = await this.config.fetch(url, init);
                text = await response.text();
            } catch (error) {
                if (controller.signal.aborted) {
                    throw new ConnectionError(
                        `${method} ${url}: no answer within ${this.config.timeoutMs} ms`,
                        { status: 0, code: "timeout", body: null, cause: error },
                    );
                }
                throw error;
            }
            let parsed: unknown = null;
            if (text !== "") {
                try {
                    parsed = JSON.parse(text);
                } catch {
                    parsed = null;
                }
            }
            return { status: response.status, body: parsed, retryAfter: response.headers.get("retry-after") };
        } finally {
            clearTimeout(timer);
        }
    }
}

function isRetryable(error: TallyError): boolean {
    return (
        error.status === 429 ||
        error.status === 503 ||
        (error.status === 409 && error.code === "idempotency_in_progress")
    );
}

function connectionError(error: unknown, idempotencyKey: string | undefined): ConnectionError {
    const reason = error instanceof Error ? error.message : String(error);
    return new ConnectionError(`connection failed: ${reason}`, {
        status: 0,
        code: "connection_error",
        body: null,
        idempotencyKey,
        cause: error,
    });
}

/** Exponential backoff with jitter: base * 2^attempt, capped, then a random 50-100% of it. */
function backoffMs(attempt: number): number {
    const ceiling = Math.min(RETRY_MAX_DELAY_MS, RETRY_BASE_DELAY_MS * 2 ** attempt);
    return ceiling / 2 + Math.random() * (ceiling / 2);
}

/** `Retry-After` in seconds: delta-seconds or an HTTP date. */
function parseRetryAfter(value: string | null): number | undefined {
    if (value === null || value.trim() === "") return undefined;
    const seconds = Number(value);
    if (Number.isFinite(seconds)) return Math.max(0, seconds);
    const date = Date.parse(value);
    if (Number.isNaN(date)) return undefined;
    return Math.max(0, (date - Date.now()) / 1000);
}

function sleep(ms: number): Promise<void> {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A v4 UUID from the platform's `crypto` (every runtime this SDK supports has one). */
function newIdempotencyKey(): string {
    const webCrypto = (globalThis as { crypto?: { randomUUID?: () => string; getRandomValues?: (a: Uint8Array) => Uint8Array } }).crypto;
    if (webCrypto?.randomUUID !== undefined) return webCrypto.randomUUID();
    const bytes = new Uint8Array(16);
    if (webCrypto?.getRandomValues !== undefined) {
        webCrypto.getRandomValues(bytes);
    } else {
        for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
    }
    bytes[6] = (bytes[6]! & 0x0f) | 0x40;
    bytes[8] = (bytes[8]! & 0x3f) | 0x80;
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function readEnv(): Record<string, string | undefined> {
    const process = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
    return process?.env ?? {};
}
