"""Lineage: the material graph (seed lot → plants → collection → lots → …) and its traversal.

Edges always point downstream and name their ends by resource name. A trace is one recursive
SQL query over the edge indexes (bounded by depth and node count), one query for the edges
among the nodes found, and one for the lots among them: a constant number of round trips
whatever the graph's size.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Text, any_, bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY

from seedline_server.domain.quantity import Quantity
from seedline_server.service.uow import UnitOfWork
from seedline_server.store import models


class Op(enum.Enum):
    """Values match ``seedline.inventory.v1.LineageOperation``."""

    PLANTING = 1
    COLLECTION = 2
    SPLIT = 3
    CONVERSION = 4
    TRANSFER = 5
    SAMPLE = 6


class Kind(enum.Enum):
    """Values match ``seedline.inventory.v1.LineageNodeKind``; keyed by the name's collection."""

    LOT = 1
    PLANT = 2
    COLLECTION = 3
    TRANSFER = 4
    SAMPLE = 5


_KINDS = {
    "lots": Kind.LOT,
    "plants": Kind.PLANT,
    "collections": Kind.COLLECTION,
    "transfers": Kind.TRANSFER,
    "samples": Kind.SAMPLE,
}


def kind_of(name: str) -> Kind:
    """The node kind of a resource name ``licenses/{l}/{collection}/{id}``."""
    return _KINDS[name.split("/")[2]]


def link(uow: UnitOfWork, source: str, target: str, op: Op, t: datetime, qty: Quantity | None = None) -> None:
    """Record that material flowed from ``source`` to ``target`` (in the caller's transaction)."""
    uow.session.add(
        models.LineageEdge(
            source=source,
            target=target,
            operation=op.value,
            quantity=qty.amount if qty is not None else None,
            unit=qty.unit.value if qty is not None else 0,
            time=t,
        )
    )


@dataclass(frozen=True)
class Node:
    """A node reached by a trace, at its shortest distance from the start."""

    name: str
    depth: int

    @property
    def kind(self) -> Kind:
        """What the node is."""
        return kind_of(self.name)


@dataclass(frozen=True)
class Trace:
    """A bounded lineage subgraph."""

    nodes: list[Node]
    edges: list[models.LineageEdge]
    truncated: bool


# UNION (not UNION ALL) drops a (node, depth) pair already produced, so diamonds in the graph do
# not multiply rows; the outer query keeps each node at its smallest depth.
_WALK = """
WITH RECURSIVE walk(node, depth) AS (
    SELECT CAST(:start AS text), 0
  UNION
    SELECT e.{next}, w.depth + 1
    FROM walk w JOIN lineage_edges e ON e.{this} = w.node
    WHERE w.depth < :max_depth
)
SELECT node, min(depth) AS depth FROM walk GROUP BY node ORDER BY 2, 1 LIMIT :limit
"""
_FORWARD = text(_WALK.format(this="source", next="target"))
_BACKWARD = text(_WALK.format(this="target", next="source"))


def _names(values: list[str]) -> Any:
    """One array parameter (``= ANY($1)``) instead of one bind parameter per name."""
    return bindparam(None, values, type_=ARRAY(Text))


async def trace(uow: UnitOfWork, start: str, forward: bool, max_depth: int, max_nodes: int) -> Trace:
    """Walk downstream (``forward``) or upstream from ``start``, breadth-first, within the bounds."""
    rows = (
        await uow.session.execute(
            _FORWARD if forward else _BACKWARD,
            {"start": start, "max_depth": max_depth, "limit": max_nodes + 1},
        )
    ).all()
    truncated = len(rows) > max_nodes
    nodes = [Node(r.node, r.depth) for r in rows[:max_nodes]]
    names = _names([n.name for n in nodes])
    this, other = (models.LineageEdge.source, models.LineageEdge.target)
    if not forward:
        this, other = other, this
    edges = list(
        (
            await uow.session.scalars(
                select(models.LineageEdge)
                .where(this == any_(names), other == any_(names))
                .order_by(models.LineageEdge.seq)
            )
        ).all()
    )
    if not truncated:
        frontier = [n.name for n in nodes if n.depth == max_depth]
        if frontier:
            more = await uow.session.scalar(select(this).where(this == any_(_names(frontier))).limit(1))
            truncated = more is not None
    return Trace(nodes, edges, truncated)
