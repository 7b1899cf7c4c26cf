"""The in-process cache of principle scores, coherent without any invalidation.

It leans on two write-side guarantees: a rubric version's principles never change once saved, and
a principle score is insert-if-absent by (node, principle, rubric version), so it never changes
either. A cached value can therefore never become wrong; what could go wrong is caching an
*absence* (a score written later would then never be seen). So the cache only ever holds complete
answers: a node's scores for a rubric version once it has one for every principle of that
version, and a version's principle list once it is non-empty. Keys carry the project, rubric and
version, so a new rubric version misses by construction.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

from cachetools import LRUCache

from pipeline.settings import Settings

RubricKey = tuple[str, str, int]
"""(project_id, rubric_id, rubric_version)."""

ScoresKey = tuple[str, str, int, str]
"""(project_id, rubric_id, rubric_version, node_id)."""


class PrincipleScoreCache:
    """A bounded LRU of complete per-node principle scores, plus the principle names per version.

    ``maxsize`` counts scores (one node with five principles weighs five), matching
    ``Settings.principle_cache_size``; 0 disables score caching. ``hits`` and ``misses`` count
    node look-ups. Share one instance per process: repositories are cheap, the cache is not.
    """

    def __init__(self, maxsize: int = 100_000, *, rubric_versions: int = 1024) -> None:
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
        self._scores: LRUCache[ScoresKey, dict[str, float]] = LRUCache(maxsize, getsizeof=len)
        self._principles: LRUCache[RubricKey, frozenset[str]] = LRUCache(rubric_versions)
        # cachetools caches are not thread-safe, and a repository may be used from several
        # threads (each with its own event loop) sharing this process-wide cache.
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> PrincipleScoreCache:
        """A cache sized by ``settings.principle_cache_size``."""
        return cls(settings.principle_cache_size)

    def __len__(self) -> int:
        """How many nodes' score sets are cached."""
        return len(self._scores)

    def principle_names(self, key: RubricKey) -> frozenset[str] | None:
        """The principle names of a rubric version, if cached."""
        with self._lock:
            return self._principles.get(key)

    def store_principle_names(self, key: RubricKey, names: frozenset[str]) -> None:
        """Remember a rubric version's principle names; an empty set is never cached."""
        if not names:
            return
        with self._lock:
            self._principles[key] = names

    def scores(self, key: ScoresKey) -> dict[str, float] | None:
        """A copy of a node's complete scores for a rubric version, or None (counted a miss)."""
        with self._lock:
            found = self._scores.get(key)
            if found is None:
                self.misses += 1
                return None
            self.hits += 1
            return dict(found)

    def lookup(
        self, rubric: RubricKey, node_ids: Iterable[str]
    ) -> tuple[dict[str, dict[str, float]], list[str]]:
        """The cached scores of some nodes for a rubric version, and the nodes that missed."""
        found: dict[str, dict[str, float]] = {}
        missing: list[str] = []
        for node_id in node_ids:
            scores = self.scores((*rubric, node_id))
            if scores is None:
                missing.append(node_id)
            else:
                found[node_id] = scores
        return found, missing

    def store_scores(
        self, key: ScoresKey, scores: Mapping[str, float], principles: frozenset[str]
    ) -> bool:
        """Cache a node's scores if they cover every principle of the version; True if cached."""
        if not principles or scores.keys() != principles:
            return False
        with self._lock:
            if len(scores) > self._scores.maxsize:
                return False
            self._scores[key] = dict(scores)
        return True

    def clear(self) -> None:
        """Forget everything and reset the counters."""
        with self._lock:
            self._scores.clear()
            self._principles.clear()
            self.hits = 0
            self.misses = 0
