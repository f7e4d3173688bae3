"""Job spec files (YAML or TOML): loading, validation, and the typed result.

Every problem is a `JobSpecError` naming the file, the key path and (YAML) the line, found
before anything runs: unknown keys, wrong types, unknown step types, duplicate step names,
outputs no command writes, placeholders that name nothing (`{steps.tarin.outputs.model}`),
references to later steps, missing solver / model files. Relative paths in a spec are taken
against the spec file's folder, never the current directory (cron starts jobs in $HOME).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from hovcaffe.errors import JobSpecError
from hovcaffe.jobs.location import StepPlace, known_scheme
from hovcaffe.jobs.schema import Field, Where, suggest, check_mapping
from hovcaffe.jobs.steps import StepType, get_step_type, list_step_types
from hovcaffe.jobs.template import TemplateError, nested_lookup, placeholders, render

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IDENT_DOC = "letters, digits and _, not starting with a digit"
RUN_NAMES = ("date", "run_key", "run_id", "job", "spec_dir", "state_dir")

JOB_SCHEMA = {
    "version": Field("int", default=1, minimum=1, doc="spec format version (1)"),
    "name": Field("str", required=True, doc="the job's name",
                  pattern=re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
                  pattern_doc="letters, digits, _ . - (it names folders)"),
    "description": Field("str", default=""),
    "state_dir": Field("str", default=".hovcaffe/{job}",
                       doc="folder for the lock, the state file, logs and work files"),
    "workdir": Field("str", default=".", doc="working directory of the steps"),
    "vars": Field("str_map", default={}, doc="values for {vars.NAME} placeholders"),
    "env": Field("str_map", default={}, doc="environment variables for every step"),
    "lock": Field("map", default=None, schema={
        "stale_after": Field("float", default=3600.0, minimum=1.0,
                             doc="seconds without a heartbeat after which another host's lock is stale"),
    }),
}  # plus "steps", checked step by step
STEP_COMMON = {
    "name": Field("str", required=True, pattern=IDENT, pattern_doc=_IDENT_DOC),
    "type": Field("str", required=True),
    "inputs": Field("str_map", default={}, doc="name -> URL the step reads (checked before it runs)"),
    "outputs": Field("str_map", default={}, doc="name -> URL published when the job succeeds"),
    "env": Field("str_map", default={}, doc="extra environment variables"),
    "cwd": Field("str", doc="working directory (default: the job's workdir)"),
    "timeout": Field("float", minimum=1.0, doc="seconds before the step is stopped and fails"),
}
# Keys whose files must exist at load time (when they contain no placeholder).
MUST_EXIST = {"solver", "model"}


@dataclass(frozen=True)
class StepSpec:
    """One validated step. `options` holds the type's own keys; strings are still templates."""

    name: str
    type: str
    index: int
    options: dict[str, Any]
    inputs: dict[str, str]
    outputs: dict[str, str]
    env: dict[str, str]
    cwd: str | None
    timeout: float | None
    fingerprint: str

    @property
    def kind(self) -> StepType:
        return get_step_type(self.type)


@dataclass(frozen=True)
class JobSpec:
    """A validated job spec. `state_dir` and `workdir` are absolute."""

    path: Path
    name: str
    description: str
    state_dir: Path
    workdir: Path
    vars: dict[str, str]
    env: dict[str, str]
    stale_after: float
    steps: tuple[StepSpec, ...]

    @property
    def spec_dir(self) -> Path:
        return self.path.parent

    def step(self, name: str) -> StepSpec:
        for step in self.steps:
            if step.name == name:
                return step
        raise JobSpecError(f"{self.path}: no step named {name!r}; steps: "
                           f"{', '.join(s.name for s in self.steps)}")


# ----------------------------------------------------------------------------- reading

