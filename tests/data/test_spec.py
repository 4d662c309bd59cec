"""Degradation spec grammar: values, sets, ranges, k suffix, errors naming the field, draws."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from upsr.data.spec import (
    LOWPASS_KINDS,
    MP3_KBPS,
    Choice,
    DegradeSpec,
    IntRange,
    parse_lowpass,
    parse_mp3,
    parse_resample,
    parse_segment,
    parse_spec,
)
from upsr.errors import UsageError


def test_lowpass_fixed_value():
    lp = parse_lowpass("cheby1:8:4000")
    assert lp.kind == Choice(("cheby1",))
    assert lp.order == Choice((8,))
    assert lp.cutoff_hz == Choice((4000,))
    assert lp.draw(np.random.default_rng(0)) == {
        "lowpass_type": "cheby1", "lowpass_order": 8, "lowpass_cutoff_hz": 4000}


def test_lowpass_sets_and_ranges_with_k_suffix():
    lp = parse_lowpass("cheby1,ellip,butter,boxcar:2-10:2k-16k")
    assert lp.kind.values == ("cheby1", "ellip", "butter", "boxcar")
    assert lp.order == IntRange(2, 10)
    assert lp.cutoff_hz == IntRange(2000, 16000, freq=True)
    lp = parse_lowpass("ELLIP:4,6,8:3.5k,11.025k,8000")
    assert lp.kind.values == ("ellip",)
    assert lp.order == Choice((4, 6, 8))
    assert lp.cutoff_hz == Choice((3500, 11025, 8000))  # 11.025k is exact, not 11025.000000002
    assert all(isinstance(v, int) for v in lp.cutoff_hz.values)
    assert parse_lowpass("butter:8:2500.5").cutoff_hz == Choice((2500.5,))


def test_mp3_resample_segment():
    assert parse_mp3("24,32,48,64,96,128").kbps.values == (24, 32, 48, 64, 96, 128)
    assert parse_mp3("128k").kbps.values == (128,)
    # a range is the standard bitrates inside it
    assert parse_mp3("24-64").kbps.values == (24, 32, 40, 48, 56, 64)
    assert parse_resample("11025").sr.values == (11025,)
    assert parse_resample("11.025k").sr.values == (11025,)
    assert parse_resample("8k,16k").sr.values == (8000, 16000)
    assert parse_segment("2.5") == 2.5
    assert parse_segment("3s") == 3.0


@pytest.mark.parametrize(
    ("func", "text", "field"),
    [
        (parse_lowpass, "cheby1:8", "TYPE:ORDER:CUTOFF"),
        (parse_lowpass, "cheby9:8:4000", "--lowpass TYPE"),
        (parse_lowpass, "cheby1-ellip:8:4000", "--lowpass TYPE"),
        (parse_lowpass, "cheby1::4000", "--lowpass ORDER"),
        (parse_lowpass, "cheby1:2.5:4000", "--lowpass ORDER"),
        (parse_lowpass, "cheby1:0:4000", "--lowpass ORDER"),
        (parse_lowpass, "cheby1:17:4000", "--lowpass ORDER"),
        (parse_lowpass, "cheby1:10-2:4000", "--lowpass ORDER"),
        (parse_lowpass, "cheby1:2,4-6:4000", "--lowpass ORDER"),
        (parse_lowpass, "cheby1:8:abc", "--lowpass CUTOFF"),
        (parse_lowpass, "cheby1:8:-4000", "--lowpass CUTOFF"),
        (parse_lowpass, "cheby1:8:0", "--lowpass CUTOFF"),
        (parse_lowpass, "cheby1:8:16k-2k", "--lowpass CUTOFF"),
        (parse_lowpass, "cheby1:8:4000,", "--lowpass CUTOFF"),
        (parse_lowpass, "cheby1:8:nan", "--lowpass CUTOFF"),
        (parse_mp3, "100", "--mp3 KBPS"),
        (parse_mp3, "64.5", "--mp3 KBPS"),
        (parse_mp3, "330-400", "--mp3 KBPS"),
        (parse_mp3, "", "--mp3 KBPS"),
        (parse_resample, "8k-16k", "--resample HZ"),
        (parse_resample, "11025.5", "--resample HZ"),
        (parse_segment, "0", "--segment SECONDS"),
        (parse_segment, "x", "--segment SECONDS"),
    ],
)
def test_invalid_specs_name_the_field(func, text, field):
    with pytest.raises(UsageError) as exc:
        func(text)
    assert field in str(exc.value)
    assert "\n" not in str(exc.value)


def test_whole_spec_string_and_dict_forms():
    spec = parse_spec("lowpass=cheby1,ellip:2-10:2k-16k; mp3=64,128 resample=11025 segment=2")
    assert spec.lowpass == parse_lowpass("cheby1,ellip:2-10:2k-16k")
    assert spec.mp3 == parse_mp3("64,128")
    assert spec.resample == parse_resample("11025")
    assert spec.segment_s == 2.0
    assert parse_spec(str(spec)) == spec
    assert parse_spec(spec.to_dict()) == spec
    # TOML-style values: numbers and lists
    assert parse_spec({"mp3": [64, 128], "resample": 11025}) == DegradeSpec(
        mp3=parse_mp3("64,128"), resample=parse_resample("11025"))
    for bad, word in [("lowpass", "key=value"), ("mp3=64 mp3=32", "twice"),
                      ("bitrate=64", "unknown key")]:
        with pytest.raises(UsageError, match=word):
            parse_spec(bad)


def test_check_rate_rejects_cutoffs_at_or_above_nyquist():
    spec = parse_spec("lowpass=cheby1:8:2k-16k")
    spec.check_rate(44100)
    with pytest.raises(UsageError, match="Nyquist"):
        spec.check_rate(32000)


def test_draw_keeps_the_stream_pattern_fixed():
    """Fixed fields still consume one draw, so adding a set elsewhere never shifts others."""
    a = parse_spec("lowpass=cheby1:8:2k-16k mp3=64")
    b = parse_spec("lowpass=cheby1,ellip:8:2k-16k mp3=64,128")
    da, db = a.draw(np.random.default_rng(5)), b.draw(np.random.default_rng(5))
    assert set(da) == {"lowpass_type", "lowpass_order", "lowpass_cutoff_hz", "mp3_kbps"}
    assert set(db) == set(da)


# --------------------------------------------------------------------- property tests

kinds_st = st.lists(st.sampled_from(LOWPASS_KINDS), min_size=1, max_size=4, unique=True)
order_st = st.tuples(st.integers(1, 16), st.integers(1, 16)).map(sorted)
cut_st = st.tuples(st.integers(100, 20000), st.integers(100, 20000)).map(sorted)
kbps_st = st.lists(st.sampled_from(MP3_KBPS), min_size=1, max_size=6, unique=True)


@settings(max_examples=40, deadline=None)
@given(kinds=kinds_st, order=order_st, cut=cut_st, kbps=kbps_st, seed=st.integers(0, 2**32))
def test_draws_cover_the_spec_and_are_reproducible(kinds, order, cut, kbps, seed):
    text = (f"lowpass={','.join(kinds)}:{order[0]}-{order[1]}:{cut[0]}-{cut[1]} "
            f"mp3={','.join(map(str, kbps))}")
    spec = parse_spec(text)
    assert parse_spec(str(spec)) == spec  # canonical string round-trips
    draws = [spec.draw(np.random.default_rng([seed, i])) for i in range(300)]
    again = [spec.draw(np.random.default_rng([seed, i])) for i in range(300)]
    assert draws == again
    types = {d["lowpass_type"] for d in draws}
    orders = [d["lowpass_order"] for d in draws if d["lowpass_type"] != "boxcar"]
    assert all(d["lowpass_order"] is None for d in draws if d["lowpass_type"] == "boxcar")
    cuts = [d["lowpass_cutoff_hz"] for d in draws]
    rates = {d["mp3_kbps"] for d in draws}
    # every set member appears (miss probability < 6 * (5/6)**300, negligible)
    assert types == set(kinds)
    assert rates == set(kbps)
    # integer ranges are inclusive at both ends and draw only whole numbers in range
    assert all(isinstance(o, int) and order[0] <= o <= order[1] for o in orders)
    if order[1] - order[0] <= 8 and len(orders) >= 100:
        assert set(orders) == set(range(order[0], order[1] + 1))
    assert all(isinstance(c, int) and cut[0] <= c <= cut[1] for c in cuts)
    # uniform draws spread over the range: both tenths at the ends are reached
    span = cut[1] - cut[0]
    if span >= 10:
        assert min(cuts) <= cut[0] + span / 10 and max(cuts) >= cut[1] - span / 10


def test_uniform_cutoff_draw_statistics():
    """Cut-offs are uniform in Hz (not log-uniform): mean and quartiles match U[2k, 16k]."""
    spec = parse_spec("lowpass=cheby1:8:2k-16k")
    rng = np.random.default_rng(0)
    cuts = np.array([spec.draw(rng)["lowpass_cutoff_hz"] for _ in range(20000)], dtype=float)
    assert abs(cuts.mean() - 9000) < 100  # std of the mean ≈ 4041/sqrt(20000) ≈ 29 Hz
    assert abs(np.percentile(cuts, 25) - 5500) < 150


def test_order_of_application_is_the_order_given():
    import json

    rl = parse_spec("resample=16000 lowpass=butter:4:6k")
    lr = parse_spec("lowpass=butter:4:6k resample=16000")
    assert rl.order == ("resample", "lowpass") and lr.order == ("lowpass", "resample")
    assert rl != lr
    assert parse_spec(str(rl)) == rl  # the string form keeps the order
    # a JSON dump with sorted keys (degrade.json) keeps it through "steps"
    assert parse_spec(json.loads(json.dumps(rl.to_dict(), sort_keys=True))) == rl
    assert "steps" not in lr.to_dict()  # the default order writes what it always wrote
    assert DegradeSpec(mp3=parse_mp3("64"), lowpass=parse_lowpass("butter:4:6k"),
                       steps=("mp3",)).order == ("mp3", "lowpass")  # the rest follow
    # the draws do not depend on the order; only "steps" records it
    a, b = rl.draw(np.random.default_rng(5)), lr.draw(np.random.default_rng(5))
    assert a.pop("steps") == ["resample", "lowpass"] and a == b
    with pytest.raises(UsageError, match="unknown step"):
        parse_spec({"lowpass": "butter:4:6k", "steps": "lowpass,reverb"})
    with pytest.raises(UsageError, match="Nyquist frequency of the resampled audio"):
        parse_spec("resample=8000 lowpass=butter:4:6k")


def test_recipe_degrade_steps():
    from pathlib import Path

    from upsr.train import recipe as R

    tiny = Path(__file__).resolve().parents[2] / "recipes" / "tiny" / "aeromamba.toml"
    r = R.load(tiny, ['degrade.lowpass="butter:4:4k"', 'degrade.steps="resample,lowpass"'])
    assert r.degrade_spec().order == ("resample", "lowpass")
    assert R.load(tiny, ['degrade.lowpass="butter:4:4k"']).degrade_spec().order == (
        "lowpass", "resample")
