"""`profiles:` in a study file: named patches (quick, paper, ...) applied to the raw document before it is
validated, so one file holds every size of the same study.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.spec.fields import _kind, _mapping, _string, _unknown_keys
from orchestrator.spec.problems import SpecError, _Problems
from trainables.settings import SECTIONS, section_of

PROFILE_KEYS = ("extends", "output", "description", "stages")


def _deep_merge(base: Any, patch: Any, replace_children: bool = False) -> Any:
    """`patch` over `base`: mappings merge key by key, anything else is replaced.

    Under `space`, an entry is replaced whole (merging `{type: choice, values: ...}` into a
    `{type: loguniform, low: ...}` entry would make a chimera of both)."""
    if not isinstance(base, Mapping) or not isinstance(patch, Mapping):
        return patch
    merged = dict(base)
    for key, value in patch.items():
        if replace_children or key not in merged:
            merged[key] = value
        elif key == "config":
            merged[key] = _deep_merge(_without_shared(merged[key], value), value)
        else:
            merged[key] = _deep_merge(merged[key], value, replace_children=key == "space")
    return merged


def _without_shared(config: Any, patch: Any) -> Any:
    """`config` less the shared settings `patch` sets, in either spelling (`classes: ...` or `data: {classes:
    ...}`): a patch replaces a setting wherever the stage wrote it, so `{config: {classes: [5, 3]}}` patches a
    stage that writes `data: {classes: [7, 1]}` rather than giving `classes` twice."""
    if not isinstance(config, Mapping) or not isinstance(patch, Mapping):
        return config
    patched = {name for name in patch if section_of(name)}
    for section in SECTIONS:
        if isinstance(patch.get(section), Mapping):
            patched.update(patch[section])
    kept = {key: value for key, value in config.items() if key not in patched}
    for section in SECTIONS:
        if isinstance(kept.get(section), Mapping):
            kept[section] = {key: value for key, value in kept[section].items() if key not in patched}
    return kept


def apply_profile(raw: Any, source: str, profile: str | None) -> tuple[Any, str, tuple[str, ...]]:
    """The study document with profile `profile` applied, the profile's name, and every name offered.

    A study file describes its default (base) profile directly in `stages`, names it with
    `profile: quick`, and lists other profiles as patches keyed by stage name:

        profiles:
          paper:
            output: runs/gasten_mnist-paper
            stages:
              gan: {config: {epochs: 10}, num_samples: 8}

    A patch may change `output`, `description` and any stage key, and may start from another
    profile (`extends: paper`); without its own `output` a non-base profile writes to
    `<output>-<profile>`, so two profiles never share a folder.
    """
    if not isinstance(raw, Mapping) or ("profiles" not in raw and "profile" not in raw):
        if profile:
            raise SpecError(source, [("profiles", f"the file defines no profiles, so --profile {profile} "
                                                  "cannot be applied; add a `profiles:` section")])
        return raw, "", ()
    problems = _Problems()
    base_name = _string(raw, "profile", "", problems, default="default")
    patches = _mapping(raw.get("profiles"), "profiles", problems) or {}
    if base_name is not None and base_name in patches:
        problems.add(f"profiles.{base_name}", f"is the base profile (`profile: {base_name}`): its settings are the "
                     "stages themselves; give other profiles a different name")
    names = (base_name or "default", *[str(name) for name in patches if name != base_name])
    chosen = profile or base_name or "default"
    if chosen not in names:
        problems.add("profiles", f"no profile {chosen!r} (this file has: {', '.join(names)})")
    document = {k: v for k, v in raw.items() if k not in ("profile", "profiles")}
    if problems.items:
        raise SpecError(source, problems.items)
    if chosen == names[0]:
        return document, chosen, names
    chain = _profile_chain(chosen, patches, names[0], problems)  # `extends` first, `chosen` last
    stages = document.get("stages")
    stage_names = [s.get("name") for s in stages if isinstance(s, Mapping)] if isinstance(stages, list) else []
    own_output = False
    for name in chain:
        key = f"profiles.{name}"
        patch = _mapping(patches[name], key, problems) or {}
        _unknown_keys(patch, PROFILE_KEYS, key, problems)
        stage_patches = _mapping(patch.get("stages"), f"{key}.stages", problems) or {}
        for stage_name, stage_patch in stage_patches.items():
            if stage_name not in stage_names:
                problems.add(f"{key}.stages.{stage_name}",
                             f"no stage named {stage_name!r} (stages: {', '.join(map(str, stage_names))})")
            elif not isinstance(stage_patch, Mapping):
                problems.add(f"{key}.stages.{stage_name}",
                             f"expected a mapping of stage settings, got {_kind(stage_patch)}")
            elif "name" in stage_patch or "kind" in stage_patch:
                problems.add(f"{key}.stages.{stage_name}", "a profile cannot rename a stage or change its kind")
        if problems.items:
            continue
        if isinstance(stages, list):
            stages = [_deep_merge(s, stage_patches[s["name"]])
                      if isinstance(s, Mapping) and s.get("name") in stage_patches else s for s in stages]
        for field_name in ("description", "output"):
            if field_name in patch:
                document[field_name] = patch[field_name]
                own_output = own_output or field_name == "output"
    if problems.items:
        raise SpecError(source, problems.items)
    if isinstance(stages, list):
        document["stages"] = stages
    if not own_output and isinstance(document.get("output"), str):
        document["output"] = f"{document['output']}-{chosen}"
    return document, chosen, names


def _profile_chain(chosen: str, patches: Mapping[str, Any], base: str, problems: _Problems) -> list[str]:
    """`chosen` and the profiles it `extends`, oldest ancestor first (the base profile is implicit)."""
    chain: list[str] = []
    name = chosen
    while name != base:
        if name in chain:
            problems.add(f"profiles.{chosen}.extends", f"profiles extend each other in a loop: "
                         f"{' -> '.join([*chain, name])}")
            return []
        chain.append(name)
        patch = patches.get(name)
        parent = patch.get("extends", base) if isinstance(patch, Mapping) else base
        if parent != base and parent not in patches:
            problems.add(f"profiles.{name}.extends", f"no profile {parent!r} to extend "
                         f"(this file has: {', '.join([base, *map(str, patches)])})")
            return []
        name = parent
    return chain[::-1]
