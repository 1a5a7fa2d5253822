"""User flows: virtual users that run several requests in order, as YAML steps or as a Python function.

- `template`: ``${...}`` placeholders, compiled once, filled per request.
- `extract`: captures (``json:``, ``header:``, ``regex:``) and checks (``expect``), and what of a response they need.
- `data`: the CSV data file, dealt a row per pass from each worker's own slice.
- `steps`: a YAML flow's steps, validated.
- `runner`: a virtual user's pass through its steps, and the rows it records (a flow's own and one per step).
- `script`: Python flows: the `user` a function is given, and the rows read from the script's source.
- `target`: a flow target as validated, its stats rows, and its session factory in a worker.

The HTTP underneath is `loadtest.protocols.http_flow`.
"""
