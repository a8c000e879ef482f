"""The one exception type ftlib raises for bad input.

Every message says three things: what was wrong, where, and what to do about it.
"""


class FtlibError(ValueError):
    """Bad input or an impossible request; the message names the fix.

    Example:
        >>> raise FtlibError("r must be a positive whole number, got 0: try r=16")
    """
