"""Click a glimpse box -> select its subtree: its descendants' boxes and edges, and only their Q maps.

:func:`attach_glimpse_select` hooks one callback on the viewer (it sees every click, whichever
layer is active). A click picks the smallest visible glimpse box under the cursor among the
layers of glimpse-tree results (``metadata["glimpse_tree"]``, set by
:func:`napari_glimpse.methods.glimpse_tree.tree_result.tree_layers`); a click outside every
glimpse shows all Q maps again and clears the selection. The tree logic itself is the
Qt-free :func:`~napari_glimpse.methods.glimpse_tree.tree_result.subtree`.
"""

from __future__ import annotations

import numpy as np

from ..methods.glimpse_tree.tree_result import GLIMPSE_KEY, subtree

__all__ = ["attach_glimpse_select", "select_subtree", "pick_glimpse", "clear_selection"]

_ATTACHED = "_glimpse_select_callback"


def _result_layers(viewer, result_id: str | None = None):
    for layer in viewer.layers:
        rid = (layer.metadata or {}).get(GLIMPSE_KEY)
        if rid is not None and (result_id is None or rid == result_id):
            yield layer


def pick_glimpse(viewer, world_point) -> tuple[str, int] | None:
    """(result id, node id) of the smallest visible glimpse box containing ``world_point`` (row, col)."""
    r, c = float(world_point[-2]), float(world_point[-1])
    best, best_area = None, np.inf
    for layer in _result_layers(viewer):
        md = layer.metadata
        if md.get("glimpse_role") != "boxes" or not layer.visible or "node_id" not in layer.features:
            continue
        ids = np.asarray(layer.features["node_id"])
        for i, verts in enumerate(layer.data):
            world = np.asarray(verts)[:, -2:] * np.asarray(layer.scale)[-2:] + np.asarray(layer.translate)[-2:]
            r0, c0 = world.min(0)
            r1, c1 = world.max(0)
            area = (r1 - r0) * (c1 - c0)
            if r0 <= r <= r1 and c0 <= c <= c1 and area < best_area:
                best, best_area = (md[GLIMPSE_KEY], int(ids[i])), area
    return best


def select_subtree(viewer, result_id: str, node_id: int) -> list[int]:
    """Select ``node_id``'s subtree in the layers of one result; show only the subtree's Q maps."""
    layers = list(_result_layers(viewer, result_id))
    table = {}
    for layer in layers:
        if layer.metadata.get("glimpse_role") != "boxes":
            continue
        feats = layer.features
        if "node_id" in feats and "parent_id" in feats:
            table.update(zip(map(int, feats["node_id"]), map(int, feats["parent_id"]), strict=True))
    ids = set(subtree(table, node_id))
    for layer in layers:
        role = layer.metadata.get("glimpse_role")
        if role in ("boxes", "edges") and "node_id" in getattr(layer, "features", {}):
            layer.selected_data = {i for i, n in enumerate(layer.features["node_id"]) if int(n) in ids}
        elif role == "q_map":
            layer.visible = int(layer.metadata.get("node_id", -1)) in ids
    return sorted(ids)


def clear_selection(viewer, result_id: str | None = None) -> None:
    """Deselect all glimpses and hide the Q maps again (as they are added)."""
    for layer in _result_layers(viewer, result_id):
        role = layer.metadata.get("glimpse_role")
        if role in ("boxes", "edges"):
            layer.selected_data = set()
        elif role == "q_map":
            layer.visible = False


def attach_glimpse_select(viewer) -> None:
    """Install the click-to-select-subtree callback on ``viewer`` (once; safe to call again)."""
    if any(getattr(cb, _ATTACHED, False) for cb in viewer.mouse_drag_callbacks):
        return

    def on_click(viewer_, event):
        if event.type != "mouse_press" or not any(True for _ in _result_layers(viewer)):
            return
        hit = pick_glimpse(viewer, event.position)
        if hit is None:
            clear_selection(viewer)
        else:
            select_subtree(viewer, *hit)

    setattr(on_click, _ATTACHED, True)
    viewer.mouse_drag_callbacks.append(on_click)
