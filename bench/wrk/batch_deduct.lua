-- wrk script: POST /credits/batch of BENCH_BATCH_OPS (default 100) deducts of 1 credit, each
-- for a random user of BENCH_USERS (default 10,000), against Tally. The RESULT line reports the
-- operations per request (`ops=`) so that a request rate becomes an operation rate.
local API_KEY = os.getenv("BENCH_API_KEY") or "peer-bench-key"
local USERS = tonumber(os.getenv("BENCH_USERS") or "10000")
local OPS = tonumber(os.getenv("BENCH_BATCH_OPS") or "100")
local auth = "Bearer " .. API_KEY
local nthreads = 0

function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
end

function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
end

function request()
  local parts = {}
  for i = 1, OPS do
    parts[i] = '{"op":"deduct","user_id":"u' .. math.random(1, USERS) .. '","amount":1}'
  end
  local body = '{"operations":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format("POST", "/credits/batch",
    { ["Authorization"] = auth, ["Content-Type"] = "application/json" }, body)
end

function done(summary, latency, requests)
  local s = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "RESULT op=batch ops=%d rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f requests=%d non2xx=%d sock_errors=%d\n",
    OPS, summary.requests / s, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout))
end
