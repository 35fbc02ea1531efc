"""Resolve files from a local folder or a Hugging Face Hub repository.

Local folders are read directly. Anything else is treated as a repo id and
resolved through ``huggingface_hub`` (which honours ``HF_HUB_OFFLINE`` and its
cache), so a pre-filled cache works with no network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bestiary.errors import HubError


@dataclass(frozen=True)
class HubOptions:
    """Where and how to look for files of one checkpoint."""

    revision: str | None = None
    cache_dir: str | os.PathLike | None = None
    local_files_only: bool = False
    token: str | bool | None = None
    subfolder: str = ""

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> "HubOptions":
        """Pop the hub-related keyword arguments out of ``kwargs``."""
        return cls(
            revision=kwargs.pop("revision", None),
            cache_dir=kwargs.pop("cache_dir", None),
            local_files_only=kwargs.pop("local_files_only", False),
            token=kwargs.pop("token", None),
            subfolder=kwargs.pop("subfolder", "") or "",
        )


def is_local(path_or_repo: str | os.PathLike) -> bool:
    """Return True when ``path_or_repo`` names an existing local folder or file."""
    return Path(path_or_repo).expanduser().exists()


def _offline(options: HubOptions) -> bool:
    if options.local_files_only:
        return True
    return os.environ.get("HF_HUB_OFFLINE", "0").upper() in {"1", "ON", "YES", "TRUE"}


def resolve_file(
    path_or_repo: str | os.PathLike,
    filename: str,
    options: HubOptions | None = None,
    *,
    required: bool = True,
) -> Path | None:
    """Return the local path of ``filename`` inside a folder or hub repository.

    Returns None when the file does not exist and ``required`` is False;
    raises :class:`HubError` naming the file and the place looked in otherwise.
    """
    options = options or HubOptions()
    local = Path(path_or_repo).expanduser()
    if local.is_file() and not options.subfolder:
        # A direct file path: only the file itself can be asked for.
        if local.name == filename:
            return local
        local = local.parent
    if local.is_dir():
        candidate = local / options.subfolder / filename
        if candidate.is_file():
            return candidate
        if required:
            raise HubError(f"{filename} not found in the folder {local / options.subfolder}.")
        return None
    return _resolve_from_hub(str(path_or_repo), filename, options, required)


def _resolve_from_hub(repo_id: str, filename: str, options: HubOptions, required: bool) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _offline(options)
    try:
        path = hf_hub_download(
            repo_id,
            filename,
            subfolder=options.subfolder or None,
            revision=options.revision,
            cache_dir=options.cache_dir,
            local_files_only=offline,
            token=options.token,
        )
    except HFValidationError as exc:
        raise HubError(
            f"{repo_id!r} is neither an existing local folder nor a valid hub repo id ({exc}). "
            "Pass the path of a folder holding config.json, or a repo id like 'org/name'."
        ) from exc
    except RepositoryNotFoundError as exc:
        raise HubError(f"Repository {repo_id!r} was not found on the hub (or needs a token).") from exc
    except RevisionNotFoundError as exc:
        raise HubError(f"Revision {options.revision!r} does not exist in {repo_id!r}.") from exc
    except (EntryNotFoundError, LocalEntryNotFoundError) as exc:
        if not required and (not offline or _repo_cached(repo_id, options)):
            return None
        if offline:
            raise HubError(
                f"{filename} of {repo_id!r} is not in the local cache and hub access is off "
                "(HF_HUB_OFFLINE=1 or local_files_only=True). Download it while online, "
                "or pass the path of a local folder."
            ) from exc
        raise HubError(f"{filename} not found in hub repository {repo_id!r}.") from exc
    except OSError as exc:  # network failures surface as OSError subclasses
        raise HubError(f"Could not fetch {filename} from {repo_id!r}: {exc}") from exc
    return Path(path)


def _repo_cached(repo_id: str, options: HubOptions) -> bool:
    """True when some snapshot of ``repo_id`` is in the cache (so a missing file is really absent)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=options.cache_dir, revision=options.revision)
    return isinstance(found, str)
