-- wrk script: fire-and-forget deducts (`Prefer: respond-async`) against Tally. Reuses the shared
-- wrk scripts' options (BENCH_API_KEY, BENCH_USERS, ...), from the folder in BENCH_SHARED_WRK
-- (default: ../shared/bench/wrk next to the repository).
BENCH_OP = "deduct"
local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
local shared = os.getenv("BENCH_SHARED_WRK") or (here .. "../../../shared/bench/wrk/")
if shared:sub(-1) ~= "/" then shared = shared .. "/" end
dofile(shared .. "common.lua")
local plain_request = request
request = function()
  return (plain_request():gsub("\r\n\r\n", "\r\nPrefer: respond-async\r\n\r\n", 1))
end
