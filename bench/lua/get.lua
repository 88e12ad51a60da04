-- Listing and ceiling: GET one of the pool's paths, as one of the pool's users when there are
-- any (a bearer token makes GET /slots user-aware), and count the answers.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local pool

function init(args)
   seed_random()
   pool = read_pool()
end

function request()
   local path = pool.paths[math.random(#pool.paths)]
   if #pool.users == 0 then
      return wrk.format("GET", path)
   end
   local token = pool.users[math.random(#pool.users)]
   return wrk.format("GET", path, { Authorization = "Bearer " .. token })
end

function response(status, headers, body)
   tick()
   if status == 200 then
      count("ok_200")
      if not gauges.items then
         -- Items in the first page this thread saw: shows the listing returned what it should.
         local _, n = body:gsub('"room_id":', "")
         gauges.items = n
      end
   else
      count_status(status, body)
   end
end
