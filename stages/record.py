"""record stage: the pipeline's result as one MLflow run, the stage runs that made it nested under it.

Reads:  params.yaml (every value); paths.metrics/<stage>.json of every other stage (its numbers and run id);
        paths.report, paths.plots/evaluate/*.png, paths.plots/analyze/*.csv (logged as artifacts)
Writes: an MLflow run tagged ``stage = pipeline`` (pipeline/tracking/pipeline_run.py); the tag ``pipeline.run_id``
        on the model version evaluate registered; the UI's saved view of the pipeline runs
        (pipeline/tracking/views.py); paths.metrics/record.json (the run's id, stages run and reused)
"""

from pipeline.core import config
from pipeline.core.errors import run_cli
from pipeline.tracking import pipeline_run, views


def main() -> None:
    params = config.load()
    result = pipeline_run.record_result(params)
    views.publish_pipeline_view(result.tracking_uri, result.experiment_id, (result.run_id, result.params))
    print(f"record: {pipeline_run.describe_result(result)}")


if __name__ == "__main__":
    run_cli(main)
