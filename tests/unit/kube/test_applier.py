"""The applier's decisions that need no API server: when a write is needed, and what drift to undo."""

from __future__ import annotations

from aliasroll.kube.applier import is_subset, up_to_date

SERVICE = {"kind": "Service", "spec": {"selector": {"app": "x"}, "ports": [{"port": 80, "name": "http"}]}}


def test_defaults_added_by_the_server_need_no_write() -> None:
    live = {
        "kind": "Service",
        "spec": {
            "selector": {"app": "x"},
            "clusterIP": "10.0.0.1",
            "ports": [{"port": 80, "name": "http", "protocol": "TCP"}],
        },
    }
    assert up_to_date(SERVICE, live)


def test_changed_or_missing_fields_need_a_write() -> None:
    assert not is_subset(
        SERVICE, {"kind": "Service", "spec": {"selector": {"app": "y"}, "ports": [{"port": 80}]}}
    )
    assert not is_subset(
        {"spec": {"ports": [{"port": 80}, {"port": 81}]}}, {"spec": {"ports": [{"port": 80}]}}
    )
    assert not is_subset({"spec": {"replicas": 2}}, {"spec": {}})


def test_a_selector_key_added_by_hand_needs_a_write() -> None:
    """A Service selector is an atomic map: applying ours replaces it whole, so the pass must apply."""
    live = {"kind": "Service", "spec": {"selector": {"app": "x", "other": "y"}, "ports": [{"port": 80}]}}
    assert not up_to_date(SERVICE, live)


def test_extra_keys_elsewhere_are_left_to_their_owners() -> None:
    wanted = {"kind": "Deployment", "metadata": {"labels": {"a": "1"}}}
    assert up_to_date(wanted, {"kind": "Deployment", "metadata": {"labels": {"a": "1", "team": "ml"}}})
