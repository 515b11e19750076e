-- Dashboard sessions that were logged out before they expired. A session cookie is signed
-- with the admin token (any ingress can check it without a lookup); logging out records its
-- nonce here so a copy of the cookie is refused too. Rows past their expiry are deleted.
CREATE TABLE dashboard_logouts (
    nonce       text PRIMARY KEY,
    expires_at  timestamptz NOT NULL
);
