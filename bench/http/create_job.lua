-- wrk script: POST /v1/jobs with a tiny generate job, and latency percentiles at the end.
-- Each request gets its own seed so jobs are distinct (no Idempotency-Key).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
request = function()
  counter = counter + 1
  local body = string.format(
    '{"kind":"generate","model":"sd1-tiny","params":{"prompt":"a red cube","steps":1,"width":32,"height":32,"seed":%d}}',
    counter)
  return wrk.format(nil, "/v1/jobs", nil, body)
end

local statuses = {}
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  io.write(string.format("p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f requests=%d errors_non2xx=%d\n",
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, summary.requests, summary.errors.status))
end
