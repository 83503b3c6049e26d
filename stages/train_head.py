"""train_head stage: sweep the classifier head on the cached features with Keras Tuner, train the best.

Reads:  paths.features/{train,val}.{npy,npz} (the features memory-mapped, streamed in blocks); params
        ``train_head``, ``tune``, ``compute``, ``seed``
Writes: paths.head_model, paths.best_hparams, paths.tuner (the search's trials);
        paths.plots/train_head/{trials,history}.csv; paths.metrics/train_head.json

Distributed tuning (``KERASTUNER_TUNER_ID`` set; see ``pipeline.training.distributed``) runs this
same command in every process. The chief is the stage: it serves the search, then trains the best
head and writes everything above, under its MLflow stage run. A worker only runs trials (each a
child run of the chief's stage run, see ``distributed.run_worker``) and writes nothing but its trial
files in paths.tuner: no stage run, no model, no metrics JSON.
"""

from pipeline.core import config, files, runtime
from pipeline.core.config import Params
from pipeline.core.errors import run_cli
from pipeline.features import extraction
from pipeline.features.extraction import FeatureSet
from pipeline.tracking import runs
from pipeline.training import distributed, tuning


def main() -> None:
    params = config.load()
    role = distributed.configure(params)
    runtime.configure(params.compute)
    if role.kind == "worker":
        trials = distributed.run_worker(*read_features(params), params, role)
        print(f"train_head worker {role.tuner_id}: ran trials {', '.join(trials) or 'none'}")
        return
    with runs.stage_run("train_head", params) as run:
        train, val = read_features(params)
        if role.kind == "chief":
            result = tuning.train_chosen(
                *distributed.serve_search(train, val, params, run, role), train, val, params, run
            )
        else:
            result = tuning.select_head(train, val, params, run)
        best = result.best_epoch()
        files.save_model(result.model, params.path("head_model"))
        files.write_yaml(params.path("best_hparams"), {**result.settings.as_dict(), "epochs": int(best["epoch"])})
        files.write_csv(params.path("plots") / "train_head" / "history.csv", result.history)
        if not result.trials.empty:
            files.write_csv(params.path("plots") / "train_head" / "trials.csv", result.trials)
            run.log_table(result.trials, "trials")
        run.log_params({f"best.{name}": value for name, value in result.settings.as_dict().items()})
        run.log_artifact(params.path("best_hparams"))
        run.log_artifact(params.path("head_model"))
        run.log_metrics(result.summary())
        print(
            f"train_head: {tuning.describe_settings(result.settings.as_dict())}: {params.tune.objective} "
            f"{best[params.tune.objective]:.4f} at epoch {int(best['epoch'])} → {params.paths.head_model}"
        )


def read_features(params: Params) -> tuple[FeatureSet, FeatureSet]:
    """The train and val splits' cached features."""
    folder = params.path("features")
    return extraction.read_feature_set(folder / "train.npz"), extraction.read_feature_set(folder / "val.npz")


if __name__ == "__main__":
    run_cli(main)
