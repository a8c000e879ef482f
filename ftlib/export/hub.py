"""The Hugging Face Hub: upload a folder that `save` wrote.

    >>> push_to_hub("my-adapter", "your-name/my-adapter")  # doctest: +SKIP
"""

import getpass
import os
import re
from pathlib import Path

from ftlib.errors import FtlibError


def resolve_token(token=None):
    """The Hub token: the argument, else HF_TOKEN, else a saved login, else a hidden prompt.

    Example:
        >>> token = resolve_token()  # doctest: +SKIP
    """
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    try:
        from huggingface_hub import get_token

        saved = get_token()
    except Exception:  # no saved login
        saved = None
    if saved:
        return saved
    typed = getpass.getpass("Hugging Face token with write access (hidden): ").strip()
    if not typed:
        raise FtlibError("no Hugging Face token: pass token=..., set HF_TOKEN, or run `hf auth login` "
                         "(create one at https://huggingface.co/settings/tokens, 'write' access)")
    return typed


def check_repo_id(repo_id):
    """Raise FtlibError unless `repo_id` looks like 'owner/name'.

    Example:
        >>> check_repo_id("your-name/my-adapter")
    """
    if not isinstance(repo_id, str) or not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise FtlibError(f"repo_id must look like 'your-name/model-name', got {repo_id!r}")


def _saved_files(folder):
    """The relative names ftlib_files.json lists (and itself), or None (everything) for a folder without it."""
    import json

    try:
        listed = json.loads((folder / "ftlib_files.json").read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return sorted(listed) + ["ftlib_files.json"] if isinstance(listed, dict) else None


def push_to_hub(folder, repo_id, *, token=None, private=True, commit_message="Upload with ftlib", files=None):
    """Upload a folder that `save` wrote to a Hub repository (created when missing); returns its URL.

    Only the files `save` wrote there are uploaded (those its ftlib_files.json lists, or `files`, relative
    names), so a file of your own in the folder stays private. The token is used for the upload only:
    never printed, logged or written into any file.

    Example:
        >>> push_to_hub("my-adapter", "your-name/my-adapter")  # doctest: +SKIP
        'https://huggingface.co/your-name/my-adapter'
    """
    check_repo_id(repo_id)
    if not isinstance(folder, (str, os.PathLike)):
        raise FtlibError(f"push_to_hub needs the folder that save wrote, got {type(folder).__name__}: "
                         "push_to_hub('my-adapter', 'your-name/my-adapter')")
    folder = Path(folder)
    if not folder.is_dir():
        raise FtlibError(f"nothing to push: {folder} is not a folder; save the model there first")
    secret = resolve_token(token)
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id=repo_id, token=secret, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, token=secret, commit_message=commit_message,
                          allow_patterns=files if files is not None else _saved_files(folder))
    except Exception as error:
        message = str(error).replace(secret, "***")  # errors may echo request headers
        raise FtlibError(
            f"pushing {folder} to {repo_id} failed ({type(error).__name__}: {message[:500]}): check the network, "
            "that the token has 'write' access (https://huggingface.co/settings/tokens) and that you may "
            f"write to '{repo_id.split('/')[0]}'"
        ) from None  # keep the original error (and any token in it) out of the traceback
    return f"https://huggingface.co/{repo_id}"
