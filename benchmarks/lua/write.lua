-- wrk script: POST /key with one unique key per request and a 16-byte string value.
-- Environment: WRK_PREFIX (key prefix, unique per run), WRK_STOP_AFTER (optional: print STOPPED after that
-- many responses, to time "N keys loaded"), WRK_SAME_KEY (optional: overwrite the single key WRK_PREFIX, to add
-- log entries without adding data), WRK_PATH (optional: the path, e.g. /key?if_revision=0 for a compare-and-set
-- that creates the key). done() (common.lua) prints the results as one JSON line.
dofile(os.getenv("WRK_LUA_DIR") .. "/common.lua")
local prefix = os.getenv("WRK_PREFIX") or "w"
local same_key = os.getenv("WRK_SAME_KEY") == "1"
local stop_after = tonumber(os.getenv("WRK_STOP_AFTER") or "0")
local path = os.getenv("WRK_PATH") or "/key"
local headers = {["Content-Type"] = "application/json"}
local counter = 0
local responses = 0

function request()
   counter = counter + 1
   local key = same_key and prefix or (prefix .. "-" .. tid .. "-" .. counter)
   local body = '{"' .. key .. '":"0123456789abcdef"}'
   return wrk.format("POST", path, headers, body)
end

function response(status, hdrs, body)
   count_status(status)
   responses = responses + 1
   if responses == stop_after then
      -- run.py timestamps this line and stops wrk with SIGINT
      io.write("STOPPED\n")
      io.stdout:flush()
   end
end
