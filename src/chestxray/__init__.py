"""chestxray: Infected-vs-Normal chest X-ray classification by two-stage transfer learning.

A research tool, not a diagnostic device.
"""

__version__ = "0.1.0"

RESEARCH_NOTE = "Research tool, not a diagnostic device."
SYNTHETIC_NOTE = "SYNTHETIC phantom data: not chest X-rays; figures say nothing about clinical performance"
