"""The project's own errors: bad data, bad weights, bad checkpoints, bad options.

The command line turns these into one line and exit status 2. Anything else is a bug in chestxray.
They subclass ValueError so that callers catching ValueError keep working.
"""


class ChestXrayError(ValueError):
    """An error in what the user gave (a file, an option, a dataset), with a message that names it."""


class ConfigError(ChestXrayError):
    """An option or a config file with a value that is not allowed."""
