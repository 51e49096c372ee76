"""The README stays true: every scenario field is documented, every preset named."""

import re
import typing

from pydantic import BaseModel

from sim.scenario import Scenario
from sim.strategies.presets import CLIENT_PRESETS, SERVER_PRESETS
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def models(annotation):
    """Every pydantic model reachable from a field annotation."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from models(arg)


def fields(model, seen=None):
    seen = set() if seen is None else seen
    if model in seen:
        return
    seen.add(model)
    for name, info in model.model_fields.items():
        yield model, info.alias or name
        for sub in models(info.annotation):
            yield from fields(sub, seen)
        for meta in info.metadata:
            for sub in models(getattr(meta, "annotation", None)):
                yield from fields(sub, seen)


def test_every_scenario_field_is_in_the_readme():
    reference = README[README.index("## Scenario reference"):]
    missing = sorted({f"{m.__name__}.{alias}" for m, alias in fields(Scenario)
                      if not any(form in reference for form in (f"{alias}`", f"{alias} =", f"[{alias}]"))})
    assert not missing, missing


def test_every_preset_is_in_the_readme():
    for name in [*SERVER_PRESETS, *CLIENT_PRESETS]:
        assert f"`{name}`" in README, name


def test_the_readme_gives_the_two_setup_commands():
    assert 'pip install -e ".[all]" && refreshlab compare scenarios/baseline.toml' in README
    assert re.search(r"```bash\npytest\n```", README)
    assert "pytest" in (ROOT / ".ci/run").read_text()
