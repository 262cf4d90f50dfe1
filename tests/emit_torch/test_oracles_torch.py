"""The PyTorch emitter against one numpy oracle per axis value (tests/oracle_cases.py), each with
negative controls: a wrong variant of the formula must not match what the emitter computed."""

from __future__ import annotations

import pytest

import component_probe as P
import oracle_cases as O

TOL = 1e-5  # float32 against float64 (observed: about 1e-6)
MISS = 1e-4  # a wrong variant is off by at least this much (GELU vs its tanh form: 1.6e-4)


@pytest.mark.parametrize("oracle", sorted(O.ORACLES))
def test_component_matches_its_oracle_torch(oracle):
    o = O.ORACLES[oracle]
    g = o.graph()
    node, names = O.probe_names(o, g)
    values, w, f = P.run("torch", g, names)
    err, wrong = O.compare(o, values, w, f, g)
    assert err <= TOL, f"{oracle}: {node} off the reference by {err:.2e}"
    for name, e in wrong.items():
        assert e > MISS, f"{oracle}: negative control '{name}' matches too ({e:.2e}): the oracle cannot tell them apart"


def test_every_axis_value_has_an_oracle():
    from archc import spec as S

    ids = set(O.ORACLES)
    expect = [f"norm-{k.value}-{b}-{s.value}" for k in S.NormKind for b in ("bias", "nobias") for s in S.NormScale]
    expect += [f"activation-{a.value}" for a in S.Activation]
    expect += [f"position-rope-{s.value}" for s in S.RopeStyle]
    expect += [f"mask-{m.value}" for m in S.MaskKind] + ["mask-sliding-window"]
    expect += [f"layer-sequential-{p.value}" for p in S.NormPlacement] + [f"layer-parallel-{n.value}" for n in S.ParallelNorms]
    assert not [e for e in expect if e not in ids]
    for kind in S.PositionKind:
        assert any(i.startswith(f"position-{kind.value}") for i in ids), kind
    for layout in S.ResidualLayout:
        assert any(i.startswith(f"layer-{layout.value}") for i in ids), layout
