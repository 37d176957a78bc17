"""The report's typed manifest: defaults, and errors that name the key."""

import pytest

from subliminal_pl.report.manifest import Manifest, ManifestError

BASE = {
    "traits": ["Owl", "cat"],
    "neutral": "neutral",
    "bases": {"same": "base-s0", "cross": ["base-s1"]},
    "students": [
        {"name": "student-owl-s0", "teacher": "owl", "base": "base-s0", "kind": "same", "seed": 0},
        {"name": "cross-owl-b1-s0", "teacher": "owl", "base": "base-s1", "kind": "cross", "seed": 0},
    ],
    "probes": "probes.json",
}


def test_round_trip_and_defaults():
    manifest = Manifest.from_dict(BASE)
    assert manifest.traits == ["owl", "cat"]
    assert manifest.trait_teachers == ["owl", "cat", "neutral"]
    assert manifest.teachers == {"cat": "teacher-cat", "neutral": "teacher-neutral", "owl": "teacher-owl"}
    assert Manifest.from_dict(manifest.to_dict()) == manifest


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"students": [{**BASE["students"][0], "teacher": "dog"}]}, r"students\[0\].teacher 'dog'"),
        ({"students": [{**BASE["students"][0], "base": "base-s9"}]}, r"students\[0\].base 'base-s9'"),
        ({"students": [{**BASE["students"][0], "kind": "other"}]}, r"students\[0\].kind 'other'"),
        ({"traits": []}, "traits is empty"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_manifests_name_the_key(change, message):
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict({**BASE, **change})
    bad = dict(BASE)
    del bad["probes"]
    with pytest.raises(ManifestError, match="probes"):
        Manifest.from_dict(bad)
