-- wrk script: POST /orders with a small valid order.
--   wrk -t2 -c64 -d10s -s bench/http/post.lua --latency http://127.0.0.1:8080/orders
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"user_id":"user-42","product_ids":["sku-1","sku-2","sku-3"]}'

local counts = {}

response = function(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

done = function(summary, latency, requests)
  io.write(string.format("p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
end
