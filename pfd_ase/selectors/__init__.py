"""Frame selection: QUESTS entropy selection, random baseline, frame filters.

``quests`` holds the descriptors and (differential) entropies; :class:`EntropySelector`
implements the PFD supplement's Algorithm 1 and :class:`RandomSelector` the random baseline;
``plot`` draws entropy against the number of selected frames (Fig. S1).
"""

from pfd_ase.selectors import quests
from pfd_ase.selectors.entropy_selector import EntropySelector
from pfd_ase.selectors.random_selector import RandomSelector

__all__ = ["EntropySelector", "RandomSelector", "quests"]
