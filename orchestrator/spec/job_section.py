"""A `kind: job` stage's YAML section -> `JobStage`: a job name, its config and its inputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.spec.config_checks import _check_config, stage_config
from orchestrator.spec.fields import SectionContext, _catalog_entry, _parse_inputs, _string, _unknown_keys
from orchestrator.spec.problems import _Problems
from orchestrator.spec.schema import JobStage
from trainables import catalog


def _parse_job_stage(raw: Mapping[str, Any], key: str, where: SectionContext, problems: _Problems) -> JobStage | None:
    _unknown_keys(raw, ("name", "kind", "job", "config", "inputs"), key, problems)
    job_name = _string(raw, "job", key, problems, required=True)
    definition = _catalog_entry(job_name, catalog.job, f"{key}.job", problems)
    config, written = stage_config(raw, key, definition.config_cls if definition else None, problems)
    inputs = _parse_inputs(raw.get("inputs"), f"{key}.inputs", where.earlier, where.later, problems)
    if definition is not None:
        _check_config(definition.config_cls, config, {}, inputs, key, f"job {job_name!r}", problems,
                      declared_inputs=raw.get("inputs"), written=written)
    return JobStage(name=raw["name"], job=job_name or "", config=dict(config), inputs=inputs)
