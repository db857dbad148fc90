-- Every benchmark scenario, for wrk. bench/run.py calls:
--   wrk -s bench/wrk/scenarios.lua URL -- SCENARIO POSTS USERS AUTH NONCE [PATHS]
-- SCENARIO: post | posts_page | user_posts | user | create_post | mix | signup | login | paths
-- POSTS, USERS: the seeded id ranges (ids are drawn uniformly from 1..N)
-- AUTH:     "bearer:<token>" (blogapi) or "author:<id>" (baselines: author_id in the body)
-- NONCE:    new for every wrk run; makes sign-up emails unique across runs
-- PATHS:    for `paths`: space-separated GET paths (already URL-encoded), one drawn at random
--           per request (the scale scenarios: a deep page, a rare tag, a title search, ...)
-- done() prints one line, "BENCH_JSON {...}", which the runner parses.

local scenario, max_post, max_user, auth, nonce
local paths = {}
local counter = 0
local threads = {}

function setup(thread)
   thread:set("thread_number", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   scenario, max_post, max_user, auth, nonce = args[1], tonumber(args[2]), tonumber(args[3]), args[4], args[5]
   for path in string.gmatch(args[6] or "", "%S+") do
      table.insert(paths, path)
   end
   math.randomseed(os.time() + 7919 * thread_number)
end

local function get(path)
   return wrk.format("GET", path)
end

local reads = {
   post = function() return get("/api/v1/posts/" .. math.random(max_post)) end,
   posts_page = function() return get("/api/v1/posts?limit=20") end,
   user_posts = function() return get("/api/v1/users/" .. math.random(max_user) .. "/posts") end,
   user = function() return get("/api/v1/users/" .. math.random(max_user)) end,
}
local read_names = { "post", "posts_page", "user_posts", "user" }

local post_body = "A post written by the benchmark. It is about as long as a short seeded paragraph, "
   .. "so that the row, the JSON and the bytes on the wire are of a realistic size."

local function create_post()
   counter = counter + 1
   local headers = { ["Content-Type"] = "application/json" }
   local author = ""
   local kind, value = auth:match("^(%a+):(.*)$")
   if kind == "bearer" then
      headers["Authorization"] = "Bearer " .. value
   else
      author = ', "author_id": ' .. value
   end
   local body = string.format('{"title": "Benchmark post %d", "body": "%s", "tags": ["python", "sql"]%s}',
      counter, post_body, author)
   return wrk.format("POST", "/api/v1/posts", headers, body)
end

local function signup()
   counter = counter + 1
   local body = string.format(
      '{"name": "Bench User", "email": "bench-%s-%d-%d@example.org", "password": "bench-password"}',
      nonce, thread_number, counter)
   return wrk.format("POST", "/api/v1/users", { ["Content-Type"] = "application/json" }, body)
end

local function login()
   local body = string.format("username=user%d%%40example.org&password=seed-password", math.random(max_user))
   return wrk.format("POST", "/api/v1/auth/token",
      { ["Content-Type"] = "application/x-www-form-urlencoded" }, body)
end

function request()
   if reads[scenario] then
      return reads[scenario]()
   elseif scenario == "create_post" then
      return create_post()
   elseif scenario == "mix" then
      -- 90% reads, spread evenly over the four read scenarios; 10% create_post.
      if math.random(10) == 1 then
         return create_post()
      end
      return reads[read_names[math.random(#read_names)]]()
   elseif scenario == "signup" then
      return signup()
   elseif scenario == "login" then
      return login()
   elseif scenario == "paths" and #paths > 0 then
      return get(paths[math.random(#paths)])
   end
   error("unknown scenario " .. tostring(scenario))
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
         .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
