"""params.yaml validation: every user error names the key, what was found and what is allowed."""

from __future__ import annotations

import copy
import json
import re
import sys
from typing import Any

import pytest
import yaml

from pipeline.core import config
from projects import REPO


def problems_for(params: dict[str, Any]) -> str:
    with pytest.raises(config.ConfigError) as caught:
        config.parse(params)
    return str(caught.value)


def test_repository_params_are_valid() -> None:
    params = config.load(config.PARAMS_FILE)
    assert params.data.source == "fashion_mnist"
    assert params.path("raw") == params.root / "data" / "raw"


def test_unknown_key_names_the_path_and_suggests_the_close_match(base_params: dict[str, Any]) -> None:
    base_params["split"]["vall"] = 0.2
    message = problems_for(base_params)
    assert "split.vall: unknown key" in message
    assert "did you mean 'val'?" in message


def test_unknown_top_level_section_is_rejected(base_params: dict[str, Any]) -> None:
    base_params["trakcing"] = base_params.pop("tracking")
    message = problems_for(base_params)
    assert "trakcing: unknown key (did you mean 'tracking'?)" in message
    assert "tracking: missing key" in message


def test_missing_key_is_named(base_params: dict[str, Any]) -> None:
    del base_params["split"]["test"]
    assert "split.test: missing key; expected a number in (0, 0.9)" in problems_for(base_params)


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("split", "val", "0.2", "split.val: found '0.2' (str); allowed: a number in (0, 0.9)"),
        ("split", "use_existing", "yes", "split.use_existing: found 'yes' (str); allowed: true or false"),
        ("data", "retries", True, "data.retries: found True (bool); allowed: an integer in [0, 20]"),
        ("data", "max_per_class", 2.5, "data.max_per_class: found 2.5 (float); allowed: an integer >= 1, or null"),
    ],
)
def test_wrong_type_is_named(base_params: dict[str, Any], section: str, key: str, value: Any, expected: str) -> None:
    base_params[section][key] = value
    assert expected in problems_for(base_params)


@pytest.mark.parametrize(("key", "value"), [("val", 0.0), ("val", 0.9), ("test", -0.1), ("test", 1.5)])
def test_out_of_range_is_named(base_params: dict[str, Any], key: str, value: float) -> None:
    base_params["split"][key] = value
    assert f"split.{key}: found {float(value)!r}; allowed: a number in (0, 0.9)" in problems_for(base_params)


def test_choice_with_typo_suggests_the_choice(base_params: dict[str, Any]) -> None:
    base_params["data"]["source"] = "fashion-mnist"
    message = problems_for(base_params)
    assert "data.source: found 'fashion-mnist'; allowed: one of 'fashion_mnist', 'url', 'folder'" in message
    assert "did you mean 'fashion_mnist'?" in message


def test_patterns_and_cross_field_rules(base_params: dict[str, Any]) -> None:
    url_params = copy.deepcopy(base_params)
    url_params["data"].update({"source": "url", "url": "https://example.org/a.zip"})
    assert "data.url and data.sha256: both required when data.source is 'url'" in problems_for(url_params)
    url_params["data"]["sha256"] = "abc"
    assert "data.sha256: found 'abc'; allowed: 64 hexadecimal digits" in problems_for(url_params)
    base_params["split"].update({"val": 0.5, "test": 0.5})
    assert "split.val + split.test" in problems_for(base_params)


def test_all_problems_are_reported_together(base_params: dict[str, Any]) -> None:
    base_params["seed"] = -1
    base_params["split"]["val"] = 2
    base_params["data"]["sourse"] = "url"
    message = problems_for(base_params)
    assert "3 problem(s)" in message
    for key in ("seed:", "split.val:", "data.sourse:"):
        assert key in message


def test_bad_yaml_and_missing_file_are_user_errors(tmp_path) -> None:
    broken = tmp_path / "params.yaml"
    broken.write_text("split: [unclosed\n", encoding="utf-8")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(broken)
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "missing.yaml")


