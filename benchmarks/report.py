"""The list of benchmarks, their runner, and their results as one markdown table (``benchmarks/RESULTS.md``).

``BENCHMARKS`` is the one list of what ``make bench`` runs, in order. Reads ``benchmarks/results/<name>.json``
(written by ``python -m benchmarks.<name>``). With ``--run-all`` (``make bench``) or ``--run NAME ...``, runs
those benchmarks first, one after the other, and records how long each took in ``results/timings.json``::

    python -m benchmarks.report [--run-all | --run extract formats ... | --list]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from benchmarks.common import REPO, RESULTS, describe_machine, sampling_noise
from pipeline.core import files

REPORT = REPO / "benchmarks" / "RESULTS.md"
TIMINGS = RESULTS / "timings.json"
BENCHMARKS = (
    "extract",
    "runtimes",
    "formats",
    "tuning",
    "backbones",
    "duplicate_threshold",
    "finetune_speed",
    "training_speed",
    "head_vs_probe",
    "accuracy",
    "repro",
    "pipeline_run",
    "memory",
    "scale",
    "default_run",
    "datacentric",
)  # make bench's order (datacentric reads the default run's outputs)
OPTIONAL = ("gpu",)  # shown only once measured: `make bench-gpu` needs a GPU machine
BY_HAND = ("extract_ab",)  # run by hand with arguments (a git revision); cited in docs/benchmarks.md, not tabled
# Results kept under a key of another benchmark's file: name -> (file stem, key).
SECTIONS = {"training_speed": ("runtimes", "training"), "runtimes": ("runtimes", "inference")}
Row = tuple[str, str, str]  # what was measured, the result, on what data


def run_benchmarks(names: list[str]) -> None:
    """Run ``python -m benchmarks.<name>`` for each name in turn; record each one's wall time.

    Raises:
        SystemExit: a benchmark failed (the ones before it keep their results and timings).
    """
    timings = files.read_json(TIMINGS) if TIMINGS.exists() else {}
    for name in names:
        print(f"== benchmarks.{name}", flush=True)
        started = time.perf_counter()
        status = subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], check=False).returncode
        if status != 0:
            raise SystemExit(f"benchmarks.{name} failed (exit status {status})")
        timings[name] = {"seconds": round(time.perf_counter() - started, 1), "date": describe_machine()["date"]}
        files.write_json(TIMINGS, timings)


def extract_rows(result: dict[str, Any]) -> list[Row]:
    return [
        (
            f"Extract speed, {size} px",
            f"{rates['extract_images_per_s']:.0f} images/s: {result[f'ratio_vs_forward_{size}']:.2f}× the backbone "
            f"alone on decoded images, {result[f'speedup_vs_naive_{size}']:.1f}× a PIL + `predict` loop",
            result["data"],
        )
        for size, rates in result["sizes"].items()
    ]


RUNTIME_NAMES = {"tensorflow": "TensorFlow", "tflite": "TFLite (XNNPACK)", "onnx": "ONNX Runtime"}


def runtimes_rows(result: dict[str, Any]) -> list[Row]:
    rows = []
    for label, run in result["runs"].items():
        isa = "" if label == "native" else f", oneDNN limited to {run['onednn_max_cpu_isa']}"
        for size, measured in run["sizes"].items():
            worst = max(d["max_rel"] for d in measured["difference_vs_tensorflow"].values())
            for batch, speeds in measured["batches"].items():
                others = ", ".join(
                    f"{RUNTIME_NAMES[name]} {s['vs_tensorflow']:.2f}×"
                    for name, s in speeds.items()
                    if name != "tensorflow"
                )
                rows.append(
                    (
                        f"Frozen forward pass, {size} px, batch {batch}{isa}",
                        f"TensorFlow {speeds['tensorflow']['images_per_s']:.0f} images/s; {others}"
                        + (f"; auto chose {measured['auto']['runtime']}" if batch == "64" else ""),
                        f"Lite0, {result['threads']} threads, in memory; features within {worst:.1g} of TF's, relative",
                    )
                )
    return rows


def formats_rows(result: dict[str, Any]) -> list[Row]:
    cells = [
        f"{name} {n['extract_images_per_s']:.0f}/s ({n['extract_vs_jpeg']:.2f}× JPEG; decode alone "
        f"{n['decode_images_per_s']:.0f}/s)"
        for name, n in result["formats"].items()
    ]
    return [(f"Extract by image format, {result['image_size']} px", " · ".join(cells), result["data"])]


def tuning_rows(result: dict[str, Any]) -> list[Row]:
    return [
        (
            "Head search, one trial",
            f"{result['s_per_trial_cached']:.2f} s on cached features, {result['s_per_trial_end_to_end']:.1f} s "
            f"through the frozen backbone ({result['speedup_cached_vs_end_to_end']}× faster); memory "
            f"{result['rss_growth_mb_after_first_trial']:+.0f} MB over {result['search_trials']} trials",
            result["data"],
        )
    ]


METHOD_NAMES = {
    "scratch_cnn": "scratch CNN",
    "logistic_regression": "logistic regression",
    "head_only": "head only",
    "finetuned": "fine-tuned",
}


def paired_summary(paired: dict[str, dict[str, Any]]) -> str:
    """``fine-tuned − logistic regression +0.035 (p 0.004)`` for each paired comparison, joined."""
    parts = []
    for key, found in paired.items():
        challenger, baseline = key.split("_vs_")
        parts.append(
            f"{METHOD_NAMES[challenger]} − {METHOD_NAMES[baseline]} {found['difference']:+.3f} "
            f"(p {found['p_value']:.2g})"
        )
    return "; ".join(parts)


def accuracy_rows(result: dict[str, Any]) -> list[Row]:
    rows = []
    for name, scores in result.items():
        if not (isinstance(scores, dict) and "scratch_cnn" in scores):
            continue
        paired = scores.get("paired")
        rows.append(
            (
                f"Test accuracy, {name}",
                " · ".join(f"{label} {scores[method]:.3f}" for method, label in METHOD_NAMES.items())
                + f" ({scores['image_size']} px; ±{sampling_noise(scores['head_only'], scores['images']['test']):.3f}"
                f" at 95% on {scores['images']['test']:,} test images)"
                + (f". Paired on the same images (McNemar): {paired_summary(paired)}" if paired else ""),
                scores.get("data", ""),
            )
        )
    return rows


def repro_rows(result: dict[str, Any]) -> list[Row]:
    rows = []
    if "full_s" in result:
        ran = ", ".join(result["head_change_stages"]) or "no stage"
        rows.append(
            (
                "`dvc repro`",
                f"full run {result['full_s']:.0f} s · nothing changed {result['noop_s']:.1f} s · "
                f"{result['head_change']}: {result['head_change_s']:.0f} s (ran: {ran})",
                result["data"],
            )
        )
    what = "`dvc repro`, nothing changed, at the default project's size"
    if "noop_70k_s" in result:
        cpu = result["noop_70k_machine"]
        slowest = sorted(result["status_70k_by_stage_s"].items(), key=lambda item: -item[1])[:2]
        rows.append(
            (
                what,
                f"{result['images_70k']:,} images: `{result['noop_70k_command']}` {result['noop_70k_s']:.1f} s "
                f"({result['noop_70k_cpu_s']:.1f} s CPU) · `dvc status` {result['status_70k_s']:.1f} s "
                f"(best of {len(result['noop_70k_runs_s'])}; `dvc status <stage>` alone: "
                + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in slowest)
                + f"; {cpu['cpu']}, {cpu['cpu_isa']}, measured {str(cpu['date'])[:10]})",
                result["noop_70k_data"],
            )
        )
    elif "noop_70k_skipped" in result:
        rows.append((what, f"not measured: {result['noop_70k_skipped']}", ""))
    return rows


def pipeline_run_rows(result: dict[str, Any]) -> list[Row]:
    rows = []
    for store, label in (("embedded", "the embedded store (sqlite)"), ("server", "a `mlflow server`")):
        if store not in result:
            continue
        found = result[store]
        rows.append(
            (
                f"The record stage (one MLflow pipeline run per result), {label}",
                f"adds {found['added_s']:.2f} s to a `dvc repro` (median of {len(found['runs_s']['record_s'])}: "
                f"forced {found['record_s']:.2f} s − DVC's check {found['check_s']:.2f} s); "
                f"`python -m stages.record` alone {found['command_s']:.2f} s, of which its imports "
                f"{found['import_s']:.2f} s",
                result["data"],
            )
        )
    return rows


def memory_rows(result: dict[str, Any]) -> list[Row]:
    return [
        (
            "Extract peak memory",
            f"{result['n']} images: {result['peak_rss_mb_n']:.0f} MiB · {4 * result['n']} images: "
            f"{result['peak_rss_mb_4n']:.0f} MiB ({result['growth_mb']:+.0f} MiB; the 4N feature array is "
            f"{result['feature_array_mb_4n']:.0f} MiB)",
            result["data"],
        )
    ]


def scale_rows(result: dict[str, Any]) -> list[Row]:
    small = result["small_epoch_s"]
    return [
        (
            "train_head beyond memory",
            f"{result['rows']:,} x 1280 float32 ({result['features_gb']} GB on disk), {result['trials']} trial + "
            f"1 epoch: peak RSS {result['train_head_peak_rss_mb']:.0f} MiB (goal ≤ 3 GB), "
            f"{result['train_head_s']:.0f} s; "
            f"one epoch {result['epoch_s']:.0f} s (peak {result['fit_peak_rss_mb']:.0f} MiB), standardisation "
            f"statistics {result['feature_scale_s']:.0f} s; at {result['small_rows']:,} rows an epoch from "
            f"memory-mapped files {min(small['stream']):.1f} s vs arrays in memory {min(small['arrays']):.1f} s; "
            f"audit on {result['audit_rows']:,} train rows: peak {result['audit_peak_rss_mb']:.0f} MiB, "
            f"{result['audit_s']:.0f} s",
            result["data"],
        )
    ]


def backbones_rows(result: dict[str, Any]) -> list[Row]:
    rows = []
    for dataset, entry in result["datasets"].items():
        first = next(iter(entry["backbones"]))
        cells = []
        for name, scores in entry["backbones"].items():
            paired = scores.get(f"vs_{first}")
            versus = f", {paired['difference']:+.3f} vs {first} (p {paired['p_value']:.2g})" if paired else ""
            cells.append(
                f"{name} {scores['image_size']} px: {scores['test_accuracy']:.3f}{versus}, extract "
                f"{scores['extract_images_per_s']:.0f} images/s"
            )
        rows.append(
            (
                f"Backbones, {dataset}",
                " · ".join(cells) + " (logistic regression on each one's features)",
                f"shared/datasets/{dataset}: {entry['images']['test']} test images, the pipeline's split",
            )
        )
    return rows


def training_speed_rows(result: dict[str, Any]) -> list[Row]:
    """The CPU training switches: each one's median speed-up (over 1: faster) and its largest effect on results."""
    cells = []
    for name, entry in result["comparisons"].items():
        accuracy = entry.get("max_val_accuracy_difference")
        effect = f"Δloss {entry['max_loss_difference']:.1g}" + ("" if accuracy is None else f", Δacc {accuracy:.3f}")
        cells.append(f"{name} ×{entry['speedup']:.2f} ({effect})")
    blocked = ", ".join(result.get("finetune_layers_without_xla", [])) or "none"
    return [
        (
            "Training switches on CPU (speed-up, on vs off)",
            " · ".join(cells) + f"; XLA refused for the finetune model by: {blocked}",
            f"{result['head_data']}; fine-tuning batches of {result['finetune_batch_size']} random images; "
            f"{result['rounds']} interleaved rounds, median ratio; adopted: steps_per_execution for the head",
        )
    ]


