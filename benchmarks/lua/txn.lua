-- wrk script: POST /txn creating one unique key if it is absent (a compare of its version with 0, one set):
-- the shape of a lock or a registration. Environment: WRK_PREFIX. done() (common.lua) prints one JSON line.
dofile(os.getenv("WRK_LUA_DIR") .. "/common.lua")
local prefix = os.getenv("WRK_PREFIX") or "t"
local headers = {["Content-Type"] = "application/json"}
local counter = 0

function request()
   counter = counter + 1
   local key = prefix .. "-" .. tid .. "-" .. counter
   local body = '{"compare":[{"key":"' .. key .. '","target":"version","op":"=","value":0}],' ..
      '"success":[{"set":{"' .. key .. '":"0123456789abcdef"}}],"failure":[{"get":"' .. key .. '"}]}'
   return wrk.format("POST", "/txn", headers, body)
end

function response(status, hdrs, body)
   count_status(status)
end
