"""User flows: virtual users that run several requests in order, as YAML steps or as a Python function.

- `template`: ``${...}`` placeholders, compiled once, filled per request.
- `extract`: captures (``json:``, ``header:``, ``regex:``) and checks (``expect``), and what of a response they need.
- `data`: the CSV data file, dealt a row per pass from each worker's own slice.
- `steps`: a YAML flow's steps, validated.
- `source`: a Python flow's file, imported and read for its rows in the controller.
- `spec`: what a flow target runs (`FlowSpec`) and its stats rows: a flow's own, then one per step.
- `runner`: in a worker, a virtual user's pass through its steps, and what it records.
- `script`: in a worker, Python flows: the `user` a function is given.
- `target`: in a worker, the factory of a flow target's virtual users.

The controller imports only `template`, `extract`, `data`, `steps`, `source`
and `spec` (no gevent); the target kind (`loadtest.model.kinds.flow`) wires them in.

The HTTP underneath is `loadtest.engine.protocols.http_flow`.
"""
