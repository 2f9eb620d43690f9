"""Mask stores: PNG store round trip and atomicity, HDF5 pack, reference .h5 import."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import h5py
import numpy as np
import pytest

from locloc.errors import DataError
from locloc.masks.store import HDF5Store, MaskStore, import_reference_h5, open_store, pack_hdf5, reference_binarize


def _samples(tmp_path: Path, sizes=((30, 40), (25, 25), (50, 20))):
    out = []
    for i, (h, w) in enumerate(sizes):
        rel = f"{i:03d}.Cls/img_{i}.jpg"
        p = tmp_path / "images" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), np.full((h, w, 3), 100 + i, np.uint8))
        out.append(SimpleNamespace(path=p, relpath=rel, boxes=np.zeros((0, 4)), mask_path=None))
    return out


def _rand_mask(h, w, seed):
    return (np.random.default_rng(seed).random((h, w)) > 0.5).astype(np.uint8)


def test_png_store_round_trip_and_layout(tmp_path):
    store = MaskStore(tmp_path / "masks")
    m = _rand_mask(30, 40, 0)
    p = store.write("001.Bird/a b.jpg", m * 7)  # any nonzero value is foreground
    assert p == tmp_path / "masks" / "001.Bird" / "a b.png"
    raw = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint8 and set(np.unique(raw)) <= {0, 255}
    assert np.array_equal(store.read("001.Bird/a b.jpg"), m)
    assert store.has("001.Bird/a b.jpg") and store.has("001.Bird/a b.png")
    assert not store.has("001.Bird/other.jpg")
    assert list(store) == ["001.Bird/a b.png"] and len(store) == 1
    assert not list(p.parent.glob("*.tmp*")) and not list(p.parent.glob(".*"))


def test_png_store_errors(tmp_path):
    store = MaskStore(tmp_path)
    with pytest.raises(DataError, match="no mask"):
        store.read("x/y.jpg")
    with pytest.raises(DataError, match="relative"):
        store.path("../escape.jpg")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode"):
        store.read("bad.jpg")


def test_failed_write_leaves_old_mask_and_no_temp(tmp_path, monkeypatch):
    store = MaskStore(tmp_path)
    old = _rand_mask(10, 10, 1)
    store.write("a.jpg", old)
    monkeypatch.setattr(cv2, "imwrite", lambda *a, **k: False)
    with pytest.raises(OSError):
        store.write("a.jpg", 1 - old)
    monkeypatch.undo()
    assert np.array_equal(store.read("a.jpg"), old)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.png"]


def test_clean_temp_removes_leftovers_only(tmp_path):
    store = MaskStore(tmp_path)
    store.write("c/a.jpg", _rand_mask(5, 5, 0))
    (tmp_path / "c" / ".a.abc123.tmp.png").write_bytes(b"partial")
    assert list(store) == ["c/a.png"]  # hidden temp files are not masks
    assert store.clean_temp() == 1
    assert sorted(x.name for x in (tmp_path / "c").iterdir()) == ["a.png"]


def test_hdf5_pack_and_read(tmp_path):
    samples = _samples(tmp_path)
    store = MaskStore(tmp_path / "masks")
    masks = [_rand_mask(*s, i) for i, s in enumerate(((30, 40), (25, 25), (50, 20)))]
    for s, m in zip(samples, masks):
        store.write(s.relpath, m)
    out = pack_hdf5(store, samples, tmp_path / "masks.h5", chunk=256)
    with h5py.File(out) as f:
        assert f["masks"].compression == "gzip" and f["masks"].chunks == (256,)
        assert f["offsets"][-1] == sum(m.size for m in masks)
    with HDF5Store(out) as h:
        assert len(h) == 3 and list(h) == [s.relpath for s in samples]
        for s, m in zip(samples, masks):
            assert h.has(s.relpath)
            assert np.array_equal(h.read(s.relpath), m)
        with pytest.raises(DataError):
            h.read("nope.jpg")
    assert isinstance(open_store(out), HDF5Store)
    assert not list(tmp_path.glob(".*tmp*"))


def test_hdf5_pack_refuses_incomplete_store(tmp_path):
    samples = _samples(tmp_path)
    store = MaskStore(tmp_path / "masks")
    store.write(samples[0].relpath, _rand_mask(30, 40, 0))
    with pytest.raises(DataError, match="2 of 3 masks missing"):
        pack_hdf5(store, samples, tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()


def test_hdf5_store_rejects_other_files(tmp_path):
    with h5py.File(tmp_path / "ref.h5", "w") as f:
        f["dataset"] = np.zeros((2, 4, 4))
    with pytest.raises(DataError, match="--import-h5"):
        HDF5Store(tmp_path / "ref.h5")


def test_reference_binarize():
    m = np.array([[0, 10], [12, 255]], np.uint8)  # (10-0)/255 = 0.039, 12/255 = 0.047
    assert reference_binarize(m).tolist() == [[0, 0], [0, 1]]
    m = np.array([[0.0, 0.06], [0.04, 1.0]])
    assert reference_binarize(m).tolist() == [[0, 1], [0, 1]]
    assert reference_binarize(np.ones((2, 2))).all()


@pytest.mark.parametrize("scale,extra_dim", [(1.0, False), (255.0, True)])
def test_import_reference_h5(tmp_path, scale, extra_dim):
    samples = _samples(tmp_path)
    ref = np.zeros((3, 16, 16), np.float32)
    ref[:, 4:12, 2:8] = 1.0
    ref[1] *= 0.5  # not reaching 1: min-max normalisation restores it
    data = ref * scale
    if extra_dim:
        data = data[:, None]
    with h5py.File(tmp_path / "train.h5", "w") as f:
        f["dataset"] = data.astype(np.uint8 if scale > 1 else np.float32)
    store = MaskStore(tmp_path / "masks")
    assert import_reference_h5(tmp_path / "train.h5", samples, store) == 3
    for s, (h, w) in zip(samples, ((30, 40), (25, 25), (50, 20))):
        m = store.read(s.relpath)
        assert m.shape == (h, w)
        expect = cv2.resize((ref[0] > 0).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(m, expect)


def test_import_reference_h5_count_mismatch(tmp_path):
    samples = _samples(tmp_path)
    with h5py.File(tmp_path / "test.h5", "w") as f:
        f["dataset"] = np.zeros((5, 8, 8), np.float32)
    store = MaskStore(tmp_path / "masks")
    with pytest.raises(DataError, match=r"test\.h5: holds 5 masks but the split has 3 images"):
        import_reference_h5(tmp_path / "test.h5", samples, store)
    with pytest.raises(DataError, match=r"no 'masks' array \(found: dataset\)"):
        import_reference_h5(tmp_path / "test.h5", samples, store, key="masks")
    assert len(store) == 0
