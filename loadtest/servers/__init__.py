"""The embedded servers' own code: an HTTP "sites" server and a TCP echo server.

It runs only in the server processes, which are started patched by `loadtest.execution.servers`
(the parent side: `ServerGroup`, `serve_foreground`); nothing here is imported by the controller
but the counts' layout (`counts`) and the route names.
"""
