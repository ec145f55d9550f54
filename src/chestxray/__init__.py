"""chestxray: Infected-vs-Normal chest X-ray classification by two-stage transfer learning.

A research tool, not a diagnostic device.
"""

__version__ = "0.1.0"
