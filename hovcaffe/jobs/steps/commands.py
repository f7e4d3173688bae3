"""Step types that run one other `hovcaffe` command, and the generic `shell` step.

`convert`, `features` and `export` pass `args` through to `hovcaffe convert|features|export`
(plus `-model`/`-weights` shortcuts); the outputs they write are named in `args` as
`{outputs.<name>}`, which the runner points at a hidden staging place and publishes after the
whole job succeeded. `test` runs `hovcaffe test --json`, keeps the means it prints as scores,
can fail the job when a score misses a bar (`min_scores` / `max_scores`), and can write the
scores as a JSON output. `shell` runs any program (`argv`, no shell involved).
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from hovcaffe.errors import HovcaffeError
from hovcaffe.jobs.schema import Field
from hovcaffe.jobs.steps.base import Plan, StepContext, StepType, hovcaffe_argv, register_step
from hovcaffe.utils.fileio import atomic_write_text

_ARGS = Field("str_list", default=[], doc="arguments, templated")


class _HovcaffeCommandStep(StepType):
    """Runs `hovcaffe <type_name> [-model M] [-weights W] [-iterations N] ARGS...`.

    `model_flag` is how the command takes the net: "-model", or "" for a positional argument.
    """

    model_flag = "-model"
    extra_flags: tuple[str, ...] = ()

    def _flags(self, ctx: StepContext) -> list[str]:
        flags = []
        if ctx.options.get("model"):
            model = ctx.resolve(ctx.options["model"])
            flags += [self.model_flag, model] if self.model_flag else [model]
        if ctx.options.get("weights"):
            flags += ["-weights", ctx.resolve(ctx.options["weights"])]
        if ctx.options.get("iterations"):
            flags += ["-iterations", str(ctx.options["iterations"])]
        return flags + list(self.extra_flags)

    def plan(self, ctx: StepContext) -> Plan | None:
        args = [ctx.render(a) for a in ctx.options.get("args") or []]
        return Plan(hovcaffe_argv(self.type_name, *self._flags(ctx), *args), ctx.cwd)


@register_step
class ConvertStep(_HovcaffeCommandStep):
    type_name = "convert"
    summary = "hovcaffe convert ARGS: a dataset to Parquet (name outputs as {outputs.NAME})"
    schema = {"args": Field("str_list", required=True, doc="arguments of hovcaffe convert")}


@register_step
class FeaturesStep(_HovcaffeCommandStep):
    type_name = "features"
    summary = "hovcaffe features: extract blobs for every sample"
    schema = {"model": Field("str", doc="net prototxt (-model)"),
              "weights": Field("str", doc="caffemodel (-weights)"),
              "args": _ARGS}


@register_step
class ExportStep(_HovcaffeCommandStep):
    type_name = "export"
    summary = "hovcaffe export NET: a trained net to ONNX / TorchScript / caffemodel"
    model_flag = ""  # `hovcaffe export NET.prototxt -weights W -format F -o OUT`
    schema = {"model": Field("str", required=True, doc="net prototxt (the positional NET)"),
              "weights": Field("str", doc="caffemodel (-weights)"),
              "args": _ARGS}


def parse_scores(lines: Iterable[str]) -> dict[str, float]:
    """Scores from the JSON line `hovcaffe test --json` prints: its `loss` and scalar outputs."""
    for line in reversed(list(lines)):
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("outputs"), dict):
            scores = {k: float(v) for k, v in data["outputs"].items() if isinstance(v, (int, float))}
            if isinstance(data.get("loss"), (int, float)):
                scores.setdefault("loss", float(data["loss"]))
            return scores
    return {}


@register_step
class ModelTestStep(_HovcaffeCommandStep):
    type_name = "test"
    summary = "hovcaffe test: score a model; optional bars that fail the job"
    schema = {
        "model": Field("str", required=True, doc="net prototxt with a TEST phase (-model)"),
        "weights": Field("str", required=True, doc="caffemodel to score (-weights)"),
        "iterations": Field("int", minimum=1, doc="test batches (-iterations)"),
        "min_scores": Field("num_map", default={}, doc="score name -> lowest acceptable value"),
        "max_scores": Field("num_map", default={}, doc="score name -> highest acceptable value"),
        "args": _ARGS,
    }
    output_keys = ("scores",)
    extra_flags = ("--json",)

    def collect(self, ctx: StepContext) -> dict[str, Any]:
        scores = parse_scores(ctx.output_lines)
        problems = []
        for bounds, sign in ((ctx.options.get("min_scores") or {}, ">="),
                             (ctx.options.get("max_scores") or {}, "<=")):
            for name, bar in bounds.items():
                if name not in scores:
                    problems.append(f"{name} was not printed (scores seen: {', '.join(scores) or 'none'})")
                elif not (scores[name] >= bar if sign == ">=" else scores[name] <= bar):
                    problems.append(f"{name} = {scores[name]:g}, required {sign} {bar:g}")
        if problems:
            raise HovcaffeError(f"step {ctx.name}: " + "; ".join(problems))
        if "scores" in ctx.staged:
            staged = ctx.staged["scores"]
            tmp = ctx.work_dir / "scores.json"
            atomic_write_text(tmp, json.dumps(scores, indent=2, sort_keys=True) + "\n")
            staged.put_file(tmp)
        return {"scores": scores}


@register_step
class ShellStep(StepType):
    type_name = "shell"
    summary = "any program: argv is run as is (no shell), with the run's placeholders filled in"
    schema = {"argv": Field("str_list", required=True, doc="program and arguments")}
    arg_keys = ("argv",)

    def check(self, options: Mapping[str, Any], outputs: Mapping[str, str], error) -> None:
        if not options["argv"]:
            raise error(("argv",), "needs at least the program to run")

    def plan(self, ctx: StepContext) -> Plan | None:
        return Plan([ctx.render(a) for a in ctx.options["argv"]], ctx.cwd)