def gpu_rows(result: dict[str, Any]) -> list[Row]:
    """Extract and fine-tuning images/s on the GPU, per dtype policy, and extract's share of the bare forward pass."""
    cells = [
        f"{policy}: extract {n['extract_images_per_s']:.0f}/s, forward alone {n['forward_images_per_s']:.0f}/s "
        f"(ratio {n['extract_to_forward']:.2f}, goal ≥ {result['goal_extract_to_forward']}), "
        f"fine-tune {n['finetune_images_per_s']:.0f}/s"
        for policy, n in result["policies"].items()
    ]
    return [
        (
            f"GPU speed ({result['machine']['device']})",
            " · ".join(cells),
            f"{result['backbone']} at {result['image_size']} px, batches of {result['batch_size']}, "
            f"{result['images']} synthetic JPEGs extracted, TensorFlow {result['tensorflow']}",
        )
    ]


def duplicate_threshold_rows(result: dict[str, Any]) -> list[Row]:
    """Per photo set: at each backbone's threshold, the share of each kind of planted copy found, and the
    nearest pair of distinct photos (which should lie above it)."""
    rows = []
    for name, entry in result["sets"].items():
        cells = [
            f"{backbone.replace('efficientnet_lite', 'Lite')} at {found['threshold']:g}: copies found "
            + ", ".join(f"{kind} {share:.0%}" for kind, share in found["copies_found"].items())
            + f"; nearest distinct pair {found['nearest_distinct'][0]:.3f} "
            f"({found['distinct_pairs_under_threshold']} distinct pairs under)"
            for backbone, found in entry["backbones"].items()
        ]
        rows.append(
            (
                f"Near-duplicate threshold, {name} ({result['image_size']} px)",
                " · ".join(cells),
                f"shared/datasets/{entry['folder']}: {entry['originals']} photos, {entry['planted']} of them with "
                f"{len(result['copies'])} planted copies each",
            )
        )
    return rows


