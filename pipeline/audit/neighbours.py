"""Nearest neighbours by cosine distance over L2-normalised features, found once for the whole audit.

Every split is searched against the train split (near-duplicates of training images, and the outlier
score: how far an image lies from everything the model learnt from), and the held-out splits (val
and test together) against themselves (copies between val and test, and within each).

The search is faiss's exact inner-product search (``IndexFlatIP``: on unit rows, the cosine) while one
search costs at most ``EXACT_BUDGET`` multiply-adds: up to about 8,800 images at 1,280 features
(N² x width). Above that, the candidates come from a PCA projection to ``PROJECTED_DIMS`` dimensions and
are re-scored at full width, so every distance reported is exact; only the candidate list is
approximate, and a copy, close in every direction, stays close in the projection. On a large set that
takes a fraction of the exact search's time and finds almost the same first neighbours (see
docs/benchmarks.md, "Nearest neighbours at scale", also for why faiss rather than scikit-learn).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import faiss
import numpy as np
from sklearn.decomposition import PCA

from pipeline.features import store

EXACT_BUDGET = 1e11  # multiply-adds of one exact search
PROJECTED_DIMS = 128
EXTRA_CANDIDATES = 10  # candidates fetched beyond k from the projection, re-scored exactly
_CHUNK = 1024  # query rows re-scored at a time (bounds memory: rows x candidates x width)


@dataclass(frozen=True)
class Neighbours:
    """For each query row, its nearest index rows, nearest first."""

    indices: np.ndarray  # (queries, k) row numbers in the index set
    distances: np.ndarray  # (queries, k) cosine distances (1 - cosine similarity) at full width


@dataclass(frozen=True)
class Graph:
    """The audit's neighbours: every split against train, and val + test against themselves."""

    to_train: dict[str, Neighbours]  # by split name; train's rows are not their own neighbours
    held_out: Neighbours  # rows of val then test, against the same rows (not themselves)
    held_out_splits: tuple[str, ...]  # the held-out splits in the order their rows are stacked


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (float32); an all-zero row stays zero.

    Memory-mapped features are read a block of rows at a time (``store.iter_blocks``), so only the
    result is held, not the file's pages as well.
    """
    out = np.empty(features.shape, dtype=np.float32)
    start = 0
    for block in store.iter_blocks(features):
        values = np.asarray(block, dtype=np.float32)
        norms = np.linalg.norm(values, axis=1, keepdims=True)
        out[start : start + len(values)] = values / np.where(norms > 0, norms, 1)
        start += len(values)
    return out


def nearest(queries: np.ndarray, index: np.ndarray, k: int, own: np.ndarray | None = None, seed: int = 0) -> Neighbours:
    """The ``k`` nearest rows of ``index`` to each row of ``queries`` by cosine distance.

    Args:
        queries: unit rows (``unit_rows``).
        index: unit rows searched.
        k: neighbours per query (fewer when the index is smaller).
        own: per query, the index row that is the query itself (never its own neighbour), or -1.
        seed: the PCA's seed when the search is projected.

    Returns:
        Indices and exact full-width distances, nearest first.
    """
    same = own is not None and bool((own >= 0).any())
    k = min(k, len(index) - (1 if same else 0))
    if k < 1 or len(queries) == 0:
        empty = np.zeros((len(queries), 0))
        return Neighbours(empty.astype(np.int64), empty.astype(np.float32))
    wanted = k + (1 if same else 0)
    width = index.shape[1]
    if len(queries) * len(index) * width <= EXACT_BUDGET or width <= PROJECTED_DIMS:
        search_queries, search_index, fetch = queries, index, wanted
    else:
        pca = PCA(PROJECTED_DIMS, svd_solver="randomized", random_state=seed).fit(index)
        search_queries, search_index = unit_rows(pca.transform(queries)), unit_rows(pca.transform(index))
        fetch = min(len(index), wanted + EXTRA_CANDIDATES)
    finder = faiss.IndexFlatIP(search_index.shape[1])
    finder.add(np.ascontiguousarray(search_index, dtype=np.float32))
    _, found = finder.search(np.ascontiguousarray(search_queries, dtype=np.float32), fetch)
    candidates = found.astype(np.int64)
    distances = np.empty(candidates.shape, dtype=np.float32)
    for start in range(0, len(queries), _CHUNK):
        rows = slice(start, start + _CHUNK)
        similar = np.einsum("nd,nkd->nk", queries[rows], index[candidates[rows]])
        distances[rows] = np.clip(1 - similar, 0, 2)
    if same and own is not None:
        distances[candidates == own[:, None]] = np.inf
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return Neighbours(np.take_along_axis(candidates, order, 1), np.take_along_axis(distances, order, 1))


def build_graph(features: Mapping[str, np.ndarray], k: int, seed: int = 0) -> Graph:
    """The neighbours the audit needs, from each split's features (``train`` required).

    Args:
        features: raw features by split name (``train``, ``val``, ``test``).
        k: neighbours per row.
        seed: for a projected search.
    """
    units = {name: unit_rows(values) for name, values in features.items()}
    names = list(units)
    own = np.concatenate([np.arange(len(units[n])) if n == "train" else np.full(len(units[n]), -1) for n in names])
    together = nearest(np.concatenate([units[n] for n in names]), units["train"], k, own, seed)  # one projection
    bounds = np.cumsum([0, *(len(units[n]) for n in names)])
    to_train = {
        n: Neighbours(together.indices[a:b], together.distances[a:b])
        for n, a, b in zip(names, bounds[:-1], bounds[1:], strict=True)
    }
    held = tuple(n for n in names if n != "train")
    stacked = np.concatenate([units[n] for n in held]) if held else np.zeros((0, units["train"].shape[1]), np.float32)
    return Graph(to_train, nearest(stacked, stacked, k, np.arange(len(stacked)), seed), held)
