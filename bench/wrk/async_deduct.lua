-- wrk script: fire-and-forget deducts against Tally: the shared deduct request (same options:
-- BENCH_API_KEY, BENCH_USERS, ... see common.lua) with `Prefer: respond-async`. Every answer
-- must be 202; done() prints, after the shared RESULT line,
--   ASYNC non202=<answers whose status was not 202>
-- The shared scripts are loaded from BENCH_SHARED_WRK (default: ../shared/bench/wrk next to
-- the repository).
BENCH_OP = "deduct"
local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
local shared = os.getenv("BENCH_SHARED_WRK") or (here .. "../../../shared/bench/wrk/")
if shared:sub(-1) ~= "/" then shared = shared .. "/" end
dofile(shared .. "common.lua")

local shared_setup, shared_request, shared_done = setup, request, done
local threads = {}

function setup(thread)
  shared_setup(thread)
  table.insert(threads, thread)
end

-- The header goes in right after the request line's headers, before the blank line.
function request()
  return (shared_request():gsub("\r\n\r\n", "\r\nPrefer: respond-async\r\n\r\n", 1))
end

-- Per thread (each thread has its own Lua state); summed in done().
non202 = 0
function response(status, headers, body)
  if status ~= 202 then non202 = non202 + 1 end
end

function done(summary, latency, requests)
  shared_done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + (tonumber(thread:get("non202")) or 0) end
  io.write(string.format("ASYNC non202=%d\n", total))
end