def _yaml_locator(text: str):
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None

    def locate(path: tuple) -> int | None:
        node, line = root, None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                match = [(k, v) for k, v in node.value if k.value == part]
                if not match:
                    break
                line, node = match[0][0].start_mark.line + 1, match[0][1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line

    return locate


def read_spec_file(path: Path) -> tuple[Any, Where]:
    """Parse a YAML (`.yaml`/`.yml`) or TOML (`.toml`) file into plain data."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise JobSpecError(f"{path}: job spec file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JobSpecError(f"{path}: cannot read the job spec: {exc}") from None
    if path.suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(text), Where(str(path))
        except tomllib.TOMLDecodeError as exc:
            raise JobSpecError(f"{path}: not valid TOML: {exc}") from None
    if path.suffix not in (".yaml", ".yml"):
        raise JobSpecError(f"{path}: unknown spec format {path.suffix!r}; use .yaml, .yml or .toml")
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise JobSpecError(f"{where}: not valid YAML: {problem}") from None
    return data, Where(str(path), _yaml_locator(text))


# ----------------------------------------------------------------------------- checking

def _template_strings(value: Any, path: tuple) -> Iterator[tuple[tuple, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _template_strings(item, path + (i,))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _template_strings(item, path + (key,))


def _check_placeholders(text: str, path: tuple, where: Where, allowed: set[str],
                        prefixes: tuple[str, ...] = ("env.",)) -> None:
    try:
        found = list(placeholders(text))
    except TemplateError as exc:
        raise where.error(path, str(exc)) from None
    for name, fmt in found:
        if name not in allowed and not (name.startswith(prefixes) and name.count(".") == 1):
            hint = "; known here: " + ", ".join("{" + a + "}" for a in sorted(allowed))
            raise where.error(path, f"unknown placeholder {{{name}}}" + hint)
        if fmt is not None and name != "date":
            raise where.error(path, f"{{{name}:{fmt}}}: only {{date}} takes a format")


def _check_url(text: str, path: tuple, where: Where) -> None:
    loc = StepPlace.parse(text, Path("."))
    if loc.path is None and not known_scheme(loc.scheme):
        raise where.error(path, f"URL scheme {loc.scheme!r} of {text!r} is not supported "
                                "(local paths, file://, or an fsspec scheme such as hdfs://, s3://)")


def _check_step(raw: Any, index: int, where: Where, earlier: dict[str, dict[str, str]],
                run_names: set[str], spec_dir: Path) -> StepSpec:
    path = ("steps", index)
    if not isinstance(raw, dict):
        raise where.error(path, "each step must be a mapping with at least name and type")
    kind_name = raw.get("type")
    if kind_name not in list_step_types():
        known = list_step_types()
        if kind_name is None:
            raise where.error(path + ("type",), f"required key is missing; one of: {', '.join(known)}")
        raise where.error(path + ("type",), f"unknown step type {kind_name!r}; known: {', '.join(known)}"
                          + suggest(str(kind_name), known))
    kind = get_step_type(kind_name)
    clash = set(kind.schema) & set(STEP_COMMON)
    assert not clash, f"step type {kind_name} redefines {clash}"
    values = check_mapping(raw, {**STEP_COMMON, **kind.schema}, path, where)
    name = values["name"]
    if name in earlier:
        raise where.error(path + ("name",), f"step name {name!r} is used twice")
    outputs, inputs = values["outputs"], values["inputs"]
    for key in outputs:
        if not IDENT.match(key):
            raise where.error(path + ("outputs", key), f"output names are {_IDENT_DOC}")
    if kind.output_keys is not None:
        for key in outputs:
            if key not in kind.output_keys:
                raise where.error(path + ("outputs", key), f"a {kind_name} step has no output {key!r}; "
                                  f"it can publish: {', '.join(kind.output_keys)}")
    else:
        command_text = json.dumps([values.get(k) for k in kind.arg_keys])
        for key in outputs:
            if "{outputs." + key + "}" not in command_text:
                raise where.error(path + ("outputs", key), f"no argument mentions {{outputs.{key}}}, so "
                                  f"the command cannot know where to write it; add it to "
                                  f"{' or '.join(kind.arg_keys)}")

    # Placeholders: URLs may use run names only; the other strings may also use this step's
    # inputs/outputs and earlier steps' outputs.
    for group in ("inputs", "outputs"):
        for key, url in values[group].items():
            _check_placeholders(url, path + (group, key), where, run_names)
            _check_url(url, path + (group, key), where)
    allowed = set(run_names) | {"work_dir"} | {f"inputs.{k}" for k in inputs} | \
        {f"outputs.{k}" for k in outputs} | \
        {f"steps.{s}.outputs.{k}" for s, outs in earlier.items() for k in outs}
    for key in list(kind.schema) + ["env", "cwd"]:
        for sub_path, text in _template_strings(values.get(key), path + (key,)):
            _check_placeholders(text, sub_path, where, allowed)
    kind.check(values, outputs, lambda p, msg: where.error(path + tuple(p), msg))
    for key in MUST_EXIST & set(kind.schema):
        text = values.get(key)
        if text and "{" not in text:
            loc = StepPlace.parse(text, spec_dir)
            if loc.path is not None and not loc.path.exists():
                raise where.error(path + (key,), f"file not found: {loc.path}")

    options = {k: values[k] for k in kind.schema}
    fingerprint = hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return StepSpec(name, kind_name, index, options, inputs, outputs, values["env"], values["cwd"],
                    values["timeout"], fingerprint)


def load_spec(path: str | os.PathLike) -> JobSpec:
    """Read and validate a job spec.

    Raises:
        JobSpecError: with the file, the key path (and line for YAML) and what is wrong.
    """
    path = Path(path).absolute()
    data, where = read_spec_file(path)
    if data is None:
        raise JobSpecError(f"{path}: the job spec is empty")
    top = check_mapping(data, JOB_SCHEMA, (), where, extra_ok=("steps",))
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise where.error(("steps",), "expected a non-empty list of steps")
    for key in top["vars"]:
        if not IDENT.match(key):
            raise where.error(("vars", key), f"variable names are {_IDENT_DOC}")
    lock = top["lock"] or {"stale_after": JOB_SCHEMA["lock"].schema["stale_after"].default}

    run_names = set(RUN_NAMES) | {f"vars.{k}" for k in top["vars"]}
    for key, allowed in (("vars", set(RUN_NAMES)), ("env", run_names)):
        for sub_path, text in _template_strings(top[key], (key,)):
            _check_placeholders(text, sub_path, where, allowed)
    steps: list[StepSpec] = []
    earlier: dict[str, dict[str, str]] = {}
    for index, raw in enumerate(raw_steps):
        step = _check_step(raw, index, where, earlier, run_names, path.parent)
        steps.append(step)
        earlier[step.name] = step.outputs
    seen: dict[str, str] = {}
    for step in steps:
        for key, url in step.outputs.items():
            if url in seen:
                raise where.error(("steps", step.index, "outputs", key),
                                  f"{url!r} is also the output {seen[url]}; outputs must not overlap")
            seen[url] = f"{step.name}.{key}"

    # Folders: templated with the job's name, the spec folder and the environment only.
    static = {"job": top["name"], "spec_dir": str(path.parent)}

    def folder(key: str) -> Path:
        text = top[key]
        _check_placeholders(text, (key,), where, set(static))
        try:
            rendered = render(text, _static_lookup(static))
        except TemplateError as exc:
            raise where.error((key,), str(exc)) from None
        out = Path(os.path.expanduser(rendered))
        return (out if out.is_absolute() else path.parent / out).resolve()

    return JobSpec(path, top["name"], top["description"], folder("state_dir"), folder("workdir"),
                   top["vars"], top["env"], float(lock["stale_after"]), tuple(steps))


def _static_lookup(static: dict[str, str]):
    base = nested_lookup(static)

    def lookup(name: str) -> Any:
        if name.startswith("env."):
            value = os.environ.get(name[4:])
            if value is None:
                raise TemplateError(f"{{{name}}}: environment variable {name[4:]} is not set", name)
            return value
        return base(name)

    return lookup