@pytest.mark.parametrize("stage", ["download", "split"])
def test_stage_with_bad_params_exits_2_without_traceback(project, stage: str) -> None:
    project.params["split"]["vall"] = 0.1
    project.params["data"]["retries"] = "three"
    project.write_params()
    result = project.run(sys.executable, "-m", f"stages.{stage}", check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "split.vall: unknown key (did you mean 'val'?)" in result.stderr
    assert "data.retries: found 'three' (str); allowed: an integer in [0, 20]" in result.stderr
    assert not (project.root / "data" / "raw").exists()


@pytest.mark.parametrize(
    ("written", "number"),
    [
        ("1e-4", 1e-4),
        ("3E-5", 3e-5),
        ("1e-05", 1e-5),
        ("5e3", 5000.0),
        ("1.0e-4", 1e-4),
        ("2.5e+1", 25.0),
        (".5e-3", 5e-4),
        ("-1e-3", -1e-3),
    ],
)
def test_numbers_with_an_exponent_are_numbers(written: str, number: float) -> None:
    value = config.read_params_yaml(f"rate: {written}\n")["rate"]
    assert isinstance(value, float) and value == pytest.approx(number, rel=1e-12)


def test_exponent_rates_and_whole_numbers_pass_validation(tmp_path, base_params: dict[str, Any]) -> None:
    base_params["finetune"]["learning_rate"] = 1e-5  # dumped as 1.0e-05, then rewritten below
    text = yaml.safe_dump(base_params, sort_keys=False)
    text = text.replace("learning_rate: 1.0e-05", "learning_rate: 1e-4")  # as people (and dvc exp run -S) write it
    text = text.replace("max_per_class: null", "max_per_class: 5e3")
    assert "learning_rate: 1e-4" in text and "max_per_class: 5e3" in text
    (tmp_path / "params.yaml").write_text(text, encoding="utf-8")
    params = config.load(tmp_path / "params.yaml")
    assert params.finetune.learning_rate == 1e-4
    assert params.data.max_per_class == 5000 and isinstance(params.data.max_per_class, int)


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        (
            "finetune",
            "learning_rate",
            "fast",
            "finetune.learning_rate: found 'fast'; allowed: 'auto', or a number in (0, 1]",
        ),
        ("finetune", "learning_rate", "1e-4x", "finetune.learning_rate: found '1e-4x'; allowed: 'auto'"),
        ("finetune", "epochs", "many", "finetune.epochs: found 'many'; allowed: 'auto', or an integer in [1, 10000]"),
        ("data", "max_per_class", "5e-1", "data.max_per_class: found 0.5 (float); allowed: an integer >= 1, or null"),
    ],
)
def test_what_is_still_not_a_number_keeps_the_clear_message(
    base_params: dict[str, Any], section: str, key: str, value: str, expected: str
) -> None:
    base_params[section][key] = config.read_params_yaml(f"v: {value}\n")["v"]
    assert expected in problems_for(base_params)


@pytest.mark.slow
def test_dvc_exp_run_set_with_an_exponent_is_accepted(project, image_tree) -> None:
    # dvc exp run -S writes 3e-5 back as "3e-05" and 5e3 as "5000.0"; PyYAML alone reads the first as a string.
    image_tree(project.params["data"]["folder"], {"cat": 2, "dog": 2})
    result = project.run(
        "dvc", "exp", "run", "-S", "finetune.learning_rate=3e-5", "-S", "data.max_per_class=5e3", "download"
    )
    assert "3e-05" in (project.root / "params.yaml").read_text(encoding="utf-8")
    assert "Traceback" not in result.stderr
    assert json.loads((project.root / "metrics" / "download.json").read_text(encoding="utf-8"))["images"] == 4
    assert config.load(project.root / "params.yaml").finetune.learning_rate == 3e-5


def test_search_space_is_read_from_params() -> None:
    space = config.load(config.PARAMS_FILE).tune.space
    assert space.hidden_layers and all(isinstance(n, int) for n in space.hidden_layers)
    assert isinstance(space.units, tuple)  # lists become tuples: params stay immutable
    assert space.learning_rate.sampling == "log" and space.learning_rate.step is None


def test_unknown_hyperparameter_in_the_space_is_rejected(base_params: dict[str, Any]) -> None:
    base_params["tune"]["space"]["unit"] = base_params["tune"]["space"].pop("units")
    base_params["tune"]["space"]["momentum"] = [0.9]
    message = problems_for(base_params)
    assert "tune.space.unit: unknown key (did you mean 'units'?)" in message
    assert "tune.space.momentum: unknown key" in message
    assert "tune.space.units: missing key" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s.update(units=[]), "tune.space.units: found []; allowed: a non-empty list"),
        (lambda s: s.update(units=128), "tune.space.units: found 128; allowed: a non-empty list"),
        (lambda s: s.update(units=[128, "wide"]), "tune.space.units[1]: found 'wide' (str); allowed: an integer"),
        (lambda s: s.update(optimizer=["adam", "adamm"]), "tune.space.optimizer[1]: found 'adamm'; allowed: one of"),
        (lambda s: s["learning_rate"].update(min=0.0), "tune.space.learning_rate: log sampling needs min > 0"),
        (lambda s: s["dropout"].update(min=0.6), "tune.space.dropout: min (0.6) must be below max (0.5)"),
        (lambda s: s["dropout"].update(max=1.5), "tune.space.dropout: found [0, 1.5]; allowed: within [0, 1)"),
        (lambda s: s["learning_rate"].update(step=0.001), "tune.space.learning_rate.step: log sampling takes no step"),
    ],
)
def test_search_space_mistakes_name_the_key(base_params: dict[str, Any], change, expected: str) -> None:
    change(base_params["tune"]["space"])
    assert expected in problems_for(base_params)


