"""The reusable network-namespace lab (BIRD router, ExaBGP nodes, client); root only.

Used by the pytest suite (``tests/integration/lab``) and by the demo script.
"""

from .announcer_config import announcer_available, default_config, to_toml
from .bird import BirdPath, BirdProtocol
from .client import ClientLoop, ClientLoopStats, ClientResult
from .lab import EXABGP_BINARIES, REPO_ROOT, FibNexthop, Lab, cleanup_stale, leftovers_of
from .topology import ANYCAST_V4, ANYCAST_V6, NODES, PREFIX_V4, PREFIX_V6
from .waiting import LabError, WaitTimeout, wait_until

__all__ = [
    "ANYCAST_V4",
    "ANYCAST_V6",
    "EXABGP_BINARIES",
    "NODES",
    "PREFIX_V4",
    "PREFIX_V6",
    "REPO_ROOT",
    "BirdPath",
    "BirdProtocol",
    "ClientLoop",
    "ClientLoopStats",
    "ClientResult",
    "FibNexthop",
    "Lab",
    "LabError",
    "WaitTimeout",
    "announcer_available",
    "cleanup_stale",
    "default_config",
    "leftovers_of",
    "to_toml",
    "wait_until",
]
