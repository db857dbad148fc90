-- Paced GETs, for the hammering clients of the scale runs. bench/run.py calls:
--   wrk -s bench/wrk/paced.lua URL -- paths POSTS USERS AUTH NONCE PATHS PAUSE_MS
-- PATHS:    space-separated GET paths (already URL-encoded), one drawn at random per request
-- PAUSE_MS: each connection waits this long after a response before its next request, so a
--           client sends at most 1000 / PAUSE_MS requests a second: cheap lists leave the
--           server nearly idle, and only a list that costs far more than a page can hurt.
-- (A separate script: wrk calls delay() for every request of a script that defines it.)
-- done() prints one line, "BENCH_JSON {...}", as scenarios.lua does.

local paths = {}
local pause = 0
local threads = {}

function setup(thread)
   thread:set("thread_number", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   for path in string.gmatch(args[6] or "", "%S+") do
      table.insert(paths, path)
   end
   pause = tonumber(args[7]) or 0
   math.randomseed(os.time() + 7919 * thread_number)
end

function request()
   return wrk.format("GET", paths[math.random(#paths)])
end

function delay()
   return pause
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
