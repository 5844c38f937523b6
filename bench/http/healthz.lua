-- wrk script: GET /healthz; prints latency percentiles at the end.
done = function(summary, latency, requests)
  io.write(string.format("p50_ms=%.3f p99_ms=%.3f requests=%d rps=%.0f\n", latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.requests, summary.requests / (summary.duration / 1e6)))
end
