"""Clicking a glimpse box in napari selects its subtree and shows only the subtree's Q maps."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from test_glimpse_tree import drive, mosaics, one_thread, tiny_model  # noqa: F401  (fixtures)


def test_click_selects_subtree(make_napari_viewer, mosaics, tiny_model):  # noqa: F811
    from napari_glimpse import coords
    from napari_glimpse._napari.glimpse_select import attach_glimpse_select
    from napari_glimpse.layers import result_to_layers
    from napari_glimpse.methods import infer

    _, made = mosaics
    result = drive(infer("glimpse-tree", str(made[0].path), model=tiny_model, leaves=8, seed=1))
    viewer = make_napari_viewer()
    for data, kwargs, kind in result_to_layers(result):
        viewer._add_layer_from_data(data, kwargs, kind)
    attach_glimpse_select(viewer)
    attach_glimpse_select(viewer)  # idempotent
    assert sum(1 for cb in viewer.mouse_drag_callbacks if getattr(cb, "_glimpse_select_callback", False)) == 1
    on_click = viewer.mouse_drag_callbacks[-1]
    # Q maps cover their whole parent glimpse: they arrive hidden until a glimpse is picked
    q_maps = [layer for layer in viewer.layers if layer.metadata.get("glimpse_role") == "q_map"]
    assert q_maps and not any(layer.visible for layer in q_maps)

    tree = result.summary["tree"]
    level1 = [n for n in tree if n["level"] == 1]
    # click inside the first level-1 glimpse but outside all of its leaves' boxes, if possible;
    # else its centre picks a leaf (the smallest box): check whichever was picked
    target = level1[0]
    x0, y0, x1, y1 = target["box"]
    leaves = [n for n in tree if n["parent"] == target["id"]]
    grid = [(x0 + (x1 - x0) * fx, y0 + (y1 - y0) * fy) for fx in np.linspace(0.02, 0.98, 13)
            for fy in np.linspace(0.02, 0.98, 13)]
    free = [p for p in grid if not any(b["box"][0] <= p[0] <= b["box"][2] and b["box"][1] <= p[1] <= b["box"][3]
                                       for b in tree if b["level"] == 2)]
    assert free, "a level-1 glimpse is 4x its leaves: some of it is not under a leaf"
    world = coords.points_to_world(np.array([free[0]]), result.mpp)[0]
    on_click(viewer, SimpleNamespace(type="mouse_press", position=tuple(world)))

    boxes = {layer.metadata["level"]: layer for layer in viewer.layers
             if layer.metadata.get("glimpse_role") == "boxes"}
    ids = lambda layer: {int(layer.features["node_id"][i]) for i in layer.selected_data}  # noqa: E731
    assert ids(boxes[1]) == {target["id"]}
    assert ids(boxes[2]) == {n["id"] for n in leaves}
    assert ids(boxes[0]) == set()
    q_layers = [layer for layer in viewer.layers if layer.metadata.get("glimpse_role") == "q_map"]
    assert {layer.metadata["node_id"]: layer.visible for layer in q_layers} == {
        n["id"]: n["id"] == target["id"] for n in tree if n["level"] < 2}
    # a click on empty glass outside the root hides the Q maps again, as they were added
    far = coords.points_to_world(np.array([[-1000.0, -1000.0]]), result.mpp)[0]
    on_click(viewer, SimpleNamespace(type="mouse_press", position=tuple(far)))
    assert not any(layer.visible for layer in q_layers) and not boxes[2].selected_data
