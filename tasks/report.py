"""Report task: report.json/report.md and the figures, published as Prefect artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from motfm_core.evaluation.figures import inline_figures
from motfm_core.evaluation.report import gain_rows, publish_report

__all__ = ["report_task"]

@task(name="report")
def report_task(run_name: str, config: dict, data_path: str, checkpoint: str, synthetic_path: str,
                evaluation_path: str, run_dir: str, enhancement_paths: list[str] | None = None) -> str:
    """Write the report files and publish them as markdown (figures inline: the UI cannot reach the run folder)
    and table artifacts; returns report.md's path."""
    report, files = publish_report(run_name, config, data_path, checkpoint, synthetic_path, evaluation_path, run_dir,
                                   enhancement_paths)
    markdown = Path(files["markdown"])
    create_markdown_artifact(markdown=inline_figures(markdown.read_text(), markdown.parent),
                             key="synth-and-eval-report", description=f"motfm report {run_name}")
    create_table_artifact(table=gain_rows(report), key="augmentation-gain",
                          description="test-set metrics, mean ± std over seeds")
    get_run_logger().info("report: %s", files["markdown"])
    return files["markdown"]
