"""Frame selection: QUESTS entropy selection, random baseline, frame filters.

``quests`` holds the descriptors and (differential) entropies; :class:`EntropySelector`
implements the PFD supplement's Algorithm 1 and :class:`RandomSelector` the random baseline;
``filters`` rejects unphysical frames (too-close atoms, exploded cells, non-finite labels);
``plot`` draws entropy against the number of selected frames (Fig. S1); ``bank`` stores a
training set's descriptors (:class:`DescriptorBank`) for dH of new atoms against it.
"""

from pfd_ase.selectors import quests
from pfd_ase.selectors.bank import DescriptorBank
from pfd_ase.selectors.entropy_selector import EntropySelector
from pfd_ase.selectors.filters import FilterResult, FrameFilter, filter_frames
from pfd_ase.selectors.random_selector import RandomSelector

__all__ = [
    "DescriptorBank",
    "EntropySelector",
    "FilterResult",
    "FrameFilter",
    "RandomSelector",
    "filter_frames",
    "quests",
]