def finetune_speed_rows(result: dict[str, Any]) -> list[Row]:
    cells = [
        f"{name} " + ", ".join(f"{size} px {rate:.0f}/s" for size, rate in sizes.items())
        for name, sizes in result["images_per_s"].items()
    ]
    return [
        (
            "Fine-tuning speed (training step)",
            " · ".join(cells),
            f"random images, batches of {result['batch_size']}, unfrozen from {result['unfreeze_from']}",
        )
    ]


def head_vs_probe_rows(result: dict[str, Any]) -> list[Row]:
    return [
        (
            f"Tuned head vs. linear probe, {name}",
            f"head {entry['head']:.3f} · logistic regression {entry['logistic_regression']:.3f} "
            f"({entry['head_vs_probe']['difference']:+.3f}, paired p {entry['head_vs_probe']['p_value']:.2g}; "
            f"{entry['image_size']} px)",
            f"shared/datasets/{name}: {entry['test_images']} test images",
        )
        for name, entry in result["datasets"].items()
    ]


def default_run_rows(result: dict[str, Any]) -> list[Row]:
    stages = ", ".join(f"{name} {seconds:.0f}" for name, seconds in result["seconds"].items() if name != "total")
    paired = result.get("finetuned_vs_head") or {}
    gain = f"; fine-tuning {paired['accuracy_difference']:+.4f} (p {paired['p_value']:.2g})" if paired else ""
    return [
        (
            "Default run (`dvc repro`)",
            f"{result['seconds']['total'] / 60:.1f} min, test accuracy {result['test_accuracy']:.4f} "
            f"(head alone {result['head_only_test_accuracy']:.4f}{gain}); seconds per stage: {stages}",
            f"Fashion-MNIST, all 70,000 images at {result['image_size']} px (image_size auto)",
        )
    ]


