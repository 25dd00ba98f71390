"""State dicts on disk without pickle: the tensors in a safetensors file, everything else in JSON.

    save_tree(folder / "optimizer", optimizer.state_dict())   # optimizer.safetensors + optimizer.json
    optimizer.load_state_dict(load_tree(folder / "optimizer"))

A tree is made of dicts (any int / str / float / bool keys), lists, tuples, tensors, numpy arrays,
numbers, strings, bools and None: what optimizer, scheduler, RNG, LoRA and EMA states are. Reading
one back runs no code: safetensors holds raw tensor bytes, JSON plain values, and the tree's types
(tuple, int keys, numpy) are rebuilt from tags this module writes. Anything else is refused when
saving, so a state that cannot be stored this way fails at the first checkpoint, not at resume.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

_TAG = "__state_files__"  # marks an encoded node: {"__state_files__": kind, "value": ...}


def save_tree(stem: str | Path, tree: Any) -> list[Path]:
    """Write stem.json (and stem.safetensors when the tree holds tensors); returns the files."""
    stem = Path(stem)
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(tree, tensors, path="")
    files = [stem.with_suffix(".json")]
    files[0].write_text(json.dumps(encoded))
    if tensors:
        save_file(tensors, str(stem.with_suffix(".safetensors")))
        files.append(stem.with_suffix(".safetensors"))
    return files


def load_tree(stem: str | Path) -> Any:
    stem = Path(stem)
    tensor_file = stem.with_suffix(".safetensors")
    tensors = load_file(str(tensor_file)) if tensor_file.is_file() else {}
    return _decode(json.loads(stem.with_suffix(".json").read_text()), tensors, stem)


def _encode(node: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(node, torch.Tensor):
        name = f"t{len(tensors)}"
        # safetensors stores dense, contiguous, CPU tensors; the key in the JSON says where it goes
        tensors[name] = node.detach().cpu().contiguous().clone()
        return {_TAG: "tensor", "value": name}
    if isinstance(node, np.ndarray):
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(np.ascontiguousarray(node)).clone()
        return {_TAG: "ndarray", "value": name}
    if isinstance(node, np.generic):
        return _encode(node.item(), tensors, path)
    if isinstance(node, dict):
        where = f"{path}." if path else ""
        items = [[_encode(k, tensors, f"{where}<key>"), _encode(v, tensors, f"{where}{k}")] for k, v in node.items()]
        return {_TAG: "dict", "value": items}
    if isinstance(node, (list, tuple)):
        values = [_encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(node)]
        return {_TAG: "tuple", "value": values} if isinstance(node, tuple) else values
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise TypeError(f"state_files: cannot store {type(node).__name__} at '{path or '<root>'}' without pickle")


def _decode(node: Any, tensors: dict[str, torch.Tensor], stem: Path) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors, stem) for v in node]
    if not isinstance(node, dict):
        return node
    kind, value = node.get(_TAG), node.get("value")
    if kind in ("tensor", "ndarray"):
        if value not in tensors:
            raise ValueError(f"{stem}.json names tensor {value!r}, missing from {stem}.safetensors")
        return tensors[value] if kind == "tensor" else tensors[value].numpy()
    if kind == "dict":
        return {_decode(k, tensors, stem): _decode(v, tensors, stem) for k, v in value}
    if kind == "tuple":
        return tuple(_decode(v, tensors, stem) for v in value)
    raise ValueError(f"{stem}.json: unknown node {node!r}")
