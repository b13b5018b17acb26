"""``output.push_to_hub``: the student folder, its model card included, uploaded to the hub once the
run has finished. Checked before anything is written (a network allowed, a token found); an upload
that fails afterwards leaves the finished run as it is and says how to upload it by hand."""

from __future__ import annotations

import os
from pathlib import Path

from distill.errors import DistillError, RunFailed

OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}


def check_ready(repo_id: str) -> None:
    """Refuse in one line, before the run, an upload that cannot happen."""
    if not repo_id:
        return
    from huggingface_hub import get_token

    if os.environ.get("HF_HUB_OFFLINE", "").upper() in OFFLINE_VALUES:
        raise DistillError(
            "output.push_to_hub: HF_HUB_OFFLINE is set, so the student cannot be uploaded; unset it, or "
            f"leave output.push_to_hub empty and upload the folder later (hf upload {repo_id} FOLDER)"
        )
    if get_token() is None:
        raise DistillError(
            "output.push_to_hub: no Hugging Face token found; log in (hf auth login) or set HF_TOKEN"
        )


def push(folder: Path, repo_id: str) -> str:
    """Create ``repo_id`` (if new) and upload ``folder``; returns the repo's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), commit_message="Upload a student distilled by distill"
        )
    except Exception as e:
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise RunFailed(
            f"the run finished and is saved in {folder.parent}, but uploading {folder} to the hub as {repo_id} "
            f"failed: {reason}; upload it later with: hf upload {repo_id} {folder}"
        ) from None
    return str(url)
