-- wrk script: GET /key/<prefix><i>?level=<level> for a random i in 1..WRK_KEYS (keys written beforehand).
-- Environment: WRK_PREFIX, WRK_KEYS, WRK_LEVEL (linearizable or stale). done() (common.lua) prints one JSON line.
dofile(os.getenv("WRK_LUA_DIR") .. "/common.lua")
local prefix = os.getenv("WRK_PREFIX") or "r"
local keys = tonumber(os.getenv("WRK_KEYS") or "1000")
local level = os.getenv("WRK_LEVEL") or "linearizable"
local requests_ = {}

for i = 1, keys do
   requests_[i] = wrk.format("GET", "/key/" .. prefix .. i .. "?level=" .. level)
end

function request()
   return requests_[math.random(keys)]
end

function response(status, hdrs, body)
   count_status(status)
end
