"""Find a Hugging Face model, adapter or tokenizer by hub name or local path, offline-safe, and load tokenizers.

A local directory is always loaded with `local_files_only=True`, so it never touches the network. A hub name is
looked up in the local cache first when downloads are switched off (HF_HUB_OFFLINE=1); if it is not there the
error says how to provide it instead of a generic connection failure. `subliminal_pl.models.loading` loads models
through the same route.
"""

from __future__ import annotations

import os
from pathlib import Path


class ModelNotAvailableError(OSError):
    """A model, adapter or tokenizer that is neither a local directory nor reachable/cached on the hub.

    `name_or_path` is the value that was given, so a command line can name the argument that holds it.
    """

    def __init__(self, message: str, name_or_path: str | None = None) -> None:
        super().__init__(message)
        self.name_or_path = name_or_path


_GIVE = (
    "give a directory written by save_pretrained (config, weights, tokenizer) or a hub id such as "
    "Qwen/Qwen2.5-7B-Instruct"
)


def hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or flag.strip().lower() in {"1", "true", "yes", "on"}


def _looks_like_path(name_or_path: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with a separator, or starting like a path, is a path.
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        return True
    return os.sep != "/" and os.sep in name_or_path


def resolve_source(name_or_path: str | Path, what: str = "model") -> tuple[str, bool]:
    """(source, is_local): an existing directory, or a hub id; a missing path-like name is an error now."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path), True
    text = str(name_or_path)
    if path.exists():
        raise ModelNotAvailableError(f"{what} {text!r} is a file, not a model directory: {_GIVE}", text)
    if _looks_like_path(text):
        raise ModelNotAvailableError(f"{what} directory {text!r} does not exist: {_GIVE}", text)
    return text, False


def _not_available(name: str, what: str, err: Exception) -> ModelNotAvailableError:
    from huggingface_hub import constants

    if hub_offline():
        reason = (
            f"it is not a local directory, not in the Hugging Face cache ({constants.HF_HUB_CACHE}), and "
            "downloads are switched off (HF_HUB_OFFLINE=1)"
        )
    else:
        reason = f"it is not a local directory and the hub lookup failed ({type(err).__name__}: {err})"
    return ModelNotAvailableError(
        f"cannot load {what} {name!r}: {reason}. Provide it in one of these ways: "
        f"(1) give a local directory written by save_pretrained (config, weights, tokenizer) instead of the name; "
        f"(2) on a machine with access run `hf download {name}` and point HF_HOME (or HF_HUB_CACHE) at that cache; "
        f"(3) allow downloads: unset HF_HUB_OFFLINE and log in with `hf auth login` for gated models.",
        name,
    )


def from_pretrained(loader, name_or_path: str | Path, what: str, **kwargs):
    source, local = resolve_source(name_or_path, what)
    try:
        return loader(source, local_files_only=local or hub_offline(), **kwargs)
    except OSError as err:
        if local:
            raise ModelNotAvailableError(
                f"cannot load {what} from directory {source!r}: {err}", source
            ) from err
        raise _not_available(source, what, err) from err


def load_tokenizer(name_or_path: str | Path):
    """The tokenizer with its chat template; a missing pad token becomes the EOS token (generation needs one).

    Pad equal to EOS is safe here because training masks labels by the completion, never by the pad id.
    """
    from transformers import AutoTokenizer

    tokenizer = from_pretrained(AutoTokenizer.from_pretrained, name_or_path, "tokenizer")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {str(name_or_path)!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
