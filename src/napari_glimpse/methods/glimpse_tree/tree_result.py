"""Glimpse trees -> plain result dataclasses (level-0 coordinates), and subtree selection.

Layers made from a result carry the tree in their features / metadata: every box has
``node_id``, ``parent_id``, ``level``; every Q map ``node_id`` and ``level``; every edge the
child's ``node_id`` and its ``parent_id``. :func:`subtree` works on any of these forms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ...results import InferenceResult, SlideBoxes, SlideLines, SlideMap

__all__ = ["tree_layers", "all_map", "subtree", "parent_table", "LEVEL_COLOURS", "score_colours"]

LEVEL_COLOURS = ("#ffffff", "#00e5ff", "#ffd400", "#ff7f0e", "#9467bd")
GLIMPSE_KEY = "glimpse_tree"  # metadata key shared by every layer of one result


def score_colours(scores: np.ndarray) -> np.ndarray:
    """RGBA per leaf: blue (0) through magenta to red (1)."""
    s = np.clip(np.nan_to_num(np.asarray(scores, float), nan=0.0), 0, 1)
    return np.stack([0.2 + 0.8 * s, 0.2 * (1 - s), 1.0 - s, np.ones_like(s)], 1)


def tree_layers(nodes: Sequence, levels: int, result_id: str, show_q: bool = True
                ) -> tuple[list[SlideBoxes], list[SlideLines], list[SlideMap]]:
    """Boxes per level, parent -> child edges and each inner glimpse's Q map inside it."""
    meta = {GLIMPSE_KEY: result_id}
    boxes, maps = [], []
    for level in range(levels + 1):
        at = [n for n in nodes if n.level == level]
        if not at:
            continue
        props = {
            "node_id": np.array([n.node_id for n in at], np.int64),
            "parent_id": np.array([n.parent_id for n in at], np.int64),
            "level": np.full(len(at), level, np.int64),
            "region": np.array([n.region for n in at], np.int64),
            "score": np.array([n.score for n in at], float),
            "kq": np.array([n.kq for n in at], float),
        }
        leaf = level == levels
        boxes.append(SlideBoxes(
            name=f"glimpses L{level}" + (" (leaves)" if leaf else ""),
            boxes=np.array([n.box for n in at], float).reshape(-1, 4),
            properties=props,
            edge_color=score_colours(props["score"]) if leaf else LEVEL_COLOURS[level % len(LEVEL_COLOURS)],
            edge_width_px=max(2.0, (at[0].box[2] - at[0].box[0]) / 120),
            text="score" if leaf else None,
            metadata={**meta, "glimpse_role": "boxes", "level": level},
        ))
    by_id = {n.node_id: n for n in nodes}
    edges = [n for n in nodes if n.parent_id >= 0]
    lines = [SlideLines(
        name="glimpse edges",
        segments=np.array([[by_id[n.parent_id].centre, n.centre] for n in edges], float).reshape(-1, 2, 2),
        properties={"node_id": np.array([n.node_id for n in edges], np.int64),
                    "parent_id": np.array([n.parent_id for n in edges], np.int64),
                    "level": np.array([n.level for n in edges], np.int64)},
        edge_color="white",
        edge_width_px=max(2.0, (nodes[0].box[2] - nodes[0].box[0]) / 800) if nodes else 4.0,
        metadata={**meta, "glimpse_role": "edges"},
    )] if edges else []
    if show_q:
        for n in nodes:
            if n.q_map is None:
                continue
            size = n.q_map.shape[0]
            maps.append(SlideMap(
                name=f"Q L{n.level} glimpse {n.node_id}",
                data=n.q_map,
                cell_size=(n.box[2] - n.box[0]) / size,
                origin=(n.box[0], n.box[1]),
                colormap="viridis",
                contrast_limits=(0.0, 1.0),
                opacity=0.45,
                metadata={**meta, "glimpse_role": "q_map", "node_id": n.node_id, "level": n.level},
                visible=False,  # each covers its whole parent: shown when a glimpse is picked
            ))
    return boxes, lines, maps


def all_map(scores: np.ndarray, origin: tuple[float, float], tile_px: float, result_id: str) -> SlideMap:
    """The 'All' baseline's tile probabilities as one map (NaN where no tissue was classified)."""
    return SlideMap(name="All: leaf-tile probability", data=scores.astype(np.float32), cell_size=tile_px,
                    origin=origin, colormap="inferno", contrast_limits=(0.0, 1.0), opacity=0.6,
                    metadata={GLIMPSE_KEY: result_id, "glimpse_role": "all_map"})


def parent_table(source) -> dict[int, int]:
    """node id -> parent id from a result, a summary's ``tree`` list, node objects or a mapping."""
    if isinstance(source, InferenceResult):
        tree = source.summary.get("tree")
        if tree is not None:
            return parent_table(tree)
        table: dict[int, int] = {}
        for b in source.boxes:
            if "node_id" in b.properties and "parent_id" in b.properties:
                table.update(zip(map(int, b.properties["node_id"]), map(int, b.properties["parent_id"]), strict=True))
        return table
    if isinstance(source, Mapping):
        if "node_id" in source and "parent_id" in source:  # layer features / box properties
            return dict(zip(map(int, source["node_id"]), map(int, source["parent_id"]), strict=True))
        return {int(k): int(v) for k, v in source.items()}
    table = {}
    for n in source:
        if isinstance(n, Mapping):
            table[int(n["id"])] = int(n["parent"])
        else:
            table[int(n.node_id)] = int(n.parent_id)
    return table


def subtree(result_or_tree, node_id: int) -> list[int]:
    """Ids of ``node_id`` and all its descendants, breadth first.

    Parameters
    ----------
    result_or_tree
        An :class:`InferenceResult` of glimpse-tree, its ``summary["tree"]`` (list of dicts with
        ``id`` and ``parent``), a list of nodes, box properties / layer features with
        ``node_id`` and ``parent_id`` columns, or a ``{node: parent}`` mapping.
    node_id
        The subtree's root.

    Raises
    ------
    KeyError
        When ``node_id`` is not in the tree.
    """
    table = parent_table(result_or_tree)
    node_id = int(node_id)
    if node_id not in table:
        raise KeyError(f"glimpse {node_id} is not in this tree")
    children: dict[int, list[int]] = {}
    for child, parent in table.items():
        children.setdefault(parent, []).append(child)
    out, queue = [], [node_id]
    while queue:
        n = queue.pop(0)
        out.append(n)
        queue.extend(sorted(children.get(n, [])))
    return out

