"""Target kinds: the one registry that maps a target, as written and as validated, to its kind.

A kind (`base.TargetKind`) is one class that supplies what is particular to its targets; its module
also holds its config model. Adding a kind is its module and one line in `KINDS` below; nothing else
asks which kind a target is.
"""

from __future__ import annotations

from typing import Any

from loadtest.model.kinds.base import ExtraRow, HeldConnections, Load, TargetKind
from loadtest.model.kinds.flow import FlowKind, FlowStepKind, FlowStepRow, FlowTarget, FlowTargetModel
from loadtest.model.kinds.http import HttpClosed, HttpOpen, HttpTarget, HttpTargetModel
from loadtest.model.kinds.tcp import Tcp, TcpTarget, TcpTargetModel
from loadtest.model.kinds.ws import Ws, WsTarget, WsTargetModel

# In this order extra stats.csv rows are grouped: tcp's and ws's CONNECT rows, then the open model's LATENESS and
# UNCORRECTED rows.
KINDS: tuple[TargetKind, ...] = (Tcp(), Ws(), HttpClosed(), HttpOpen(), FlowKind(), FlowStepKind())
# In this order a target as written is offered to the kinds' config models (each model claims its own): a flow
# first, since a Python flow's base url would look like an HTTP target's.
MODELS: tuple[type[Any], ...] = (FlowTargetModel, HttpTargetModel, TcpTargetModel, WsTargetModel)
_BY_NAME = {k.name: k for k in KINDS}
Target = HttpTarget | TcpTarget | WsTarget | FlowTarget | FlowStepRow  # a validated target of any kind (or a flow's step row)


def kind_of(target: Any) -> TargetKind:
    """The kind of a validated target (an HttpTarget, a TcpTarget, ...)."""
    return _BY_NAME[target.kind]


def model_for(data: Any) -> str | None:
    """The name of the config model that a target as written belongs to (the model's class name), or None."""
    if not isinstance(data, dict):
        return None
    for model in MODELS:
        if model.claims(data):
            return model.__name__
    return None


def needs() -> str:
    """What a target as written needs to be any kind: "url (or urls) for an HTTP target, or tcp for ..."."""
    parts = [m.needs for m in MODELS]
    return ", or ".join(parts) if len(parts) < 3 else ", ".join(parts[:-1]) + ", or " + parts[-1]


__all__ = ["KINDS", "MODELS", "ExtraRow", "FlowTarget", "HeldConnections", "HttpTarget", "HttpTargetModel", "Load", "TargetKind",
           "Target", "TcpTarget", "TcpTargetModel", "WsTarget", "WsTargetModel", "kind_of", "model_for", "needs"]
