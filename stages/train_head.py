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

from pipeline.core import config, runtime
from pipeline.core.errors import run_cli
from pipeline.features import extraction
from pipeline.tracking import runs
from pipeline.training import distributed
from pipeline.training.tuning import selection


def main() -> None:
    params = config.load()
    role = distributed.configure(params)
    runtime.configure(params.compute)
    if role.kind == "worker":
        trials = distributed.run_worker(*extraction.read_train_val(params.path("features")), params, role)
        print(f"train_head worker {role.tuner_id}: ran trials {', '.join(trials) or 'none'}")
        return
    with runs.stage_run("train_head", params) as run:
        train, val = extraction.read_train_val(params.path("features"))
        if role.kind == "chief":
            chosen = distributed.serve_search(train, val, params, run, role)
            result = selection.train_chosen(*chosen, train, val, params, run)
        else:
            result = selection.select_head(train, val, params, run)
        selection.save_result(result, params, run)
        print(selection.describe_result(result, params))


if __name__ == "__main__":
    run_cli(main)
