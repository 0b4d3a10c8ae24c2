"""Version folders: `<out_root>/<name>/<version>/`, written whole or not at all, never overwritten."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from striate.errors import StriateError

TMP_PREFIX = ".tmp-"  # half-written versions start with a dot: the service skips them


def existing_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(out_root: str | os.PathLike, name: str) -> int:
    """One more than the highest version already there (1 for a new model)."""
    versions = existing_versions(Path(out_root) / name)
    return (versions[-1] + 1) if versions else 1


def check_free(out_root: str | os.PathLike, name: str, version: int) -> Path:
    """The version's folder, or a StriateError if it already exists."""
    if version < 1:
        raise StriateError(f"version must be a positive integer, got {version}")
    dest = Path(out_root) / name / str(version)
    if dest.exists():
        raise StriateError(
            f"{dest} already exists; versions are never overwritten (omit --version to write "
            f"version {next_version(out_root, name)})"
        )
    return dest


@contextmanager
def staging(out_root: str | os.PathLike, name: str, version: int) -> Iterator[Path]:
    """Yield a temporary folder next to the version's; on success rename it into place.

    On any error the temporary folder is removed and nothing appears under the version's name, nor
    the model's folder if this call made it.
    """
    dest = check_free(out_root, name, version)
    new_model = not dest.parent.exists()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f"{TMP_PREFIX}{version}-"))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; a service running as another user must read it
    try:
        yield tmp
        check_free(out_root, name, version)  # someone may have written it meanwhile
        os.rename(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if new_model and not dest.exists():
            with suppress(OSError):  # not empty: another writer's version landed meanwhile
                dest.parent.rmdir()


def write_version(out_root: str | os.PathLike, name: str, version: int, write: Callable[[Path], None]) -> Path:
    with staging(out_root, name, version) as tmp:
        write(tmp)
    return Path(out_root) / name / str(version)
