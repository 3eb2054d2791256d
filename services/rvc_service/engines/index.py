"""Feature retrieval from an RVC faiss index (the `added_IVF..._Flat_..._v2.index` files the WebUI trains)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.typing import NDArray

from .params import ModelLoadError, public_reason

TOP_K = 8


class RetrievalIndex:
    """A faiss index plus its vectors, reconstructed once at load so a query never touches the file again."""

    def __init__(self, index: Any, vectors: npt.ArrayLike, path: Path | None = None) -> None:
        self.index = index  # a faiss.Index (faiss is untyped)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.path = path

    @classmethod
    def load(cls, path: str | Path) -> RetrievalIndex:
        import faiss

        p = Path(path)
        try:
            index = faiss.read_index(str(p))
            vectors = index.reconstruct_n(0, index.ntotal)
        except Exception as exc:
            raise ModelLoadError(f"index {p.name!r} does not load ({public_reason(exc)})") from exc
        if index.ntotal == 0:
            raise ModelLoadError(f"index {p.name} is empty")
        return cls(index, vectors, p)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def memory_bytes(self) -> int:
        return 2 * self.vectors.nbytes  # the reconstructed copy plus the index's own storage

    def retrieve(self, feats: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        """For each row, the inverse-square-distance weighted mean of its k nearest stored vectors."""
        q = np.ascontiguousarray(feats, dtype=np.float32)
        k = min(TOP_K, len(self.vectors))
        dist, ids = self.index.search(q, k)  # squared L2 distances
        valid = ids >= 0  # IVF with nprobe=1 can return fewer than k hits
        ids = np.where(valid, ids, 0)
        w = np.where(valid, 1.0 / np.square(np.maximum(dist, 1e-12)), 0.0)
        w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-30)
        retrieved: NDArray[np.float32] = np.einsum("nk,nkd->nd", w, self.vectors[ids]).astype(np.float32)
        return retrieved

    def blend(self, feats: NDArray[np.float32], rate: float) -> NDArray[np.float32]:
        """rate 0 keeps the features; rate 1 replaces them by the retrieved ones."""
        if rate <= 0:
            return feats
        return (rate * self.retrieve(feats) + (1 - rate) * feats).astype(np.float32)
