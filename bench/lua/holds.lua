-- Hold churn and hot slot: each request either follows up a hold this thread won (confirm or
-- release it; cancel a booking it confirmed) or picks a random user and a random slot from the
-- pool and tries POST /holds. BENCH_CONFIRM is the share of won holds that are confirmed
-- (the rest are released); confirmed bookings are cancelled next, so slots keep cycling.
-- Responses are classified by body, since wrk does not say which request a response answers.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local pool, queue, head, tail
local confirm_share = tonumber(os.getenv("BENCH_CONFIRM") or "0.5")
local json = { ["Content-Type"] = "application/json" }

function init(args)
   seed_random()
   pool = read_pool()
   queue, head, tail = {}, 1, 0
end

local function push(path, token)
   tail = tail + 1
   queue[tail] = { path, token }
end

function request()
   if head <= tail then
      local job = queue[head]
      queue[head] = nil
      head = head + 1
      return wrk.format("POST", job[1], { Authorization = "Bearer " .. job[2] }, "")
   end
   local token = pool.users[math.random(#pool.users)]
   local slot = pool.slots[math.random(#pool.slots)]
   return wrk.format("POST", "/holds",
      { Authorization = "Bearer " .. token, ["Content-Type"] = json["Content-Type"] },
      '{"slot_id":"' .. slot .. '"}')
end

function response(status, headers, body)
   tick()
   if status == 201 then
      local hold_id = body:match('"hold_id":"([^"]+)"')
      local token = pool.tokens[body:match('"user_id":"([^"]+)"') or ""]
      if hold_id and token then
         count("hold_201")
         if math.random() < confirm_share then
            push("/holds/" .. hold_id .. "/confirm", token)
         else
            push("/holds/" .. hold_id .. "/release", token)
         end
      else
         count("unparsed_201")
         sample(status, body)
      end
   elseif status == 200 then
      local state = body:match('"status":"(%u+)"')
      if state == "CONFIRMED" then
         count("confirm_200")
         local hold_id = body:match('"hold_id":"([^"]+)"')
         local token = pool.tokens[body:match('"user_id":"([^"]+)"') or ""]
         if hold_id and token then push("/holds/" .. hold_id .. "/cancel", token) end
      elseif state == "RELEASED" then
         count("release_200")
      elseif state == "CANCELLED" then
         count("cancel_200")
      else
         count("other_200")
         sample(status, body)
      end
   elseif status == 409 then
      count("hold_409")
   else
      count_status(status, body)
   end
end
