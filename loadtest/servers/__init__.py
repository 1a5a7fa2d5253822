"""Embedded servers a run starts on this machine: an HTTP "sites" server and a TCP echo server.

Importing this package imports no gevent: the server code runs only in the
server processes, which patch gevent first (see `group.py`).
"""

from loadtest.servers.group import ServerError, ServerGroup, serve_foreground

__all__ = ["ServerError", "ServerGroup", "serve_foreground"]
