-- wrk script: GET /keys?prefix=<prefix>&limit=<limit>&start_after=<a random key of the range>&level=<level>,
-- over WRK_KEYS keys <prefix><00000..> written beforehand. Environment: WRK_PREFIX, WRK_KEYS, WRK_LIMIT,
-- WRK_LEVEL. done() (common.lua) prints one JSON line.
dofile(os.getenv("WRK_LUA_DIR") .. "/common.lua")
local prefix = os.getenv("WRK_PREFIX") or "p/"
local keys = tonumber(os.getenv("WRK_KEYS") or "10000")
local limit = os.getenv("WRK_LIMIT") or "10"
local level = os.getenv("WRK_LEVEL") or "linearizable"
local requests_ = {}

for i = 1, 1000 do
   local start = string.format("%s%05d", prefix, math.random(0, keys - tonumber(limit) - 1))
   requests_[i] = wrk.format("GET", "/keys?prefix=" .. prefix .. "&limit=" .. limit .. "&start_after=" .. start ..
      "&level=" .. level)
end

function request()
   return requests_[math.random(1000)]
end

function response(status, hdrs, body)
   count_status(status)
end