def test_finetune_needs_exactly_one_way_to_unfreeze(base_params: dict[str, Any]) -> None:
    base_params["finetune"]["unfreeze_top"] = 20
    assert "finetune.unfreeze_from and finetune.unfreeze_top: set exactly one" in problems_for(base_params)
    base_params["finetune"].update(unfreeze_from=None, unfreeze_top=None)
    assert "set exactly one" in problems_for(base_params)
    base_params["finetune"]["unfreeze_top"] = 20
    assert config.parse(base_params).finetune.unfreeze_top == 20


def test_training_choices_are_checked(base_params: dict[str, Any]) -> None:
    base_params["train_head"].update(class_weight="inverse", optimizer="nadam")
    base_params["tune"].update(algorithm="grid", objective="accuracy")
    message = problems_for(base_params)
    assert "train_head.class_weight: found 'inverse'; allowed: one of 'balanced', 'none'" in message
    assert "train_head.optimizer: found 'nadam'" in message
    assert "tune.algorithm: found 'grid'" in message
    assert (
        "tune.objective: found 'accuracy'; allowed: one of 'val_accuracy', 'val_loss' (did you mean 'val_accuracy'?)"
        in message
    )


def test_committed_json_schema_is_what_the_models_generate() -> None:
    committed = (REPO / config.SCHEMA_FILE).read_text(encoding="utf-8")
    assert committed == config.schema_text(), "stale: run python -m pipeline.core.config --write-schema"


def test_params_yaml_points_editors_at_the_schema() -> None:
    first_line = (REPO / config.PARAMS_FILE).read_text(encoding="utf-8").splitlines()[0]
    assert first_line == f"# yaml-language-server: $schema={config.SCHEMA_FILE}"


def test_the_schema_command_writes_the_generated_schema(tmp_path) -> None:
    target = tmp_path / "schema.json"
    assert config.main(["--write-schema", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == config.schema_text()


def schema_problems(value: Any, schema: dict[str, Any], root: dict[str, Any], where: str = "") -> list[str]:
    """The keywords pydantic's JSON Schema uses, checked the way an editor does (jsonschema is no dependency)."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].removeprefix("#/$defs/")]
    if "anyOf" in schema:
        fits = any(not schema_problems(value, option, root, where) for option in schema["anyOf"])
        return [] if fits else [where]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    fits_type = {
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "null": value is None,
        "number": number,
        "integer": number and float(value).is_integer(),  # JSON Schema: 5000.0 is an integer
    }
    if "type" in schema and not fits_type[schema["type"]]:
        return [where]
    problems = []
    checks = {
        "const": lambda bound: value == bound,
        "enum": lambda choices: value in choices,
        "minimum": lambda bound: value >= bound,
        "maximum": lambda bound: value <= bound,
        "exclusiveMinimum": lambda bound: value > bound,
        "exclusiveMaximum": lambda bound: value < bound,
        "pattern": lambda pattern: re.search(pattern, value) is not None,
        "minItems": lambda size: len(value) >= size,
    }
    problems += [where for keyword, fits in checks.items() if keyword in schema and not fits(schema[keyword])]
    if isinstance(value, dict):
        problems += [f"{where}.{name}".lstrip(".") for name in schema.get("required", []) if name not in value]
        for name, item in value.items():
            key = f"{where}.{name}".lstrip(".")
            if name in schema.get("properties", {}):
                problems += schema_problems(item, schema["properties"][name], root, key)
            elif schema.get("additionalProperties") is False:
                problems.append(key)
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            problems += schema_problems(item, schema["items"], root, f"{where}[{index}]")
    return problems


def test_repository_params_satisfy_the_json_schema() -> None:
    schema = config.json_schema()
    params = config.read_params_yaml((REPO / config.PARAMS_FILE).read_text(encoding="utf-8"))
    assert schema_problems(params, schema, schema) == []


def test_the_json_schema_flags_what_load_rejects(base_params: dict[str, Any]) -> None:
    base_params["split"]["vall"] = base_params["split"].pop("val")
    base_params["split"]["test"] = 1.5
    base_params["finetune"]["learning_rate"] = "fast"
    base_params["tune"]["space"]["units"] = [128, "wide"]
    base_params["data"]["max_per_class"] = 5000.0  # a whole number: an integer to load() and to JSON Schema alike
    schema = config.json_schema()
    expected = ["split.test", "split.val", "split.vall", "tune.space.units[1]", "finetune.learning_rate"]
    assert sorted(schema_problems(base_params, schema, schema)) == sorted(expected)
    message = problems_for(base_params)
    assert all(f"{key}:" in message for key in expected) and "max_per_class" not in message
