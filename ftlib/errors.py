"""The exceptions ftlib raises for bad input, one family: catch FtlibError to catch them all.

Every message says three things: what was wrong, where (the argument, row or file), and what to do.
Where a caller would catch a built-in type (a missing file, a folder it may not write), the error is
also that type, so `except FileNotFoundError` and `except PermissionError` keep working. An error
raised by a dependency comes back as one of these, with the original chained as its cause.

    FtlibError                 bad input or an impossible request (a ValueError)
    FtlibFileNotFoundError     a file or folder that should be there is not (also a FileNotFoundError)
    FtlibPermissionError       a folder or file ftlib may not write or read (also a PermissionError)
    FtlibOSError               the operating system refused a write, e.g. a full disk (also an OSError)
    FtlibOutOfMemoryError      out of GPU memory while training, with fixes for the run (also torch's
                               OutOfMemoryError; defined in ftlib/training/safety.py, which needs torch)
"""


class FtlibError(ValueError):
    """Bad input or an impossible request; the message names the fix.

    Example:
        >>> raise FtlibError("r must be a positive whole number, got 0: try r=16")
    """


class FtlibFileNotFoundError(FtlibError, FileNotFoundError):
    """A file or folder that the call needs is missing; the message names it and what to pass instead.

    Example:
        >>> raise FtlibFileNotFoundError("no folder at ./my-adapter: check the path")
    """


class FtlibPermissionError(FtlibError, PermissionError):
    """ftlib may not write (or read) a file or folder; the message names it and where to write instead.

    Example:
        >>> raise FtlibPermissionError("cannot write to /data/out: pass output_dir= a folder you own")
    """


class FtlibOSError(FtlibError, OSError):
    """The operating system refused to read or write (a full disk, say); the message names the file and the fix.

    Example:
        >>> raise FtlibOSError("saving to my-adapter failed (No space left on device): free space, save again")
    """
