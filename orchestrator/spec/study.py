"""The entry point: a study file (or loaded document) -> `StudySpec`, with its profile applied and each
stage handed to its kind's section parser; every problem of the file raised together as one SpecError.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from orchestrator.spec.fields import (NAME_PATTERN, SectionContext, _check_selectors, _kind, _mapping, _number,
                                     _string, _unknown_keys)
from orchestrator.spec.config_checks import flat_spelling_deprecation
from orchestrator.spec.job_section import _parse_job_stage
from orchestrator.spec.optuna_section import _parse_optuna_stage
from orchestrator.spec.problems import SpecError, _Problems
from orchestrator.spec.profiles import apply_profile
from orchestrator.spec.schema import Stage, StudySpec, TrackingSpec
from orchestrator.spec.tune_section import _parse_tune_stage
from orchestrator.spec.yaml_loading import load_yaml

MAX_STUDY_SEED = 2**31 - 1

# Each stage kind's section parser, by the YAML's `kind:` (the order is the one error messages list).
# The spec layer sits below orchestrator/stages/ (whose modules read these specs), so it keeps its own
# table; orchestrator/stages/KINDS names the same parsers and a test keeps the two in step.
SECTION_PARSERS: dict[str, Callable[[Mapping[str, Any], str, SectionContext, _Problems], Stage | None]] = {
    "tune": _parse_tune_stage,
    "optuna": _parse_optuna_stage,
    "job": _parse_job_stage,
}


def parse_study(raw: Any, source: str, default_output: Path | None = None, profile: str | None = None) -> StudySpec:
    """Validate an already-loaded YAML document; raise SpecError listing every problem."""
    raw, profile_name, profile_names = apply_profile(raw, source, profile)
    # A problem may come from the profile's patch: say which profile was applied.
    label = f"{source} (profile {profile_name})" if profile_name and profile_name != profile_names[0] else source
    problems = _Problems()
    if not isinstance(raw, Mapping):
        raise SpecError(label, [("", f"expected a mapping with keys study, stages, ... at the top, got {_kind(raw)}")])
    _unknown_keys(raw, ("study", "description", "output", "tracking", "seed", "reproducible", "stages"), "",
                  problems)
    study = _string(raw, "study", "", problems, required=True)
    seed = _number(raw, "seed", "", problems, integer=True, default=0)
    if seed is not None and not 0 <= seed <= MAX_STUDY_SEED:
        problems.add("seed", f"must be an integer from 0 to {MAX_STUDY_SEED}, got {seed}")
    reproducible = raw.get("reproducible", True)
    if not isinstance(reproducible, bool):
        problems.add("reproducible", f"expected true (the same seed gives the same study) or false (asynchronous: "
                                     f"every slot kept busy, results depend on timing), got {_kind(reproducible)}")
    if study is not None and not NAME_PATTERN.match(study):
        problems.add("study", f"use letters, digits, '_', '-', '.' and start with a letter (got {study!r})")
    description = _string(raw, "description", "", problems, default="")
    output = _string(raw, "output", "", problems)
    tracking_raw = _mapping(raw.get("tracking"), "tracking", problems) or {}
    _unknown_keys(tracking_raw, ("uri", "experiment"), "tracking", problems)
    tracking = TrackingSpec(
        uri=_string(tracking_raw, "uri", "tracking", problems),
        experiment=_string(tracking_raw, "experiment", "tracking", problems, default=study or ""),
    )

    stages_raw = raw.get("stages")
    stages: list[Stage] = []
    if not isinstance(stages_raw, list) or not stages_raw:
        problems.add("stages", "expected a non-empty list of stages")
        stages_raw = []
    names = [s.get("name") if isinstance(s, Mapping) else None for s in stages_raw]
    for index, stage_raw in enumerate(stages_raw):
        key = f"stages[{index}]"
        if not isinstance(stage_raw, Mapping):
            problems.add(key, f"expected a mapping, got {_kind(stage_raw)}")
            continue
        name = stage_raw.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.match(name) or "." in name:
            problems.add(f"{key}.name", f"required: letters, digits, '_', '-' starting with a letter (got {name!r})")
            continue
        if name in names[:index]:
            problems.add(f"{key}.name", f"duplicate stage name {name!r}")
            continue
        earlier = [n for n in names[:index] if isinstance(n, str)]
        later = [n for n in names[index + 1:] if isinstance(n, str)]
        kind = stage_raw.get("kind")
        parse_section = SECTION_PARSERS.get(kind) if isinstance(kind, str) else None
        if parse_section is None:
            problems.add(f"{key}.kind", f"must be one of {', '.join(SECTION_PARSERS)}, got {kind!r}")
            continue
        stage = parse_section(stage_raw, key, SectionContext(study or "study", earlier, later), problems)
        if stage is not None:
            _check_selectors(stage, stages, key, problems)
            stages.append(stage)

    if problems.items:
        raise SpecError(label, problems.items)
    flat_spelling = flat_spelling_deprecation(problems.flat_settings)
    if flat_spelling is not None:
        problems.deprecated(*flat_spelling)
    default = default_output or Path("runs") / (study if not profile_name or profile_name == profile_names[0]
                                                 else f"{study}-{profile_name}")
    output_path = Path(output) if output else default
    return StudySpec(name=study, output=output_path, tracking=tracking, stages=tuple(stages), source=source,
                     description=description, profile=profile_name, profiles=profile_names, seed=seed or 0,
                     reproducible=reproducible,
                     deprecations=tuple(f"{label}: {key}: {message}" for key, message in problems.deprecations))


def load_study(path: str | Path, profile: str | None = None) -> StudySpec:
    """Read and validate a study file (with `profile` applied); SpecError lines name this file."""
    source = str(path)
    return parse_study(load_yaml(Path(path), source), source, profile=profile)