def datacentric_rows(result: dict[str, Any]) -> list[Row]:
    rows = []
    speed = result.get("speed")
    if speed:
        rows.append(
            (
                "Data audit speed",
                f"{speed['wall_seconds']:.0f} s, peak {speed['peak_rss_mib']} MiB (goal ≤ 60 s)",
                f"{speed['images']:,} x {speed['feature_width']} features (the default run)",
            )
        )
    for name, found in result.get("flips", {}).items():
        rows.append(
            (
                f"Label errors found ({name}, 5% flipped)",
                f"precision {found['precision']:.2f}, recall {found['recall']:.2f} "
                f"({found['listed']} listed, {found['flipped']} flipped; {found['unmodified_train_issues']} "
                "listed on the unmodified set)",
                f"{name}: {found['train_images']} train images, Lite0 features",
            )
        )
    fashion = result.get("fashion")
    if fashion:
        rerun = fashion.get("rerun")
        after = (
            f"; without the {rerun['excluded_train_images']} flagged train images: {rerun['test_accuracy']:.4f} "
            f"({rerun['difference']:+.4f})"
            if rerun
            else ""
        )
        rows.append(
            (
                "Data audit on Fashion-MNIST",
                f"{fashion['flagged_test_label_issues']} test label issues, {fashion['train_test_near_duplicates']} "
                f"train-test near-duplicates; test accuracy {fashion['test_accuracy']:.4f}{after}",
                "the default run",
            )
        )
    return rows


