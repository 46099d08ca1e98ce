"""Where everything of one run lives: ``<storage_url>/<run_id>/``::

    manifest.json   the run record (sqz.runs.manifest): kind, config, architecture, source
    train/          Ray Train storage (checkpoints; resumable)
    models/         baseline.safetensors, <trial>.sqz
    metrics/<table>/*.parquet
    report/report.md, report/pareto.png
    errors/<trial>.txt   the full traceback of a sweep trial that failed
"""

from __future__ import annotations

from dataclasses import dataclass

from sqz import storage

__all__ = ["RunLayout"]


@dataclass(frozen=True)
class RunLayout:
    run_url: str

    @classmethod
    def for_config(cls, config, run_id: str | None = None) -> "RunLayout":
        """The layout of a `sqz run` pipeline config (its run id derived unless given)."""
        from sqz.runs.manifest import pipeline_run_id

        return cls(storage.join(storage.absolute(config.storage_url), run_id or pipeline_run_id(config)))

    @classmethod
    def under(cls, storage_url: str, run_id: str) -> "RunLayout":
        return cls(storage.join(storage.absolute(storage_url), run_id))

    @property
    def run_id(self) -> str:
        return self.run_url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def manifest_url(self) -> str:
        return storage.join(self.run_url, "manifest.json")

    @property
    def train_url(self) -> str:
        return storage.join(self.run_url, "train")

    @property
    def baseline_url(self) -> str:
        return storage.join(self.run_url, "models", "baseline.safetensors")

    def model_url(self, name: str) -> str:
        return storage.join(self.run_url, "models", f"{name}.sqz")

    def error_url(self, trial_id: str) -> str:
        """The full traceback of sweep trial ``trial_id``'s last failure (its first line: the error)."""
        return storage.join(self.run_url, "errors", f"{trial_id}.txt")

    @property
    def report_url(self) -> str:
        return storage.join(self.run_url, "report", "report.md")
