"""tritonpy.frontends.http: the KServe v2 / Triton HTTP endpoint on aiohttp.

`make_http_app(server)` builds the aiohttp application; `start_http(server, host, port)` serves it
and returns the runner. Import them from `tritonpy.frontends.http.app`.
"""
