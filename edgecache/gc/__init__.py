"""Keeping the store within its disk while it serves: garbage collection and eviction.

The graph work (mark, sweep) lives in store/collect.py, next to the data it changes; this
package decides when to run it and what to evict, and keeps each run's record.
"""

from .service import Housekeeper

__all__ = ["Housekeeper"]