ROWS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "extract": extract_rows,
    "runtimes": runtimes_rows,
    "formats": formats_rows,
    "tuning": tuning_rows,
    "backbones": backbones_rows,
    "duplicate_threshold": duplicate_threshold_rows,
    "finetune_speed": finetune_speed_rows,
    "training_speed": training_speed_rows,
    "head_vs_probe": head_vs_probe_rows,
    "accuracy": accuracy_rows,
    "repro": repro_rows,
    "pipeline_run": pipeline_run_rows,
    "memory": memory_rows,
    "scale": scale_rows,
    "default_run": default_run_rows,
    "datacentric": datacentric_rows,
    "gpu": gpu_rows,
}


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def build_table(results: dict[str, dict[str, Any]], timings: dict[str, dict[str, Any]]) -> str:
    """One markdown table over every benchmark: its rows, when it was measured and how long it took.

    Args:
        results: benchmark name -> its results JSON (missing names are shown as not run).
        timings: benchmark name -> ``{"seconds": ...}`` from ``--run``; otherwise the JSON's own ``seconds``.
    """
    lines = ["| Benchmark | Result | Data | Measured | Took |", "|---|---|---|---|---|"]
    for name in (*BENCHMARKS, *OPTIONAL):
        result = results.get(name)
        if result is None and name in OPTIONAL:
            continue
        if result is None:
            lines.append(f"| {name} | not run: `python -m benchmarks.{name}` | | | |")
            continue
        own = result.get("seconds")
        took = _minutes(timings.get(name, {}).get("seconds", own.get("total") if isinstance(own, dict) else own))
        measured = str(result.get("machine", {}).get("date", ""))[:10]
        for index, (what, value, data) in enumerate(ROWS[name](result)):
            lines.append(
                f"| {what} | {value} | {data} | {measured if index == 0 else ''} | {took if index == 0 else ''} |"
            )
    return "\n".join(lines) + "\n"


def describe_machines(results: dict[str, dict[str, Any]]) -> str:
    """The machine the results were measured on (or each, if they differ)."""
    seen: dict[str, list[str]] = {}
    for name, result in results.items():
        where = result.get("machine", {})
        key = f"{where.get('cpu')}, {where.get('cores')} cores, {where.get('memory_gib')} GiB, {where.get('device')}"
        seen.setdefault(key, []).append(name)
    if len(seen) == 1:
        return f"Measured on {next(iter(seen))}."
    return "Measured on different machines: " + "; ".join(f"{k} ({', '.join(v)})" for k, v in seen.items()) + "."


def read_result(name: str) -> dict[str, Any] | None:
    """A benchmark's results: ``results/<name>.json``, or its key in another file (``SECTIONS``); None if not run."""
    stem, key = SECTIONS.get(name, (name, None))
    path = RESULTS / f"{stem}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if key is None else data.get(key)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run-all", action="store_true", help="run every benchmark of make bench first, in order")
    which.add_argument(
        "--run",
        nargs="+",
        choices=BENCHMARKS,
        metavar="NAME",
        help=f"run these benchmarks first (any of: {', '.join(BENCHMARKS)})",
    )
    which.add_argument("--list", action="store_true", help="print make bench's benchmarks, in order, and stop")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(BENCHMARKS))
        return
    if args.run_all or args.run:
        run_benchmarks(list(BENCHMARKS) if args.run_all else args.run)
    results = {name: result for name in (*BENCHMARKS, *OPTIONAL) if (result := read_result(name)) is not None}
    timings = files.read_json(TIMINGS) if TIMINGS.exists() else {}
    table = build_table(results, timings)
    timed = [name for name in BENCHMARKS if name in timings]
    total = (
        f" Run by `make bench`, {', '.join(timed)} took {_minutes(sum(timings[n]['seconds'] for n in timed))}."
        if timed
        else ""
    )
    now = datetime.now(UTC).isoformat(timespec="seconds")
    files.write_text(
        REPORT,
        f"# Benchmark results\n\nWritten {now} by `python -m benchmarks.report`. "
        f"{describe_machines(results)}{total}\n\n{table}",
    )
    print(table, end="")


if __name__ == "__main__":
    main()
