"""Rebuild the golden reference-layout checkpoints by the deterministic rule of
``tests/data/golden/README`` ("Deterministic weights") and check them against ``manifest.json``.

Not a test module: imported by the golden tests. State dicts are cached per process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import zlib
from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).parent / "data" / "golden"
FILES = ("backbone", "classifier", "generator_unet", "generator_deconv")


@functools.cache
def manifest() -> dict:
    return json.loads((GOLDEN / "manifest.json").read_text())["files"]


def _value(seed_key: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if dtype.startswith("int"):
        return np.zeros(shape, dtype=dtype)
    z = np.random.default_rng(zlib.crc32(seed_key.encode())).standard_normal(shape)
    leaf = seed_key.rsplit(".", 1)[-1]
    if leaf == "running_var":
        v = 1 + 0.1 * np.abs(z)
    elif leaf == "running_mean":
        v = 0.1 * z
    elif leaf == "weight" and len(shape) == 1:
        v = 1 + 0.1 * z
    elif leaf == "bias":
        v = 0.02 * z
    elif seed_key in ("cls_token", "pos_embed"):
        v = 0.02 * z
    else:
        v = z / math.sqrt(math.prod(shape[1:]))
    return v.astype(np.float32)


@functools.cache
def _arrays(name: str) -> dict[str, np.ndarray]:
    entry = manifest()[name]
    prefix = entry["key_prefix_in_file"]
    out = {}
    for key, shape, dtype in entry["entries"]:
        seed_key = key[len(prefix):] if prefix and key.startswith(prefix) else key
        out[key] = _value(seed_key, tuple(shape), dtype)
    return out


def state_dict(name: str) -> dict[str, torch.Tensor]:
    """The golden state dict ``name`` (one of FILES), keys exactly as in the reference file."""
    return {k: torch.from_numpy(v.copy()) for k, v in _arrays(name).items()}


def wrapped(name: str) -> dict[str, dict[str, torch.Tensor]]:
    """The object the reference file holds: ``{wrapper_key: state_dict}``."""
    return {manifest()[name]["wrapper_key"]: state_dict(name)}


def check_against_manifest(name: str) -> list[str]:
    """Compare the rebuilt arrays with the manifest; return a list of problems (empty if none)."""
    entry = manifest()[name]
    arrays = _arrays(name)
    problems = []
    listed = [e[0] for e in entry["entries"]]
    if list(arrays) != listed:
        problems.append("key order differs")
    h = hashlib.sha256()
    for key, shape, dtype in entry["entries"]:
        a = arrays[key]
        if list(a.shape) != shape or str(a.dtype) != dtype:
            problems.append(f"{key}: {a.shape} {a.dtype} != {shape} {dtype}")
        h.update(np.ascontiguousarray(a).tobytes())
    if h.hexdigest() != entry["sha256_of_concatenated_tensor_bytes_in_listed_order"]:
        problems.append("sha256 of concatenated bytes differs")
    prefix = entry["key_prefix_in_file"]
    for seed_key, total, first in entry["value_checks_[key,float64_sum,first_two_values]"]:
        key = prefix + seed_key if prefix and not seed_key.startswith(prefix) else seed_key
        a = arrays.get(key)
        if a is None:
            problems.append(f"value check for unknown key {seed_key}")
            continue
        if not math.isclose(float(a.astype(np.float64).sum()), total, rel_tol=1e-9, abs_tol=1e-9):
            problems.append(f"{key}: sum differs")
        if [float(x) for x in a.reshape(-1)[: len(first)]] != first:
            problems.append(f"{key}: first values differ")
    return problems


def write_reference_files(directory: Path) -> dict[str, Path]:
    """Write the 4 golden checkpoints (reference wrappers, ``torch.save``) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in FILES:
        p = directory / manifest()[name]["file_name_used_by_harness"]
        torch.save(wrapped(name), p)
        paths[name] = p
    return paths


@functools.cache
def expected() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "expected.npz") as z:
        return {k: z[k] for k in z.files}
