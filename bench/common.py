"""What every benchmark records beside its numbers: the machine, the packages, the commit, peak memory."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
SHARED_DATA_ENV = "AUTOPILOT_SHARED_DATA"


def shared_data_dir() -> Path:
    """The shared data folder (``shared/data`` beside the checkout): ``$AUTOPILOT_SHARED_DATA`` when set, else the
    first that exists of ``../shared/data`` (the main checkout) and ``../../shared/data`` (a worktree under
    ``wt/``); the first candidate when none exists, so error messages name the expected place."""
    if os.environ.get(SHARED_DATA_ENV):
        return Path(os.environ[SHARED_DATA_ENV])
    candidates = (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data")
    return next((c for c in candidates if c.is_dir()), candidates[0])


DEFAULT_PACKAGES = ("SpiffWorkflow", "pydantic", "tqdm", "matplotlib", "torch", "transformers", "scikit-learn")


def peak_rss_kib() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def environment(packages: tuple[str, ...] = DEFAULT_PACKAGES) -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit: str | None = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "packages": {d: version(d) for d in packages},
        "git_commit": commit,
    }


def write_results(name: str, result: dict[str, Any], markdown: str, directory: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Write ``<directory>/<name>.json`` and ``.md`` (default ``bench/results``); returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{name}.json"
    md_path = directory / f"{name}.md"
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path
