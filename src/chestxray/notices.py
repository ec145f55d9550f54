"""What the package says about itself wherever it writes a result: its version and its notices."""

VERSION = "0.1.0"
RESEARCH_NOTE = "Research tool, not a diagnostic device."
SYNTHETIC_NOTE = "SYNTHETIC phantom data: not chest X-rays; figures say nothing about clinical performance"
