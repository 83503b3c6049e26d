"""train_head stage: sweep the classifier head on the cached features with Keras Tuner, train the best.

Reads:  paths.features/{train,val}.npz; params ``train_head``, ``tune``, ``compute``, ``seed``
Writes: paths.head_model, paths.best_hparams, paths.tuner (the search's trials);
        paths.plots/train_head/{trials,history}.csv; paths.metrics/train_head.json
"""

from pipeline import config, features, files, runtime, tracking, tuning
from pipeline.errors import run_cli


def main() -> None:
    params = config.load()
    runtime.configure(params.compute)
    with tracking.stage_run("train_head", params) as run:
        train, val = (features.read_feature_set(params.path("features") / f"{name}.npz") for name in ("train", "val"))
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
        print(f"train_head: {result.settings.as_dict()}: {params.tune.objective} {best[params.tune.objective]:.4f} "
              f"at epoch {int(best['epoch'])} → {params.paths.head_model}")


if __name__ == "__main__":
    run_cli(main)
