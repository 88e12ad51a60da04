-- Shared by every bench script (loaded with dofile): per-thread response counters, the pool
-- file reader, and done(), which prints one machine-readable line for bench/run.py:
--   BENCH_RESULT {"requests":..., "latency_us":{...}, "counts":{...}, ...}
-- Counters (summed over threads) and gauges (largest value wins) live in each wrk thread's own Lua state; done() runs in the setup state and pulls
-- them over with thread:get().

local threads = {}
local next_id = 1
started_at = os.time()  -- in the setup state: when wrk began

function setup(thread)
   thread:set("thread_id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

counts = {}
gauges = {}
samples = {}

timeline = {}

function count(key)
   counts[key] = (counts[key] or 0) + 1
end

-- Responses per wall-clock second: a second with none shows the server stalled.
function tick()
   local now = os.time()
   timeline[now] = (timeline[now] or 0) + 1
end

-- Keep the first few bodies of unexpected responses so the report can show what went wrong.
function sample(status, body)
   if #samples < 5 then
      table.insert(samples, tostring(status) .. " " .. string.sub(body or "", 1, 300))
   end
end

-- Count a response that the scenario script did not classify itself.
function count_status(status, body)
   if status >= 500 then
      count("server_5xx")
      sample(status, body)
   elseif status >= 400 then
      count("status_" .. status)
      sample(status, body)
   else
      count("status_" .. status)
   end
end

-- The pool file: one record a line, fields separated by single spaces.
--   user <token> <user_id>   |   slot <slot_id>   |   path <request path>
function read_pool()
   local path = os.getenv("BENCH_POOL")
   local f = assert(io.open(path, "r"), "cannot open BENCH_POOL " .. tostring(path))
   local pool = { users = {}, tokens = {}, slots = {}, paths = {} }
   for line in f:lines() do
      local kind, a, b = line:match("^(%S+) (%S+) ?(%S*)$")
      if kind == "user" then
         table.insert(pool.users, a)
         pool.tokens[b] = a
      elseif kind == "slot" then
         table.insert(pool.slots, a)
      elseif kind == "path" then
         table.insert(pool.paths, a)
      end
   end
   f:close()
   return pool
end

function seed_random()
   math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919)
end

local function encode(value)
   local t = type(value)
   if t == "table" then
      local parts = {}
      if #value > 0 then
         for _, v in ipairs(value) do table.insert(parts, encode(v)) end
         return "[" .. table.concat(parts, ",") .. "]"
      end
      for k, v in pairs(value) do table.insert(parts, encode(tostring(k)) .. ":" .. encode(v)) end
      return "{" .. table.concat(parts, ",") .. "}"
   elseif t == "string" then
      return '"' .. value:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
   elseif t == "number" then
      return string.format("%.17g", value)
   elseif t == "boolean" then
      return tostring(value)
   end
   return "null"
end

function done(summary, latency, requests)
   local merged, maxima, bodies, seconds = {}, {}, {}, {}
   for _, thread in ipairs(threads) do
      for k, v in pairs(thread:get("timeline") or {}) do
         local key = string.format("%d", k)
         seconds[key] = (seconds[key] or 0) + v
      end
      for k, v in pairs(thread:get("counts") or {}) do merged[k] = (merged[k] or 0) + v end
      for k, v in pairs(thread:get("gauges") or {}) do maxima[k] = math.max(maxima[k] or v, v) end
      for _, s in ipairs(thread:get("samples") or {}) do
         if #bodies < 5 then table.insert(bodies, s) end
      end
   end
   local pct = {}
   for _, p in ipairs({ 50, 75, 90, 95, 99, 99.9 }) do pct[tostring(p)] = latency:percentile(p) end
   local result = {
      duration_us = summary.duration,
      requests = summary.requests,
      bytes = summary.bytes,
      errors = summary.errors,
      latency_us = { min = latency.min, max = latency.max, mean = latency.mean, stdev = latency.stdev,
                     percentiles = pct },
      counts = merged,
      gauges = maxima,
      timeline = seconds,
      started = started_at,
      samples = bodies,
   }
   io.write("BENCH_RESULT " .. encode(result) .. "\n")
end
