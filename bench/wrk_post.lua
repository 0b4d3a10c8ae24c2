-- wrk script for bench/service_bench.py: POST the file named by WRK_BODY as WRK_TYPE to the URL.
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("WRK_TYPE") or "image/jpeg"
local file = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.body = file:read("*all")
file:close()
