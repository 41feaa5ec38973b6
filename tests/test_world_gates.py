"""The miniature world's diagnosis (token roles, attention flow) and validity gates, on hand-made inputs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reprolib import miniexp
from reprolib.viz import TOKEN_ROLES, AttentionRecord, flow_table, token_roles

PROMPT = "a photo of a star, a ring, and a heart."


def test_token_roles_with_the_real_tokenizer(tokenizer):
    roles = token_roles(tokenizer, PROMPT, ["star", "ring", "heart"])
    ids = tokenizer(PROMPT).input_ids                      # BOS, words, EOS
    assert roles["BOS"] == [0]
    assert [ids[t] for t in roles["nouns"]] == [tokenizer.encode(w)[1] for w in ("star", "ring", "heart")]
    assert roles["EOS and padding"] == list(range(len(ids) - 1, 77)) and ids[len(ids) - 1] == tokenizer.eos_token_id
    every = sorted(t for r in TOKEN_ROLES for t in roles[r])
    assert every == list(range(77)), "the roles partition the 77 positions"
    assert not set(roles["nouns"]) & set(roles["other words"])


def _record(maps: np.ndarray, prompt: str = PROMPT) -> AttentionRecord:
    return AttentionRecord(prompt=prompt, seed=0, image=np.zeros((8, 8, 3), np.uint8),
                           timesteps=list(range(maps.shape[0]))[::-1], maps={"up_4": maps}, checkpoint="base")


def test_flow_table_shares_are_the_roles_mass_and_sum_to_one(tokenizer):
    rng = np.random.default_rng(0)
    maps = rng.random((3, 4, 4, 77))
    maps /= maps.sum(-1, keepdims=True)                    # a softmax row at every pixel
    roles = token_roles(tokenizer, PROMPT, ["star", "ring", "heart"])
    t = flow_table([_record(maps)], [["star", "ring", "heart"]], tokenizer, prompt_ids=[7])
    assert len(t) == 3 * len(TOKEN_ROLES) and set(t["prompt_id"]) == {7}
    np.testing.assert_allclose(t.groupby("step")["share"].sum().to_numpy(), 1.0, rtol=1e-12)
    nouns = t[(t["role"] == "nouns") & (t["step"] == 1)]["share"].item()
    assert nouns == pytest.approx(maps[1][..., roles["nouns"]].sum(-1).mean(), rel=1e-12)
    onehot = np.zeros((1, 4, 4, 77))
    onehot[..., 0] = 1.0                                    # everything on BOS
    t = flow_table([_record(onehot)], [["star"]], tokenizer).set_index("role")["share"]
    assert t["BOS"] == 1.0 and t["nouns"] == 0.0 and t["EOS and padding"] == 0.0
    with pytest.raises(ValueError, match="noun lists"):
        flow_table([_record(onehot)], [], tokenizer)


def _mass(ratios: dict[str, float], chance: float = 0.05) -> pd.DataFrame:
    return pd.DataFrame([{"checkpoint": "base", "layer": lay, "mass": r * chance, "chance": chance, "step": 0}
                         for lay, r in ratios.items()], columns=["checkpoint", "layer", "mass", "chance", "step"])


def _scores(mg3: float, mg4: float) -> pd.DataFrame:
    return pd.DataFrame([{"checkpoint": "base", "k": 3, "mean": mg3}, {"checkpoint": "base", "k": 4, "mean": mg4}])


def _paired(ci_high: float) -> pd.DataFrame:
    return pd.DataFrame([{"a": "finetune", "b": "base", "k": 3, "diff": ci_high - 5, "ci_low": ci_high - 10,
                          "ci_high": ci_high}])


def _edits(successes: list[bool]) -> pd.DataFrame:
    return pd.DataFrame({"checkpoint": ["base"] * len(successes) + ["source"], "success": successes + [True]})


LAYERS = ("mid_2", "up_4", "up_8", "up_16")
RECORD = {"sample_check": {"single_object_found": 0.93, "images_single": 100}}


def test_every_gate_passes_when_the_world_is_valid():
    g = miniexp.validity_gates(RECORD, _mass(dict.fromkeys(LAYERS, 3.0)), _scores(50.0, 20.0), _paired(1.0),
                               _edits([True, True, False]))
    assert list(g["gate"]) == list(miniexp.GATES) and (g["Passes"] == "yes").all(), g
    assert miniexp.failed_gates(g) == []
    assert miniexp.gated_verdict("X.", g) == "All validity gates pass. X."
    assert "67 % of 3 edits" in g.set_index("gate").loc["bld", "Measured"]   # the source rows do not count


@pytest.mark.parametrize("gate, kwargs", [
    ("single", dict(record={"sample_check": {"single_object_found": 0.89, "images_single": 100}})),
    ("grounding", dict(mass=_mass({**dict.fromkeys(LAYERS, 3.0), "up_16": 2.49}))),
    ("grounding", dict(mass=_mass(dict.fromkeys(LAYERS[:3], 3.0)))),          # a trained group not measured
    ("mg3", dict(scores=_scores(60.5, 20.0))),
    ("mg4", dict(scores=_scores(50.0, 25.5))),
    ("control", dict(paired=_paired(-0.1))),                                   # CI entirely below the base
    ("bld", dict(edits=_edits([True, False, False]))),
])
def test_each_gate_fails_on_its_own(gate, kwargs):
    args = dict(record=RECORD, mass=_mass(dict.fromkeys(LAYERS, 3.0)), scores=_scores(50.0, 20.0),
                paired=_paired(1.0), edits=_edits([True, True]))
    args.update(kwargs)
    g = miniexp.validity_gates(args["record"], args["mass"], args["scores"], args["paired"], args["edits"])
    assert miniexp.failed_gates(g) == [gate], g
    v = miniexp.gated_verdict("(a) does not beat (b).", g)
    assert v.startswith(f"Conditional: 1 of {len(g)} validity gates fail ({gate})") and v.endswith("(a) does not beat (b).")


def test_unmeasured_gates_are_neither_passed_nor_failed():
    g = miniexp.validity_gates({}, _mass({}), _scores(50.0, 20.0).iloc[:0], _paired(1.0).iloc[:0], None)
    assert (g["Passes"] == "–").all() and miniexp.failed_gates(g) == []


def test_mass_by_layer_and_the_summary_sentence():
    mass = pd.concat([_mass({"up_4": 2.0, "up_16": 1.0}), _mass({"up_4": 4.0, "up_16": 1.5})], ignore_index=True)
    by = miniexp.mass_by_layer(mass).set_index("layer")
    assert by.loc["up_4", "ratio"] == pytest.approx(3.0) and by.loc["up_16", "rows"] == 2
    flow = pd.DataFrame([{"checkpoint": "base", "layer": "up_16", "role": r, "share": s, "step": 0}
                         for r, s in zip(TOKEN_ROLES, (0.01, 0.06, 0.17, 0.76))])
    line = miniexp.flow_summary(flow, mass)
    assert "76 % of its cross-attention to EOS and padding, 6 % to the nouns" in line
    assert "1.25 × chance there (best group up_4: 3.00 ×)" in line
    with pytest.raises(miniexp.ExperimentError, match="up_8"):
        miniexp.flow_summary(flow, mass, layer="up_8")
    shown = miniexp.mass_arms_display(mass)
    assert list(shown.columns) == ["Model", "up_4 (× chance)", "up_16 (× chance)"]
    assert shown["Model"].tolist() == [miniexp.arm_label("base")]
