-- wrk script: POST /v1/images/generations with a fixed body; prints responses by status
-- class and latency percentiles. Usage (32 connections for 60 s):
--   wrk -t 4 -c 32 -d 60s --timeout 120s -s tools/loadtest/generate.lua http://127.0.0.1:8080
wrk.method = "POST"
wrk.path = "/v1/images/generations"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"prompt": "a red circle above a blue square", "size": "256x256", "seed": 1}'

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok, busy, client, server = 0, 0, 0, 0
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  elseif status == 429 then
    busy = busy + 1
  elseif status >= 500 then
    server = server + 1
  else
    client = client + 1
  end
end

function done(summary, latency, requests)
  local t = { ok = 0, busy = 0, client = 0, server = 0 }
  for _, th in ipairs(threads) do
    for k, _ in pairs(t) do
      t[k] = t[k] + th:get(k)
    end
  end
  io.write(string.format("responses: 200 %d, 429 %d, other 4xx %d, 5xx %d; socket errors %d\n",
    t.ok, t.busy, t.client, t.server,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
  io.write(string.format("requests/s %.2f (200s/s %.2f); latency p50 %.1f ms, p99 %.1f ms\n",
    summary.requests / (summary.duration / 1e6), t.ok / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
