"""The Prometheus text format of /ctfs/metrics (pure)."""

from __future__ import annotations

from ctfs.policy.metrics import COUNTER, GAUGE, Family, label, labels, labels_of, render


def test_a_family_is_help_type_and_samples() -> None:
    family = Family("ctfs_x", GAUGE, "an x")
    family.add(3, ctid="101", state="running")
    assert render([family]) == (
        '# HELP ctfs_x an x\n# TYPE ctfs_x gauge\nctfs_x{ctid="101",state="running"} 3\n'
    )


def test_a_family_without_samples_is_left_out() -> None:
    assert render([Family("ctfs_empty", COUNTER, "nothing")]) == ""


def test_label_values_are_escaped() -> None:
    family = Family("ctfs_x", GAUGE, "x")
    family.add(1, name='a"b\\c\nd')
    assert 'name="a\\"b\\\\c\\nd"' in render([family])


def test_fractions_keep_their_digits_and_integers_have_none() -> None:
    family = Family("ctfs_x", COUNTER, "x")
    family.add(0.011675814)
    family.add(9223372036854775807)
    lines = render([family]).splitlines()
    assert lines[2] == "ctfs_x 0.011675814"
    assert lines[3] == "ctfs_x 9223372036854775807"


def test_labels_formatted_once_serve_many_samples() -> None:
    tags = labels_of(label("ctid", "7"), label("resource", 'a"b'))
    assert tags == labels(ctid="7", resource='a"b') == '{ctid="7",resource="a\\"b"}'
    held, limit = Family("ctfs_held", GAUGE, "h"), Family("ctfs_limit", GAUGE, "l")
    held.labels, held.values = [tags], [3]
    limit.labels, limit.values = [tags], [40]
    text = render([held, limit])
    assert f"ctfs_held{tags} 3\n" in text
    assert f"ctfs_limit{tags} 40\n" in text
    assert labels() == labels_of() == ""
