"""Deterministic simulation of aurora's storage protocol (FoundationDB / TigerBeetle VOPR style).

``python -m aurora.sim --seeds N [--seed S] [--swarm] [--bug NAME]``; docs/simulation.md says
what is simulated, what is the project's real code, the faults, the invariants checked, the
planted bugs and how to replay a seed.
"""
from aurora.sim.bugs import BUGS, active_bug
from aurora.sim.world import Violation, World, run_seed

__all__ = ["BUGS", "Violation", "World", "active_bug", "run_seed"]
